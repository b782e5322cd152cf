"""OpenAI's request and response bodies as pydantic models: requests are validated with them, and
/openapi.json is generated from them. Responses are built as plain dicts (convert.py) and only
documented here: validating every streamed chunk would cost more than sending it.

Requests forbid unknown fields (a typo or an option this server does not know is a 400 naming it).
OpenAI options we cannot honour are declared (so the schema shows them) and refused in convert.py
unless they hold their default. Beside OpenAI's fields, a few of our own options are accepted
(`top_k`, `repetition_penalty`; for images `negative_prompt`, `steps`, `guidance_scale`, `seed`,
`strength`), as vLLM and LocalAI accept theirs.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from model_runtime import sampling_limits

# Option -> (the values that ask for nothing, why other values are refused). Declared once, so a
# new option is one line here until the core honours it.
ONE_CHOICE = "this server returns one choice per request; send several requests"
NO_LOGPROBS = "this server does not return log probabilities"
OLD_FUNCTIONS = "the deprecated functions API; send tools (and tool_choice) instead"
REFUSED_UNLESS: dict[str, tuple[tuple[Any, ...], str]] = {
    "n": ((None, 1), ONE_CHOICE),
    "best_of": ((None, 1), ONE_CHOICE),
    "logprobs": ((None, False, 0), NO_LOGPROBS),
    "top_logprobs": ((None, 0), NO_LOGPROBS),
    "logit_bias": ((None, {}), "the sampler takes no per-token bias"),
    "echo": ((None, False), "the prompt is not returned with the completion"),
    "suffix": ((None, ""), "the model does not fill in between a prompt and a suffix"),
    "functions": ((None, []), OLD_FUNCTIONS),
    "function_call": ((None, "none"), OLD_FUNCTIONS),
    "audio": ((None,), "the models here read and write text only"),
    "modalities": ((None, ["text"]), "the models here read and write text only"),
    "prediction": ((None,), "predicted outputs are not supported"),
    "reasoning_effort": ((None,), "the models here do not reason in separate steps"),
    "verbosity": ((None,), "the models here take no verbosity setting"),
    "service_tier": ((None, "auto", "default"), "this server has one service tier"),
    "web_search_options": ((None,), "this server does not search the web"),
    "store": ((None, False), "this server keeps no completions"),
    "metadata": ((None, {}), "this server keeps no completions to tag"),
    "prompt_cache_key": ((None,), "this server has no prompt cache to route by"),
    "prompt_cache_retention": ((None,), "this server has no prompt cache to route by"),
    # Images.
    "quality": ((None, "auto", "standard"), "the image model has one quality; use steps"),
    "style": ((None,), "the image model takes no style; describe it in the prompt"),
    "background": ((None, "auto", "opaque"), "the image model paints opaque pictures"),
    "moderation": ((None, "auto"), "this server does not moderate images"),
    "output_compression": ((None, 100), "images are lossless PNG"),
    "partial_images": ((None, 0), "partial images are not streamed; progress is in CheckImageStatus over gRPC"),
    "input_fidelity": ((None,), "the image model takes no input fidelity; use strength"),
}


def refused(name: str, annotation_default: Any = None) -> Any:
    """A field this server refuses unless it holds one of its default values: the schema says which
    (an enum), and why, so that a valid request by the schema is one the server accepts."""
    allowed, why = REFUSED_UNLESS[name]
    return Field(
        default=annotation_default,
        description=f"only {list(allowed)}: {why}",
        json_schema_extra={"enum": list(allowed)},
    )


def ranged(name: str) -> Any:
    """A sampling option, documented with the range the core checks (model_runtime/sampling_limits.py)."""
    r = sampling_limits.RANGES[name]
    bounds: dict[str, Any] = {"exclusiveMinimum" if r.low_open else "minimum": r.low, "maximum": r.high}
    return Field(default=None, json_schema_extra=bounds)


_SOME_TEXT = r"\S"  # more than whitespace
_TEXT: Any = {"type": "string", "pattern": _SOME_TEXT}


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---- models --------------------------------------------------------------------------------


class Model(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(description="Unix seconds: when this server first saw the model")
    owned_by: str
    state: str = Field(description="unloaded, loading, loaded, unloading or failed (loaded on first use)")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Model]


# ---- chat and completions ------------------------------------------------------------------


def _text_part_only(schema: dict[str, Any]) -> None:
    schema["required"] = ["type", "text"]
    schema["additionalProperties"] = False
    schema["properties"]["text"] = {"type": "string"}


class TextPart(BaseModel):
    # Other kinds of parts (image_url, input_audio) get through to convert.py, which refuses them by
    # name; the schema shows the one kind taken.
    model_config = ConfigDict(extra="allow", json_schema_extra=_text_part_only)

    type: str = Field(description="other kinds of content are refused", json_schema_extra={"enum": ["text"]})
    text: str | None = None


class ToolCallFunction(_Request):
    name: str = Field(json_schema_extra={"pattern": r"^[A-Za-z0-9_-]{1,64}$"})
    arguments: str = Field(description="the arguments as the text of a JSON object")


class MessageToolCall(_Request):
    """A call an earlier assistant turn made (as this server returned it)."""

    id: str = Field(json_schema_extra={"minLength": 1})
    type: str = Field(default="function", json_schema_extra={"enum": ["function"]})
    function: ToolCallFunction


# The fields each role's message may carry (OpenAI's message types, one per role); convert.py
# refuses any other by name, and the schema documents one variant per role.
MESSAGE_FIELDS: dict[tuple[str, ...], tuple[str, ...]] = {
    ("system", "developer", "user"): ("role", "content", "name"),
    ("assistant",): ("role", "content", "name", "tool_calls", "refusal", "function_call"),
    ("tool",): ("role", "content", "tool_call_id"),
}


def _message_variants(schema: dict[str, Any]) -> None:
    """ChatMessage's schema as one object per role (what each may carry, what each requires)."""
    properties = schema.pop("properties")
    schema.pop("required", None)
    schema.pop("additionalProperties", None)
    schema.pop("type", None)
    variants = []
    for roles, fields in MESSAGE_FIELDS.items():
        shown = {name: properties[name] for name in fields}
        shown["role"] = {**properties["role"], "enum": list(roles)}
        required = ["role", "tool_call_id"] if "tool_call_id" in fields else ["role"]
        variants.append({"type": "object", "properties": shown, "required": required, "additionalProperties": False})
    schema["oneOf"] = variants


