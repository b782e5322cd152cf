"""Checks of public requests, before anything reaches Triton. Each failure names the field."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from adapter.core import types as t
from adapter.core.errors import InvalidArgument
from model_runtime import sampling_limits

VALID_ROLES = ("system", "user", "assistant")
MAX_STOP_SEQUENCES = 16


def require_model(model: str, example: str = "llm") -> str:
    """The one check that a request names a model (every call that takes one)."""
    if not model.strip():
        raise InvalidArgument(f'model is required (for example "{example}")')
    return model


def chat_messages(messages: Sequence[t.ChatMessage]) -> list[dict[str, str]]:
    if not messages:
        raise InvalidArgument("messages must not be empty")
    checked = []
    for i, message in enumerate(messages):
        if message.role not in VALID_ROLES:
            raise InvalidArgument(f"messages[{i}].role must be one of {', '.join(VALID_ROLES)}; got {message.role!r}")
        checked.append({"role": message.role, "content": message.content})
    if not any(m["content"].strip() for m in checked):
        raise InvalidArgument("messages must contain some text; every content is empty")
    return checked


def prompt_text(prompt: str) -> str:
    if not prompt.strip():
        raise InvalidArgument("prompt must not be empty or only whitespace")
    return prompt


def prompt_size(chars: int, limit: int) -> None:
    """Refuses a prompt longer than `limit` characters (0: no limit) before anything tokenizes it:
    tokenizing megabytes holds up every other request of the model."""
    if limit and chars > limit:
        raise InvalidArgument(
            f"the prompt holds {chars} characters; the limit is {limit} per request (LLM_MAX_PROMPT_CHARS), "
            "sized so that no longer prompt fits any model's context"
        )


def sampling_parameters(
    options: t.GenerationOptions, max_tokens_limit: int | None, prefix: str = "options."
) -> dict[str, Any]:
    """The options as the LLM model's `sampling_parameters`; unset options are left to the model.
    `prefix` is how the front names the options' fields in its messages."""
    out: dict[str, Any] = {}
    if options.max_tokens is not None:
        if options.max_tokens <= 0:
            raise InvalidArgument(f"{prefix}max_tokens must be > 0; got {options.max_tokens}")
        if max_tokens_limit is not None and options.max_tokens > max_tokens_limit:
            raise InvalidArgument(
                f"{prefix}max_tokens must be at most {max_tokens_limit} for this model; got {options.max_tokens}"
            )
        out["max_tokens"] = options.max_tokens
    # Ranges shared with the model (model_runtime/sampling_limits.py): none of them can make the
    # sampler's probabilities non-finite.
    for name in ("temperature", "top_p", "top_k", "repetition_penalty", "frequency_penalty", "presence_penalty"):
        value = getattr(options, name)
        if value is not None:
            problem = sampling_limits.check(name, value)
            if problem is not None:
                raise InvalidArgument(f"{prefix}{problem}")
            out[name] = value
    if options.seed is not None:
        out["seed"] = options.seed
    if options.stop:
        if len(options.stop) > MAX_STOP_SEQUENCES:
            raise InvalidArgument(
                f"{prefix}stop allows at most {MAX_STOP_SEQUENCES} sequences; got {len(options.stop)}"
            )
        if any(not s for s in options.stop):
            raise InvalidArgument(f"{prefix}stop must not contain empty strings")
        out["stop"] = list(options.stop)
    return out


def embedding_inputs(inputs: Sequence[str], max_inputs: int, max_total_chars: int) -> list[str]:
    if not inputs:
        raise InvalidArgument("inputs must contain at least one string")
    if len(inputs) > max_inputs:
        raise InvalidArgument(
            f"inputs has {len(inputs)} strings; the limit is {max_inputs} per request (EMBEDDING_MAX_INPUTS)"
        )
    total = 0
    for i, text in enumerate(inputs):
        if not text.strip():
            raise InvalidArgument(f"inputs[{i}] is empty")
        total += len(text)
    if total > max_total_chars:
        raise InvalidArgument(
            f"inputs hold {total} characters; the limit is {max_total_chars} per request (EMBEDDING_MAX_TOTAL_CHARS)"
        )
    return list(inputs)
