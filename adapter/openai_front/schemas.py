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


class TextPart(BaseModel):
    # Other kinds of parts (image_url, input_audio) get through to convert.py, which refuses them by name.
    model_config = ConfigDict(extra="allow")

    type: str = Field(description='"text"; other kinds of content are refused')
    text: str | None = None


class ChatMessage(_Request):
    role: str = Field(description="system, developer (read as system), user or assistant")
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[Any] | None = None
    tool_call_id: str | None = None


class StreamOptions(_Request):
    include_usage: bool | None = None
    include_obfuscation: bool | None = None


class _Sampling(_Request):
    model: str
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(default=None, description="accepted; identifies the end user, changes nothing")
    # Ours (vLLM accepts the same names).
    top_k: int | None = None
    repetition_penalty: float | None = None
    # OpenAI's, refused unless they hold their default (convert.py says why).
    n: int | None = None
    logprobs: Any = None
    logit_bias: dict[str, Any] | None = None


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage]
    max_completion_tokens: int | None = None
    safety_identifier: str | None = Field(default=None, description="accepted, as `user`")
    top_logprobs: int | None = None
    # Tools and structured output come with constrained decoding (issue 20); refused until then.
    tools: list[Any] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None
    functions: list[Any] | None = None
    function_call: Any = None
    audio: Any = None
    modalities: list[str] | None = None
    prediction: Any = None
    reasoning_effort: str | None = None
    verbosity: str | None = None
    service_tier: str | None = None
    web_search_options: Any = None
    store: bool | None = None
    metadata: dict[str, Any] | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool | None = None
    suffix: str | None = None
    best_of: int | None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


FinishReason = Literal["stop", "length", "cancelled", "unknown"]


class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: str


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
    input: str | list[str] | list[int] | list[list[int]]
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
    prompt: str
    model: str
    n: int | None = None
    size: str | None = Field(default=None, description='"WIDTHxHEIGHT" (multiples of 8) or "auto"')
    response_format: str | None = Field(default=None, description='"b64_json" (the only one)')
    output_format: str | None = Field(default=None, description='"png" (the only one)')
    user: str | None = None
    # Ours.
    negative_prompt: str | None = None
    steps: int | None = None
    guidance_scale: float | None = None
    seed: int | None = None
    # OpenAI's, refused unless default.
    quality: str | None = None
    style: str | None = None
    background: str | None = None
    moderation: str | None = None
    output_compression: int | None = None
    partial_images: int | None = None
    stream: bool | None = None


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