class ChatMessage(_Request):
    model_config = ConfigDict(extra="forbid", json_schema_extra=_message_variants)

    role: str = Field(description="developer is read as system; tool answers an assistant's tool call (tool_call_id)")
    content: str | list[TextPart] | None = None
    name: str | None = Field(
        default=None, description="refused: messages carry no names", json_schema_extra={"enum": [None]}
    )
    tool_calls: list[MessageToolCall] | None = Field(default=None, description="an assistant turn's calls")
    tool_call_id: str | None = Field(
        default=None,
        description="a tool message: the id of the call it answers",
        json_schema_extra={"type": "string", "minLength": 1},
    )
    # What OpenAI's SDKs send back when an earlier response's message is appended as it is.
    refusal: str | None = Field(default=None, description="accepted only as null", json_schema_extra={"enum": [None]})
    function_call: Any = Field(
        default=None, description=f"only null: {OLD_FUNCTIONS}", json_schema_extra={"enum": [None]}
    )


class FunctionDefinition(_Request):
    name: str = Field(json_schema_extra={"pattern": r"^[A-Za-z0-9_-]{1,64}$"})
    description: str | None = None
    parameters: dict[str, Any] | None = Field(
        default=None, description="a JSON schema of the arguments; omitted: a function that takes none"
    )
    strict: bool | None = Field(
        default=None,
        description="accepted: a call's arguments always follow `parameters` here (constrained decoding)",
    )


