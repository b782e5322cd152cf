"""The core's requests and results: plain dataclasses that every front translates to and from.

A front (gRPC, HTTP) owns its wire format; nothing here knows about protobuf or JSON. Optional
fields are None when the client left them unset, so "unset" and "zero" stay different.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from adapter.scheduling.scheduler import EventKind, ModelState

# Seconds a model stays loaded after its last use: None keeps it loaded; "default" leaves the
# model's own setting (the request did not say).
KeepAlive = float | None | Literal["default"]


# ---- text generation -----------------------------------------------------------------------


class FinishReason(StrEnum):
    STOP = "stop"  # the model ended its answer, or a stop sequence was met
    LENGTH = "length"  # max_tokens was reached
    CANCELLED = "cancelled"
    TOOL_CALLS = "tool_calls"  # the model called tools
    UNKNOWN = "unknown"  # the model gave a reason we do not know


@dataclass(frozen=True)
class GenerationOptions:
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # a JSON object's text


@dataclass(frozen=True)
class ChatMessage:
    role: str  # system, user, assistant, tool
    content: str
    tool_calls: tuple[ToolCall, ...] = ()  # an assistant turn's calls
    tool_call_id: str = ""  # a tool turn: the call it answers


@dataclass(frozen=True)
class Tool:
    name: str
    description: str = ""
    parameters: str = ""  # the arguments' JSON schema as text; "": no arguments


class ToolChoiceMode(StrEnum):
    AUTO = "auto"
    NONE = "none"
    REQUIRED = "required"
    FUNCTION = "function"  # the one named in ToolChoice.function


@dataclass(frozen=True)
class ToolChoice:
    mode: ToolChoiceMode | None = None  # None: auto with tools, none without
    function: str = ""


class ResponseFormatType(StrEnum):
    TEXT = "text"
    JSON_OBJECT = "json_object"
    JSON_SCHEMA = "json_schema"


@dataclass(frozen=True)
class ResponseFormat:
    type: ResponseFormatType = ResponseFormatType.TEXT
    json_schema: str = ""  # JSON_SCHEMA: the schema as text
    name: str = ""
    strict: bool = False


@dataclass(frozen=True)
class ChatRequest:
    model: str
    messages: tuple[ChatMessage, ...]
    options: GenerationOptions = GenerationOptions()
    keep_alive: KeepAlive = "default"
    tools: tuple[Tool, ...] = ()
    tool_choice: ToolChoice = ToolChoice()
    response_format: ResponseFormat = ResponseFormat()
    parallel_tool_calls: bool = True  # False: at most one tool call in the reply


@dataclass(frozen=True)
class GenerateRequest:
    model: str
    prompt: str
    options: GenerationOptions = GenerationOptions()
    keep_alive: KeepAlive = "default"


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class Timings:
    load_s: float  # waiting for the model to load (0 when it was loaded)
    time_to_first_token_s: float  # from the request's arrival
    total_s: float


@dataclass(frozen=True)
class Finish:
    reason: FinishReason
    usage: Usage
    timings: Timings


@dataclass(frozen=True)
class ToolCallDelta:
    """A piece of a tool call: the first of a call has its id and name, the rest argument text."""

    index: int
    id: str = ""
    name: str = ""
    arguments: str = ""


@dataclass(frozen=True)
class TextDelta:
    """A piece of a streamed generation; the last one carries `finish`."""

    model: str
    text: str
    finish: Finish | None = None
    tool_calls: tuple[ToolCallDelta, ...] = ()


# ---- embeddings ----------------------------------------------------------------------------


@dataclass(frozen=True)
class EmbeddingRequest:
    model: str
    inputs: tuple[str, ...]
    normalize: bool = False
    keep_alive: KeepAlive = "default"


@dataclass(frozen=True)
class Embedding:
    index: int
    values: list[float]
    tokens: int
    truncated: bool


@dataclass(frozen=True)
class EmbeddingResult:
    model: str
    dimension: int
    embeddings: list[Embedding]
    usage: Usage


# ---- image jobs ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageOptions:
    negative_prompt: str = ""
    width: int = 0  # 0: the model's default
    height: int = 0
    steps: int = 0
    guidance_scale: float | None = None
    seed: int | None = None
    num_images: int = 0  # 0: one


@dataclass(frozen=True)
class GenerateImageRequest:
    model: str
    prompt: str
    options: ImageOptions = ImageOptions()
    keep_alive: KeepAlive = "default"
    request_id: str = ""  # the client's idempotency key; "" for none


@dataclass(frozen=True)
class EditImageRequest:
    model: str
    prompt: str
    image: bytes
    mask: bytes = b""
    strength: float | None = None
    options: ImageOptions = ImageOptions()
    keep_alive: KeepAlive = "default"
    request_id: str = ""


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass(frozen=True)
class GeneratedImage:
    png: bytes
    width: int
    height: int


@dataclass(frozen=True)
class ImageJobStatus:
    job_id: str
    state: JobState
    step: int
    total_steps: int
    error_message: str
    images: list[GeneratedImage]
    created_at: float | None  # Unix seconds
    finished_at: float | None


# ---- models --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelDescription:
    id: str
    state: ModelState
    reason: str  # why the last load failed, when it did
    created: float  # Unix seconds: when this adapter first saw the model


# ---- memory --------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceMemory:
    device: str
    total_bytes: int
    used_bytes: int

    @property
    def free_bytes(self) -> int:
        return max(0, self.total_bytes - self.used_bytes)


@dataclass(frozen=True)
class ModelMemory:
    model: str
    state: ModelState
    memory_bytes: int
    memory_source: str
    pinned: bool
    in_flight: int
    reason: str
    last_used: float | None  # Unix seconds; None: never used
    expires_at: float | None  # Unix seconds keep-alive unloads it; None: kept


@dataclass(frozen=True)
class MemorySnapshot:
    devices: list[DeviceMemory]
    models: list[ModelMemory]
    budget_bytes: int
    taken_at: float  # Unix seconds


@dataclass(frozen=True)
class ClearMemoryRequest:
    include_pinned: bool = False
    wait_for_idle_s: float = 0.0


@dataclass(frozen=True)
class ClearMemoryResult:
    unloaded_models: list[str]
    skipped_models: list[str]
    freed_bytes: int


# ManageVRAM's commands, one class each; `command_id` is the client's, echoed in its result.


@dataclass(frozen=True)
class LoadModel:
    model: str


@dataclass(frozen=True)
class UnloadModel:
    model: str


@dataclass(frozen=True)
class PinModel:
    model: str
    pinned: bool


@dataclass(frozen=True)
class SetKeepAlive:
    model: str
    keep_alive: KeepAlive  # "default" here means the client sent none: refused


@dataclass(frozen=True)
class GetStatus:
    pass


@dataclass(frozen=True)
class Subscribe:
    snapshot_interval_s: float  # 0 stops the snapshots


@dataclass(frozen=True)
class InvalidCommand:
    """A command the front could not read (none set, a field out of range): answered as a failed
    result with this message, and the stream stays open."""

    message: str


VramCommand = LoadModel | UnloadModel | PinModel | SetKeepAlive | GetStatus | Subscribe | InvalidCommand


@dataclass(frozen=True)
class VramRequest:
    command_id: str
    command: VramCommand


@dataclass(frozen=True)
class CommandResult:
    command_id: str
    ok: bool
    error_code: str = ""  # the status code's name (INVALID_ARGUMENT, ...) when not ok
    error_message: str = ""
    snapshot: MemorySnapshot | None = None


@dataclass(frozen=True)
class ModelEvent:
    model: str
    kind: EventKind
    reason: str
    memory_bytes: int
    at: float  # Unix seconds


VramMessage = CommandResult | ModelEvent | MemorySnapshot
