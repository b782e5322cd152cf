"""Checks of public requests, before anything reaches Triton. Each failure names the field."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from google.protobuf.duration_pb2 import Duration

from adapter.core.errors import InvalidArgument
from adapter.gen.inference.v1 import inference_pb2 as pb
from model_runtime import sampling_limits

VALID_ROLES = ("system", "user", "assistant")
MAX_STOP_SEQUENCES = 16


def require_model(model: str) -> str:
    if not model.strip():
        raise InvalidArgument('model is required (for example "llm")')
    return model


def chat_messages(messages: Any) -> list[dict[str, str]]:
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


def sampling_parameters(options: pb.GenerationOptions, max_tokens_limit: int | None) -> dict[str, Any]:
    """The options as the LLM model's `sampling_parameters`; unset options are left to the model."""
    out: dict[str, Any] = {}
    if options.HasField("max_tokens"):
        if options.max_tokens <= 0:
            raise InvalidArgument(f"options.max_tokens must be > 0; got {options.max_tokens}")
        if max_tokens_limit is not None and options.max_tokens > max_tokens_limit:
            raise InvalidArgument(
                f"options.max_tokens must be at most {max_tokens_limit} for this model; got {options.max_tokens}"
            )
        out["max_tokens"] = options.max_tokens
    # Ranges shared with the model (model_runtime/sampling_limits.py): none of them can make the
    # sampler's probabilities non-finite.
    for name in ("temperature", "top_p", "top_k", "repetition_penalty", "frequency_penalty", "presence_penalty"):
        if options.HasField(name):
            value = getattr(options, name)
            if isinstance(value, float):
                # Proto floats are 32-bit: 0.01 arrives as 0.0099999998. Back to the decimal the
                # client wrote (7 significant digits), which is also what the model is sent.
                value = float(f"{value:.7g}")
            problem = sampling_limits.check(name, value)
            if problem is not None:
                raise InvalidArgument(f"options.{problem}")
            out[name] = value
    if options.HasField("seed"):
        out["seed"] = options.seed
    if options.stop:
        if len(options.stop) > MAX_STOP_SEQUENCES:
            raise InvalidArgument(
                f"options.stop allows at most {MAX_STOP_SEQUENCES} sequences; got {len(options.stop)}"
            )
        if any(not s for s in options.stop):
            raise InvalidArgument("options.stop must not contain empty strings")
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


# google.protobuf.Duration's documented range: about 10,000 years either way.
MAX_DURATION_SECONDS = 315_576_000_000


def duration_seconds(name: str, duration: Duration) -> float:
    """A Duration field in seconds; InvalidArgument naming the field when it is outside the range
    protobuf documents (any int64 can arrive on the wire, and Python's timedelta overflows)."""
    if not -MAX_DURATION_SECONDS <= duration.seconds <= MAX_DURATION_SECONDS:
        raise InvalidArgument(
            f"{name}.seconds must be within +-{MAX_DURATION_SECONDS} (google.protobuf.Duration's range); "
            f"got {duration.seconds}"
        )
    if not -999_999_999 <= duration.nanos <= 999_999_999:
        raise InvalidArgument(f"{name}.nanos must be within +-999999999; got {duration.nanos}")
    if duration.seconds * duration.nanos < 0:
        raise InvalidArgument(
            f"{name}: seconds and nanos must have the same sign (google.protobuf.Duration); "
            f"got seconds {duration.seconds}, nanos {duration.nanos}"
        )
    return duration.seconds + duration.nanos / 1e9


KeepAlive = float | None | str  # seconds; None: keep loaded; "default": leave the model's setting


def keep_alive(request: Any) -> KeepAlive:
    """A request's keep_alive: unset keeps the model's setting, negative keeps it loaded for good."""
    if not request.HasField("keep_alive"):
        return "default"
    seconds = duration_seconds("keep_alive", request.keep_alive)
    return None if seconds < 0 else seconds
