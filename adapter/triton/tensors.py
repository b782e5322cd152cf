"""Every tensor name the adapter sends or reads, what each kind of call needs a model to declare,
and Triton's raw tensor layout (the codec the hot paths use instead of tritonclient's wrappers)."""

from __future__ import annotations

import struct

# Makes Triton end a failed stream with a real gRPC status instead of an error string in a message.
STREAM_HEADERS = {"triton_grpc_error": "true"}


# The LLM models (Triton's LLM-backend names, plus our `messages` extension).
TEXT_INPUT = "text_input"
MESSAGES = "messages"
SAMPLING_PARAMETERS = "sampling_parameters"
TEXT_OUTPUT = "text_output"
FINISH_REASON = "finish_reason"
PROMPT_TOKENS = "prompt_tokens"
COMPLETION_TOKENS = "completion_tokens"
# Tool calling (with messages): OpenAI's tools and tool_choice as JSON in; tool-call deltas out.
TOOLS = "tools"
TOOL_CHOICE = "tool_choice"
TOOL_CALLS = "tool_calls"
# The embedding model.
NORMALIZE = "normalize"
EMBEDDING = "embedding"
TOKEN_COUNT = "token_count"
TRUNCATED = "truncated"
# The image model.
PROMPT = "prompt"
NEGATIVE_PROMPT = "negative_prompt"
PARAMETERS = "parameters"
IMAGE = "image"
MASK = "mask"
IMAGES = "images"
STEP = "step"
TOTAL_STEPS = "total_steps"

# What each kind of call needs a model to declare (inputs, outputs): checked against the loaded
# model's config before anything is sent, so a model of the wrong kind (an embedding model asked to
# chat) is refused by what it declares, not by how Triton words its refusal.
INTERFACES: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "chat": (frozenset({MESSAGES}), frozenset({TEXT_OUTPUT})),
    # Tool calling: the model renders the tools and parses its own calls (our llm model does).
    "chat with tools": (frozenset({MESSAGES, TOOLS, TOOL_CHOICE}), frozenset({TEXT_OUTPUT, TOOL_CALLS})),
    "generate": (frozenset({TEXT_INPUT}), frozenset({TEXT_OUTPUT})),
    "embedding": (frozenset({TEXT_INPUT}), frozenset({EMBEDDING})),
}


def raw_bytes_element(raw: bytes) -> bytes:
    """The first element of a raw BYTES tensor: a little-endian uint32 length, then the bytes."""
    return raw[4 : 4 + int.from_bytes(raw[:4], "little")]


def raw_bytes(values: list[bytes]) -> bytes:
    """A raw BYTES tensor: each element a little-endian uint32 length, then its bytes."""
    return b"".join(struct.pack("<I", len(v)) + v for v in values)


def raw_int32(raw: bytes) -> int:
    """The first element of a raw INT32 tensor."""
    return int.from_bytes(raw[:4], "little", signed=True)
