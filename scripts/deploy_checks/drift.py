"""drift: the Dockerfiles pin exactly the versions in pyproject.toml; the adapter image holds every
package the adapter imports (and the model_runtime modules it imports) and no model stack. (The
compose and k8s checks report the variables that drifted from what adapter/config.py and the
models read, and the default model ids.)"""

from __future__ import annotations

import ast
import functools
import sys
from collections.abc import Mapping
from pathlib import Path

from .common import Paths, Report, normalise
from .sources import pip_requirements, pyproject_pins

# What each image must install (pip distribution names, normalised), and what the adapter image
# must not: it holds no weights and runs against an external Triton.
TRITON_IMAGE_PACKAGES = {"torch", "transformers", "tokenizers", "diffusers", "numpy", "pillow", "xgrammar"}


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


ADAPTER_IMAGE_FORBIDDEN = {"torch", "transformers", "tokenizers", "diffusers", "nvidia-pytriton", "xgrammar"}


def check_image_pins(paths: Paths, report: Report) -> None:
    pins = pyproject_pins(paths.pyproject)
    images: tuple[tuple[Path, set[str], set[str]], ...] = (
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


def _local_modules(path: Path, package: str) -> set[str]:
    """`package.X` modules a file imports at module level (`from package import X` included)."""
    found: set[str] = set()
    for node in ast.parse(path.read_text(), filename=str(path)).body:
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith(f"{package}."))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == package:
                found.update(f"{package}.{a.name}" for a in node.names)
            elif node.module.startswith(f"{package}."):
                found.add(node.module)
    return found


def _copied_sources(dockerfile: Path) -> list[str]:
    """The build-context paths a Dockerfile's COPY instructions take (not those --from a stage)."""
    sources: list[str] = []
    for line in dockerfile.read_text().splitlines():
        words = line.split()
        if not words or words[0].upper() != "COPY" or any(w.startswith("--from") for w in words):
            continue
        sources += [w for w in words[1:-1] if not w.startswith("--")]
    return sources


def check_adapter_local_modules(paths: Paths, report: Report) -> None:
    """The adapter imports a few torch-free `model_runtime` modules (limits it shares with the
    models): the adapter image must copy each of them (and what they import in turn), and the
    build context must let them through; a missing one only shows when the image starts."""
    package = paths.model_runtime.name
    needed: set[str] = set()
    todo = sorted(
        p for p in paths.adapter_package.rglob("*.py") if "gen" not in p.relative_to(paths.adapter_package).parts[:1]
    )
    todo_modules: list[str] = []
    for path in todo:
        todo_modules += sorted(_local_modules(path, package))
    while todo_modules:
        module = todo_modules.pop()
        if module in needed:
            continue
        needed.add(module)
        source = paths.root / (module.replace(".", "/") + ".py")
        if source.is_file():
            todo_modules += sorted(_local_modules(source, package))
    if not needed:
        return
    needed.add(f"{package}.__init__")
    copied = _copied_sources(paths.adapter_dockerfile)
    ignore = Path(f"{paths.adapter_dockerfile}.dockerignore")
    allowed = ignore.read_text().splitlines() if ignore.is_file() else []
    for module in sorted(needed):
        file = module.replace(".", "/") + ".py"
        folder = f"{package}/"
        if not any(c in (file, folder, package) for c in copied):
            report.add(
                "drift", paths.adapter_dockerfile, f"the adapter imports {module} but the image does not copy {file}"
            )
        if ignore.is_file() and not any(a in (f"!{file}", f"!{folder}", f"!{package}") for a in allowed):
            report.add("drift", ignore, f"the build context leaves out {file}, which the adapter image needs")


def check_drift(paths: Paths, report: Report) -> None:
    check_image_pins(paths, report)
    check_adapter_imports(paths, report)
    check_adapter_local_modules(paths, report)
