"""gpu: the Triton image builds and its torch sees the GPU: no pip install into the base's
Debian-owned python needs a package Debian installed in another version (torch 2.13 needs
setuptools>=77.0.3; Debian's is 68.1.2, and pip cannot uninstall it); torch's wheel index,
TORCH_CUDA and the base image's CUDA agree (PyPI's torch is CUDA 13); the documented driver is that
CUDA's; INFERENCE_REQUIRE_CUDA is set."""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from .common import Paths, Report, normalise
from .sources import dockerfile_instructions, requirements_of

# nvcr.io/nvidia/tritonserver:<tag>-py3 -> the CUDA it is built on (NVIDIA's release notes), and
# the driver branch each CUDA needs (CUDA's release notes; data-center GPUs may run older long-term
# branches through forward compatibility). torch's wheels bring their own CUDA runtime, but it has
# the same driver floor: a torch built for a newer CUDA than the base simply sees no GPU on a host
# whose driver suits the base.
BASE_IMAGE_CUDA = {
    "24.10": "12.6",
    "24.11": "12.6",
    "24.12": "12.6",
    "25.01": "12.8",
    "25.02": "12.8",
    "25.03": "12.8",
    "25.04": "12.9",
    "25.05": "12.9",
    "25.06": "12.9",
    "25.08": "13.0",
}


CUDA_MIN_DRIVER = {"12.6": 560, "12.8": 570, "12.9": 575, "13.0": 580}


# The CUDA that PyPI's own torch wheels (no --index-url) are built for.
PYPI_TORCH_CUDA = {"2.13.0": "13.0"}


# Python packages of the Triton images that Debian's apt installed (Triton's build.py installs
# python3-pip, python3-setuptools and python3-wheel; Ubuntu 24.04's versions). pip cannot uninstall
# them (no RECORD file), so no pip install into the image's system python may need another version.
DEBIAN_PYTHON_PACKAGES = {"pip": "24.0", "setuptools": "68.1.2", "wheel": "0.42.0"}


# Environment markers of the Triton image's python, to evaluate requirements' markers.
IMAGE_MARKERS = {
    "python_version": "3.12",
    "python_full_version": "3.12.3",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "extra": "",
}


def _env_pairs(arguments: str) -> dict[str, str]:
    try:
        words = shlex.split(arguments)
    except ValueError:
        words = arguments.split()
    if len(words) == 2 and "=" not in words[0]:
        return {words[0]: words[1]}  # legacy "ENV NAME value"
    return dict(word.partition("=")[::2] for word in words if "=" in word)


