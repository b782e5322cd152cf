"""What the Triton layer takes and returns: plain values, no tensors."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class TextGenerationRequest:
    model: str
    sampling: dict[str, Any]
    prompt: str | None = None
    messages: list[dict[str, Any]] | None = None
    tools: list[dict[str, Any]] | None = None  # OpenAI function tools (with messages)
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool = True  # False: sent as the model's parallel_tool_calls input
    # Constrained decoding (vLLM's sampling parameter name), added to `sampling` when sent.
    guided_decoding: dict[str, Any] | None = None


@dataclass(frozen=True)
class TextInterface:
    """How a text model is driven, read from its loaded config: the vLLM-backend dialect's switches
    it declares (each sent true), and whether it takes a chat itself (our `messages` extension)."""

    switches: tuple[str, ...] = ()
    messages: bool = False


@dataclass(frozen=True)
class TextChunk:
    """One or more responses of the LLM model, merged; the last one has finish_reason set (the
    model's, in our words: stop, length, cancelled, tool_calls; "unknown" when it gives none) and
    the request's token counts."""

    text: str
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # Tool-call deltas in OpenAI's shape ({"index", "id", "function": {"name", "arguments"}}).
    tool_calls: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class ImageProgress:
    """One response of the image model: progress, and on the last one the PNGs."""

    step: int
    total_steps: int
    images: list[bytes] | None = None  # set only on the final response


@dataclass(frozen=True)
class EmbeddingRows:
    """The embedding model's answer for a list of texts, row i for text i."""

    vectors: npt.NDArray[np.float32]  # [n, dimension]
    token_counts: npt.NDArray[np.int32]  # [n]
    truncated: npt.NDArray[np.bool_]  # [n]

    def slice(self, start: int, end: int) -> EmbeddingRows:
        return EmbeddingRows(self.vectors[start:end], self.token_counts[start:end], self.truncated[start:end])


@dataclass
class ModelInfo:
    parameters: dict[str, str] = field(default_factory=dict)
    max_batch_size: int = 0
    outputs: frozenset[str] = frozenset()  # the names of the model's output tensors
    inputs: frozenset[str] = frozenset()  # the names of the model's input tensors