class ChatTool(_Request):
    type: str = Field(description="function tools only", json_schema_extra={"enum": ["function"]})
    function: FunctionDefinition


class NamedFunction(_Request):
    name: str


class NamedToolChoice(_Request):
    type: str = Field(json_schema_extra={"enum": ["function"]})
    function: NamedFunction


class JsonSchemaFormat(_Request):
    name: str = Field(default="", json_schema_extra={"pattern": r"^[A-Za-z0-9_-]{0,64}$"})
    description: str | None = None
    # `schema` is BaseModel's own attribute: the field is schema_ and takes its JSON name by alias.
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = Field(
        default=None, description="true also forbids properties the schema does not name (OpenAI's strict mode)"
    )
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ResponseFormat(_Request):
    type: str = Field(json_schema_extra={"enum": ["text", "json_object", "json_schema"]})
    json_schema: JsonSchemaFormat | None = Field(default=None, description="with type json_schema only")


class StreamOptions(_Request):
    include_usage: bool | None = None
    include_obfuscation: bool | None = None


class _Sampling(_Request):
    model: str
    max_tokens: int | None = Field(default=None, json_schema_extra={"minimum": 1})
    temperature: float | None = ranged("temperature")
    top_p: float | None = ranged("top_p")
    seed: int | None = Field(default=None, json_schema_extra={"minimum": 0, "maximum": sampling_limits.MAX_SEED - 1})
    stop: str | list[str] | None = Field(
        default=None, json_schema_extra={"minLength": 1, "maxItems": 16, "items": {"type": "string", "minLength": 1}}
    )
    frequency_penalty: float | None = ranged("frequency_penalty")
    presence_penalty: float | None = ranged("presence_penalty")
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(default=None, description="accepted; identifies the end user, changes nothing")
    # Ours (vLLM accepts the same names).
    top_k: int | None = ranged("top_k")
    repetition_penalty: float | None = ranged("repetition_penalty")
    # OpenAI's, refused unless they hold their default.
    n: int | None = refused("n")
    logprobs: Any = refused("logprobs")
    logit_bias: dict[str, Any] | None = refused("logit_bias")


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(json_schema_extra={"minItems": 1})  # the core says why
    max_completion_tokens: int | None = Field(default=None, json_schema_extra={"minimum": 1})
    safety_identifier: str | None = Field(default=None, description="accepted, as `user`")
    top_logprobs: int | None = refused("top_logprobs")
    # Tools and structured output: guaranteed by constrained decoding in the model.
    tools: list[ChatTool] | None = Field(default=None, json_schema_extra={"maxItems": 128})
    tool_choice: str | NamedToolChoice | None = Field(
        default=None,
        description='"none", "auto", "required" or {"type": "function", "function": {"name": ...}}',
        json_schema_extra={
            "anyOf": [
                {"enum": ["none", "auto", "required"]},
                {"$ref": "#/components/schemas/NamedToolChoice"},
                {"type": "null"},
            ]
        },
    )
    parallel_tool_calls: bool | None = Field(
        default=None, description="false: the reply makes at most one tool call (default true: one or more)"
    )
    response_format: ResponseFormat | None = None
    functions: list[Any] | None = refused("functions")
    function_call: Any = refused("function_call")
    audio: Any = refused("audio")
    modalities: list[str] | None = refused("modalities")
    prediction: Any = refused("prediction")
    reasoning_effort: str | None = refused("reasoning_effort")
    verbosity: str | None = refused("verbosity")
    service_tier: str | None = refused("service_tier")
    web_search_options: Any = refused("web_search_options")
    store: bool | None = refused("store")
    metadata: dict[str, Any] | None = refused("metadata")
    prompt_cache_key: str | None = refused("prompt_cache_key")
    prompt_cache_retention: str | None = refused("prompt_cache_retention")