def _expand(text: str, values: Mapping[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: values.get(m.group(1) or m.group(2), m.group(0)), text)


@dataclass(frozen=True)
class PipStep:
    line: int
    packages: dict[str, str | None]  # normalised name -> == pin
    options: list[str]
    in_venv: bool  # runs with a virtualenv's python (first on PATH), not the image's system python


def pip_steps(dockerfile: Path) -> tuple[list[PipStep], dict[str, str]]:
    """Every pip install of a RUN, in order, and whether a virtualenv created earlier in the
    Dockerfile comes first on PATH then (ENV PATH=<venv>/bin:...); plus the final ENV values."""
    values: dict[str, str] = {}
    venvs: set[str] = set()
    steps = []
    for line, keyword, arguments in dockerfile_instructions(dockerfile.read_text()):
        if keyword in ("ARG", "ENV"):
            pairs = _env_pairs(arguments) if keyword == "ENV" else dict([arguments.partition("=")[::2]])
            for name, value in pairs.items():
                values[name.strip()] = _expand(value.strip().strip('"'), values)
            continue
        if keyword != "RUN":
            continue
        text = _expand(arguments, values)
        for match in re.finditer(
            r"(?:-m\s+(?:virtualenv|venv)|(?:^|\s)virtualenv)((?:\s+-\S+)*)\s+\"?([^\s\"]+)", text
        ):
            venvs.add(match.group(2).rstrip("/"))
        path = values.get("PATH", "")
        in_venv = any(path.startswith(f"{venv}/bin") for venv in venvs)
        for command in re.split(r"&&|\|\||;|\|", text):
            try:
                words = shlex.split(command)
            except ValueError:
                words = command.split()
            for index, word in enumerate(words[1:], 1):
                program = words[index - 1].rsplit("/", 1)[-1]
                if word == "install" and program in ("pip", "pip3"):
                    system = any(w.startswith("/usr/bin/python") for w in words[:index])
                    packages = {r.name: r.version for r in requirements_of(line, words[index + 1 :])}
                    options = [w for w in words[index + 1 :] if w.startswith("-")]
                    steps.append(PipStep(line, packages, options, in_venv and not system))
                    break
    return steps, values


def requirement_specifiers(roots: Iterable[str]) -> dict[str, list[tuple[str, str]]]:
    """name -> [(who requires it, the specifier)] over the dependency tree of `roots`, from the
    installed distributions' metadata (this virtualenv holds the same pins as the image) with the
    image python's markers."""
    from importlib.metadata import PackageNotFoundError, distribution

    from packaging.requirements import Requirement

    found: dict[str, list[tuple[str, str]]] = {}
    queue, seen = list(roots), set()
    while queue:
        name = queue.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            continue
        for text in dist.requires or []:
            requirement = Requirement(text)
            if requirement.marker is not None and not requirement.marker.evaluate(IMAGE_MARKERS):
                continue
            required = normalise(requirement.name)
            found.setdefault(required, []).append((f"{name}=={dist.version}", str(requirement.specifier)))
            queue.append(required)
    return found


def check_gpu_image(paths: Paths, report: Report) -> None:
    dockerfile = paths.triton_dockerfile
    steps, values = pip_steps(dockerfile)
    _check_debian_packages(dockerfile, steps, report)
    _check_torch_cuda(dockerfile, steps, values, report)


def _check_debian_packages(dockerfile: Path, steps: list[PipStep], report: Report) -> None:
    """The image's pip installs must never need pip to replace a package Debian installed: they run
    in a virtualenv, or an earlier `pip install --ignore-installed` put a suitable version first."""
    from packaging.specifiers import SpecifierSet

    shadowed: dict[str, str] = {}  # name -> version installed with --ignore-installed into the system
    for step in steps:
        if step.in_venv:
            continue
        if "--ignore-installed" in step.options or "-I" in step.options:
            shadowed.update({name: version or "" for name, version in step.packages.items()})
            continue
        needs = requirement_specifiers(step.packages)
        for name, debian_version in DEBIAN_PYTHON_PACKAGES.items():
            wanted = [(who, spec) for who, spec in needs.get(name, []) + _direct(step, name) if spec]
            refused = [(who, spec) for who, spec in wanted if debian_version not in SpecifierSet(spec)]
            if not refused:
                continue
            have = shadowed.get(name)
            if have and all(have in SpecifierSet(spec) for _, spec in refused):
                continue
            who, spec = refused[0]
            report.add(
                "gpu",
                f"{dockerfile}:{step.line}",
                f"{who} requires {name}{spec}, but the base image's {name} {debian_version} was installed by Debian "
                f"and pip cannot uninstall it: install into a virtualenv first on PATH, or pip install "
                f"--ignore-installed {name}==<a version {spec}> before this step",
            )


def _direct(step: PipStep, name: str) -> list[tuple[str, str]]:
    version = step.packages.get(name)
    return [("the Dockerfile", f"=={version}")] if version else []


def _check_torch_cuda(dockerfile: Path, steps: list[PipStep], values: Mapping[str, str], report: Report) -> None:
    """torch's CUDA is the base image's: the index it comes from, TORCH_CUDA (which the build
    asserts against torch.version.cuda) and the FROM tag agree; the documented driver is that
    CUDA's; and the image sets INFERENCE_REQUIRE_CUDA so that a torch that sees no GPU fails the
    models' load instead of serving from the CPU."""
    text = dockerfile.read_text()
    base = re.search(r"^FROM\s+nvcr\.io/nvidia/tritonserver:(\d+\.\d+)-py3", text, re.MULTILINE)
    if not base:
        report.add("gpu", dockerfile, "the base image is not nvcr.io/nvidia/tritonserver:<YY.MM>-py3")
        return
    tag = base.group(1)
    base_cuda = BASE_IMAGE_CUDA.get(tag)
    if base_cuda is None:
        report.add("gpu", dockerfile, f"tritonserver:{tag}-py3 is not in BASE_IMAGE_CUDA: add its CUDA version")
        return
    torch_steps = [step for step in steps if "torch" in step.packages]
    if not torch_steps:
        report.add("gpu", dockerfile, "no pip install of torch")
        return
    step = torch_steps[0]
    where = f"{dockerfile}:{step.line}"
    index = _torch_index(dockerfile, step, values)
    if index is None:
        version = step.packages.get("torch") or "?"
        pypi = PYPI_TORCH_CUDA.get(version, "13.0")
        if pypi != base_cuda:
            report.add(
                "gpu",
                where,
                f"torch=={version} from PyPI is built for CUDA {pypi}, but tritonserver:{tag}-py3 is CUDA {base_cuda}: "
                f"a host driver that suits the base (R{CUDA_MIN_DRIVER.get(base_cuda, '?')}+) leaves torch without a "
                f"GPU; install it with --index-url https://download.pytorch.org/whl/cu{base_cuda.replace('.', '')}",
            )
        torch_cuda = pypi
    else:
        tag_match = re.search(r"/cu(\d{2})(\d)/?$", index)
        if not tag_match:
            report.add("gpu", where, f"torch's index {index!r} names no CUDA (…/whl/cuXYZ)")
            return
        torch_cuda = f"{tag_match.group(1)}.{tag_match.group(2)}"
        if torch_cuda != base_cuda:
            report.add(
                "gpu",
                where,
                f"torch comes from {index} (CUDA {torch_cuda}) but tritonserver:{tag}-py3 is CUDA {base_cuda}: "
                "change them together",
            )
    declared = values.get("TORCH_CUDA")
    if declared is None:
        report.add("gpu", dockerfile, "no ARG TORCH_CUDA: the build cannot assert torch.version.cuda")
    elif declared != torch_cuda:
        report.add("gpu", dockerfile, f"ARG TORCH_CUDA={declared} but torch is installed for CUDA {torch_cuda}")
    elif "torch.version.cuda" not in text:
        report.add("gpu", dockerfile, "the build does not check torch.version.cuda against TORCH_CUDA")
    driver = re.search(r"Minimum host driver:\s*R(\d+)", text)
    wanted_driver = CUDA_MIN_DRIVER.get(base_cuda)
    if not driver:
        report.add("gpu", dockerfile, f"no 'Minimum host driver: R{wanted_driver}' comment for users")
    elif int(driver.group(1)) != wanted_driver:
        report.add(
            "gpu",
            dockerfile,
            f"the documented minimum driver is R{driver.group(1)}, but CUDA {base_cuda} needs R{wanted_driver}",
        )
    if values.get("INFERENCE_REQUIRE_CUDA", "").lower() not in ("1", "true", "yes", "on"):
        report.add(
            "gpu",
            dockerfile,
            "the image does not set ENV INFERENCE_REQUIRE_CUDA=1: a torch that sees no GPU would serve from the "
            "CPU in fp32, silently",
        )


def _torch_index(dockerfile: Path, step: PipStep, values: Mapping[str, str]) -> str | None:
    """The --index-url of torch's pip install, with ARG/ENV defaults expanded (None: PyPI's)."""
    for line, keyword, arguments in dockerfile_instructions(dockerfile.read_text()):
        if line != step.line or keyword != "RUN":
            continue
        words = shlex.split(_expand(arguments, values))
        for option in ("--index-url", "-i"):
            if option in words and words.index(option) + 1 < len(words):
                return words[words.index(option) + 1]
            for word in words:
                if word.startswith(option + "="):
                    return word.split("=", 1)[1]
    return None
