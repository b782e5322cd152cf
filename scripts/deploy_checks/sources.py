"""Facts the checks read out of the repository's own files: pyproject.toml's pins, Dockerfile
instructions and their pip requirements, the environment variables adapter/config.py declares (its
SETTINGS) and the models read, the models' default ids, command-line option values."""

from __future__ import annotations

import ast
import importlib.util
import re
import shlex
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .common import normalise

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


def dockerfile_args(dockerfile: Path) -> dict[str, str]:
    """ARG defaults (the first one of each name)."""
    found: dict[str, str] = {}
    for _, keyword, arguments in dockerfile_instructions(dockerfile.read_text()):
        if keyword == "ARG":
            name, _, default = arguments.partition("=")
            found.setdefault(name.strip(), default.strip().strip('"'))
    return found


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
    found: list[PipRequirement] = []
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
                    found.extend(requirements_of(line, words[index + 1 :]))
                    break
    return found


def requirements_of(line: int, words: list[str]) -> Iterator[PipRequirement]:
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


def option_values(words: list[str], option: str) -> list[str]:
    values = []
    for index, word in enumerate(words):
        if word == option and index + 1 < len(words):
            values.append(words[index + 1])
        elif word.startswith(option + "="):
            values.append(word.split("=", 1)[1])
    return values


def adapter_variables(config_py: Path) -> set[str]:
    """The environment variables adapter/config.py reads: the ones its SETTINGS declare (each
    setting is declared once there, and parsed from that declaration), and any it reads directly."""
    return declared_variables(config_py) | variables_read_directly(config_py)


def declared_variables(config_py: Path) -> set[str]:
    """The `env` of every declaration in the module's SETTINGS (none when it has no SETTINGS). The
    module is loaded from its path (a copy, in the tests): it needs nothing but the standard library."""
    name = "_deploy_checks_adapter_config"
    spec = importlib.util.spec_from_file_location(name, config_py)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {config_py}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolve annotations through sys.modules
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[name]
    return {str(declared.env) for declared in getattr(module, "SETTINGS", ())}


def variables_read_directly(config_py: Path) -> set[str]:
    """Names passed to env.get / env[...] / os.environ / os.getenv, and to any helper called as
    f(env, "NAME", ...): reads that bypass the declarations."""
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
