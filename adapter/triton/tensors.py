"""Every tensor name the adapter sends or reads, what each kind of call needs a model to declare,
and Triton's raw tensor layout (the codec the hot paths use instead of tritonclient's wrappers)."""

from __future__ import annotations

import struct

# Makes Triton end a failed stream with a real gRPC status instead of an error string in a message.
STREAM_HEADERS = {"triton_grpc_error": "true"}


# The LLM models: Triton's vLLM-backend dialect (triton-inference-server/vllm_backend), plus our
# `messages` extension (a model that renders chats itself).
TEXT_INPUT = "text_input"
MESSAGES = "messages"
SAMPLING_PARAMETERS = "sampling_parameters"
STREAM = "stream"
EXCLUDE_INPUT_IN_OUTPUT = "exclude_input_in_output"
RETURN_FINISH_REASON = "return_finish_reason"
RETURN_NUM_INPUT_TOKENS = "return_num_input_tokens"
RETURN_NUM_OUTPUT_TOKENS = "return_num_output_tokens"
TEXT_OUTPUT = "text_output"
FINISH_REASON = "finish_reason"
NUM_INPUT_TOKENS = "num_input_tokens"
NUM_OUTPUT_TOKENS = "num_output_tokens"  # per response: the tokens since the previous one
# The dialect's BOOL switches the adapter sets to true wherever a model declares them: stream the
# answer, without the prompt in front, with the finish reason and both token counts.
TEXT_SWITCHES = (
    STREAM,
    EXCLUDE_INPUT_IN_OUTPUT,
    RETURN_FINISH_REASON,
    RETURN_NUM_INPUT_TOKENS,
    RETURN_NUM_OUTPUT_TOKENS,
)
# Asks Triton to mark each response of a decoupled model final or not (triton_final_response): a
# vLLM model's finish_reason says "None" until the end, and a model may end with a flags-only response.
ENABLE_EMPTY_FINAL_RESPONSE = "triton_enable_empty_final_response"
FINAL_RESPONSE = "triton_final_response"
# A chat for a model without `messages` is rendered by the adapter with the chat template of the
# tokenizer this config.pbtxt parameter names (a hub id or a folder).
TOKENIZER_PARAMETER = "tokenizer"
# Tool calling (with messages): OpenAI's tools and tool_choice as JSON in; tool-call deltas out.
TOOLS = "tools"
TOOL_CHOICE = "tool_choice"
PARALLEL_TOOL_CALLS = "parallel_tool_calls"  # BOOL; false: at most one call
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
    "chat with one tool call": (
        frozenset({MESSAGES, TOOLS, TOOL_CHOICE, PARALLEL_TOOL_CALLS}),
        frozenset({TEXT_OUTPUT, TOOL_CALLS}),
    ),
    "generate": (frozenset({TEXT_INPUT}), frozenset({TEXT_OUTPUT})),
    "embedding": (frozenset({TEXT_INPUT}), frozenset({EMBEDDING})),
}


def raw_bytes_element(raw: bytes) -> bytes:
    """The first element of a raw BYTES tensor: a little-endian uint32 length, then the bytes."""
    return raw[4 : 4 + int.from_bytes(raw[:4], "little")]


def raw_bytes(values: list[bytes]) -> bytes:
    """A raw BYTES tensor: each element a little-endian uint32 length, then its bytes."""
    return b"".join(struct.pack("<I", len(v)) + v for v in values)


def raw_uint32(raw: bytes) -> int:
    """The first element of a raw UINT32 tensor (vLLM's token counts; a 0-d tensor has just one)."""
    return int.from_bytes(raw[:4], "little")
