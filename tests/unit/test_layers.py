"""The adapter's layers import only downwards: protobuf (ours or Google's) stays in the gRPC front,
nothing below the core knows a front exists, and the fronts know only the core (neither the other
front, nor the Triton layer or the scheduler beneath it)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ADAPTER = Path(__file__).resolve().parents[2] / "adapter"
# What each layer must not import (module prefixes).
FRONTS = ("adapter.grpc_front", "adapter.openai_front")
FORBIDDEN = {
    "core": ("adapter.gen", "google.protobuf", *FRONTS, "adapter.app", "grpc", "fastapi", "starlette", "uvicorn"),
    "scheduling": ("adapter.gen", "google.protobuf", *FRONTS, "adapter.core.services", "adapter.app"),
    # Triton's own client protobufs are the Triton layer's business; ours are not.
    "triton": ("adapter.gen", "google.protobuf", *FRONTS, "adapter.core.services", "adapter.app"),
    # The HTTP front: the core's dataclasses and services, nothing of gRPC's or below the core.
    "openai_front": (
        "adapter.gen",
        "google.protobuf",
        "grpc",
        "adapter.grpc_front",
        "adapter.triton",
        "adapter.scheduling",
        "adapter.app",
        "tritonclient",
    ),
    "grpc_front": ("adapter.openai_front", "fastapi", "starlette", "uvicorn", "adapter.app"),
    "openai_front/routes": ("adapter.gen", "grpc", "adapter.grpc_front", "adapter.triton", "adapter.scheduling"),
}


def imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_a_layer_imports_nothing_above_it(layer: str) -> None:
    modules = sorted((ADAPTER / layer).glob("*.py"))  # "openai_front/routes" is a layer of its own here
    assert modules, f"adapter/{layer}/ has no modules"
    bad = {
        f"{module.relative_to(ADAPTER.parent)}: {name}"
        for module in modules
        for name in imports(module)
        if any(name == prefix or name.startswith(prefix + ".") for prefix in FORBIDDEN[layer])
    }
    assert not bad, "imports against the layering:\n" + "\n".join(sorted(bad))


def test_only_the_grpc_front_imports_the_generated_code() -> None:
    users = {
        str(module.relative_to(ADAPTER.parent))
        for module in ADAPTER.rglob("*.py")
        if "gen" not in module.relative_to(ADAPTER).parts
        and any(name.startswith("adapter.gen") for name in imports(module))
    }
    assert users and all(user.startswith("adapter/grpc_front/") for user in users), users