class CompletionRequest(_Sampling):
    # Token ids and several prompts are refused by name (convert.py); the schema shows what is taken.
    prompt: str | list[str] | list[int] | list[list[int]] = Field(
        json_schema_extra={"anyOf": [_TEXT, {"type": "array", "items": _TEXT, "minItems": 1, "maxItems": 1}]}
    )
    echo: bool | None = refused("echo")
    suffix: str | None = refused("suffix")
    best_of: int | None = refused("best_of")


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


FinishReason = Literal["stop", "length", "tool_calls", "cancelled", "unknown"]


class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: str | None = Field(description="null when the reply is only tool calls")
    tool_calls: list[MessageToolCall] | None = Field(default=None, description="present when the model called tools")


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: None = None
    finish_reason: FinishReason


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: None = None
    finish_reason: FinishReason | None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


# ---- embeddings ----------------------------------------------------------------------------


class EmbeddingRequest(_Request):
    model: str
    input: str | list[str] | list[int] | list[list[int]] = Field(
        json_schema_extra={"anyOf": [_TEXT, {"type": "array", "items": _TEXT, "minItems": 1}]}
    )
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: int | None = Field(default=None, description="accepted only as the model's own dimension")
    user: str | None = None
    normalize: bool = Field(default=True, description="ours: false returns the model's raw vectors")


class EmbeddingItem(BaseModel):
    object: Literal["embedding"]
    index: int
    embedding: list[float] | str = Field(description="floats, or base64 of little-endian float32")


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(BaseModel):
    object: Literal["list"]
    data: list[EmbeddingItem]
    model: str
    usage: EmbeddingUsage


# ---- images --------------------------------------------------------------------------------


class ImageGenerationRequest(_Request):
    prompt: str = Field(json_schema_extra={"pattern": _SOME_TEXT})
    model: str
    n: int | None = Field(default=None, json_schema_extra={"minimum": 1})
    size: str | None = Field(
        default=None,
        description='"WIDTHxHEIGHT" (multiples of 8) or "auto"',
        json_schema_extra={"pattern": r"^([1-9][0-9]{0,4}x[1-9][0-9]{0,4}|auto)$"},
    )
    response_format: str | None = Field(default=None, json_schema_extra={"enum": [None, "b64_json"]})
    output_format: str | None = Field(default=None, json_schema_extra={"enum": [None, "png"]})
    user: str | None = None
    # Ours.
    negative_prompt: str | None = None
    steps: int | None = Field(default=None, json_schema_extra={"minimum": 1})
    guidance_scale: float | None = Field(default=None, json_schema_extra={"minimum": 0, "maximum": 30})
    seed: int | None = Field(default=None, json_schema_extra={"minimum": 0, "maximum": 2**63 - 1})
    # OpenAI's, refused unless default.
    quality: str | None = refused("quality")
    style: str | None = refused("style")
    background: str | None = refused("background")
    moderation: str | None = refused("moderation")
    output_compression: int | None = refused("output_compression")
    partial_images: int | None = refused("partial_images")
    stream: bool | None = Field(
        default=None, description="images come whole", json_schema_extra={"enum": [None, False]}
    )


# /v1/images/edits is multipart: its form fields (routes/images.py reads them).
IMAGE_EDIT_FIELDS = frozenset(
    {"image", "mask", "strength"}
    | set(ImageGenerationRequest.model_fields) - {"style", "moderation"}
    | {"input_fidelity"}
)


class ImageData(BaseModel):
    b64_json: str


class ImagesResponse(BaseModel):
    created: int
    data: list[ImageData]
    output_format: Literal["png"]
    size: str


# ---- errors and health ---------------------------------------------------------------------


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class Health(BaseModel):
    status: Literal["serving", "not_serving"]
