"""What every check shares: the files they read (`Paths`), the problems they find (`Report`), the
missing-tool error, and YAML loading."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]


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
    vllm: Path  # the vLLM variant: its model repository and Kubernetes overlay

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
            vllm=root / "docker" / "vllm",
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


def normalise(name: str) -> str:
    """A distribution name as pip compares them (PEP 503), extras dropped."""
    return re.sub(r"[-_.]+", "-", name.split("[", 1)[0]).lower()


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def load_yaml_documents(path: Path) -> list[Any]:
    return [document for document in yaml.safe_load_all(path.read_text()) if document is not None]
