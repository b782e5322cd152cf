"""What a model's config.pbtxt in the model repository says, read without Triton: for checks made
before a model is loaded (is it an image model? its default steps?). The adapter has the repository's
configs in embedded mode and in its image (docker/adapter.Dockerfile copies them)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

_PARAMETER = re.compile(r'key:\s*"([^"]+)"\s*value:\s*\{\s*string_value:\s*"([^"]*)"')
_NAME = re.compile(r'name:\s*"([^"]+)"')
_OUTPUT_BLOCK = re.compile(r"(?m)^\s*output\s*\[")


@dataclass(frozen=True)
class ModelFile:
    outputs: frozenset[str] = frozenset()
    parameters: dict[str, str] = field(default_factory=dict)


def _bracketed(text: str, start: int) -> str:
    """The text from `start` (just after a "[") to its matching "]"."""
    depth = 1
    for i in range(start, len(text)):
        if text[i] == "[":
            depth += 1
        elif text[i] == "]":
            depth -= 1
            if depth == 0:
                return text[start:i]
    return text[start:]


def read_model_file(repository: Path, model: str) -> ModelFile | None:
    """The model's outputs and string parameters from `repository/model/config.pbtxt`; None when
    there is no such file (an external repository the adapter cannot see)."""
    if not model or "/" in model or model.startswith("."):
        return None
    try:
        text = (repository / model / "config.pbtxt").read_text()
    except (OSError, UnicodeDecodeError):
        return None
    text = re.sub(r"(?m)#.*$", "", text)  # comments may quote names
    outputs: set[str] = set()
    for block in _OUTPUT_BLOCK.finditer(text):
        outputs.update(_NAME.findall(_bracketed(text, block.end())))
    return ModelFile(frozenset(outputs), dict(_PARAMETER.findall(text)))
