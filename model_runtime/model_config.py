"""Typed access to a model's config.pbtxt `parameters`, with environment overrides."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class ModelParameters:
    """The `parameters { key: ... value: { string_value: ... } }` block of a model config."""

    def __init__(self, model_config_json: str) -> None:
        config = json.loads(model_config_json)
        self.model_name: str = config.get("name", "")
        raw = config.get("parameters", {})
        self._values = {key: value.get("string_value", "") for key, value in raw.items()}

    def string(self, key: str, default: str, env: str | None = None) -> str:
        """The parameter's value; a set, non-empty environment variable `env` wins."""
        if env and os.environ.get(env):
            return os.environ[env]
        value = self._values.get(key, "")
        return value if value != "" else default

    def integer(self, key: str, default: int, minimum: int | None = None) -> int:
        text = self.string(key, str(default))
        try:
            value = int(text)
        except ValueError:
            raise ValueError(f"model parameter {key!r} must be an integer, got {text!r}") from None
        if minimum is not None and value < minimum:
            raise ValueError(f"model parameter {key!r} must be >= {minimum}, got {value}")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        # bool("false") is True: parse the words instead.
        text = self.string(key, "true" if default else "false").strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise ValueError(f"model parameter {key!r} must be true or false, got {text!r}")


def pick_device() -> Any:
    """CUDA when torch sees a GPU, else CPU."""
    import torch

    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def process_memory_bytes() -> int:
    """The memory this model holds: reserved CUDA memory on a GPU, else the process's resident set."""
    # A model that never imported torch holds no CUDA memory (and should not pay torch's import).
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        return int(torch.cuda.memory_reserved())
    with open("/proc/self/statm", encoding="ascii") as statm:
        resident_pages = int(statm.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE")
