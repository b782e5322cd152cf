"""Protobuf <-> core: each request message into the core's dataclass, each result back into its
message. What only protobuf has (32-bit floats, Duration and Timestamp ranges, "unset" by HasField)
is settled here, so the core sees plain Python values."""

from __future__ import annotations

from typing import Any

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from adapter.core import types as t
from adapter.core.errors import InvalidArgument
from adapter.gen.inference.v1 import inference_pb2 as pb
from adapter.scheduling.scheduler import EventKind, ModelState

# google.protobuf.Duration's documented range: about 10,000 years either way.
MAX_DURATION_SECONDS = 315_576_000_000
# The last second a google.protobuf.Timestamp can hold (9999-12-31T23:59:59Z).
MAX_TIMESTAMP_SECONDS = 253_402_300_799


# ---- protobuf's own types ------------------------------------------------------------------


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


def keep_alive(request: Any) -> t.KeepAlive:
    """A request's keep_alive: unset keeps the model's setting, negative keeps it loaded for good."""
    if not request.HasField("keep_alive"):
        return "default"
    seconds = duration_seconds("keep_alive", request.keep_alive)
    return None if seconds < 0 else seconds


def _duration(seconds: float) -> Duration:
    duration = Duration()
    duration.FromNanoseconds(int(seconds * 1e9))
    return duration


def _timestamp(seconds: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def _float(value: float) -> float:
    # Proto floats are 32-bit: 0.01 arrives as 0.0099999998. Back to the decimal the client wrote
    # (7 significant digits), which is also what the model is sent.
    return float(f"{value:.7g}")


def _optional(message: Any, name: str) -> Any:
    return getattr(message, name) if message.HasField(name) else None


# ---- text generation -----------------------------------------------------------------------


def generation_options(options: pb.GenerationOptions) -> t.GenerationOptions:
    floats = {
        name: _float(value) if (value := _optional(options, name)) is not None else None
        for name in ("temperature", "top_p", "repetition_penalty", "frequency_penalty", "presence_penalty")
    }
    return t.GenerationOptions(
        max_tokens=_optional(options, "max_tokens"),
        top_k=_optional(options, "top_k"),
        seed=_optional(options, "seed"),
        stop=tuple(options.stop),
        **floats,
    )


def _chat_message(message: pb.ChatMessage) -> t.ChatMessage:
    return t.ChatMessage(
        role=message.role,
        content=message.content,
        tool_calls=tuple(t.ToolCall(c.id, c.name, c.arguments) for c in message.tool_calls),
        tool_call_id=message.tool_call_id,
    )


TOOL_CHOICE_MODES = {
    pb.ToolChoice.MODE_UNSPECIFIED: None,
    pb.ToolChoice.MODE_AUTO: t.ToolChoiceMode.AUTO,
    pb.ToolChoice.MODE_NONE: t.ToolChoiceMode.NONE,
    pb.ToolChoice.MODE_REQUIRED: t.ToolChoiceMode.REQUIRED,
    pb.ToolChoice.MODE_FUNCTION: t.ToolChoiceMode.FUNCTION,
}
RESPONSE_FORMATS = {
    pb.ResponseFormat.TYPE_UNSPECIFIED: t.ResponseFormatType.TEXT,
    pb.ResponseFormat.TYPE_TEXT: t.ResponseFormatType.TEXT,
    pb.ResponseFormat.TYPE_JSON_OBJECT: t.ResponseFormatType.JSON_OBJECT,
    pb.ResponseFormat.TYPE_JSON_SCHEMA: t.ResponseFormatType.JSON_SCHEMA,
}


def _tool_choice(choice: pb.ToolChoice) -> t.ToolChoice:
    if choice.mode not in TOOL_CHOICE_MODES:
        raise InvalidArgument(f"tool_choice.mode {choice.mode} is not a known mode")
    return t.ToolChoice(mode=TOOL_CHOICE_MODES[choice.mode], function=choice.function)


def _response_format(response_format: pb.ResponseFormat) -> t.ResponseFormat:
    if response_format.type not in RESPONSE_FORMATS:
        raise InvalidArgument(f"response_format.type {response_format.type} is not a known type")
    return t.ResponseFormat(
        type=RESPONSE_FORMATS[response_format.type],
        json_schema=response_format.json_schema,
        name=response_format.name,
        strict=response_format.strict,
    )


def chat_request(request: pb.ChatStreamRequest) -> t.ChatRequest:
    return t.ChatRequest(
        model=request.model,
        messages=tuple(_chat_message(m) for m in request.messages),
        options=generation_options(request.options),
        keep_alive=keep_alive(request),
        tools=tuple(t.Tool(x.name, x.description, x.parameters_json) for x in request.tools),
        tool_choice=_tool_choice(request.tool_choice),
        response_format=_response_format(request.response_format),
        parallel_tool_calls=request.parallel_tool_calls if request.HasField("parallel_tool_calls") else True,
    )


def generate_request(request: pb.GenerateStreamRequest) -> t.GenerateRequest:
    return t.GenerateRequest(
        model=request.model,
        prompt=request.prompt,
        options=generation_options(request.options),
        keep_alive=keep_alive(request),
    )


FINISH_REASONS = {
    t.FinishReason.STOP: pb.FINISH_REASON_STOP,
    t.FinishReason.LENGTH: pb.FINISH_REASON_LENGTH,
    t.FinishReason.CANCELLED: pb.FINISH_REASON_CANCELLED,
    t.FinishReason.TOOL_CALLS: pb.FINISH_REASON_TOOL_CALLS,
}


def _usage(usage: t.Usage) -> pb.Usage:
    return pb.Usage(
        prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens, total_tokens=usage.total_tokens
    )


def chat_response(delta: t.TextDelta) -> pb.ChatStreamResponse:
    response = pb.ChatStreamResponse(**text_fields(delta))
    for call in delta.tool_calls:
        response.tool_calls.add(index=call.index, id=call.id, name=call.name, arguments=call.arguments)
    return response


def text_fields(delta: t.TextDelta) -> dict[str, Any]:
    """The fields ChatStreamResponse and GenerateStreamResponse share, for one delta."""
    if delta.finish is None:
        return {"model": delta.model, "delta": delta.text}
    finish = delta.finish
    return {
        "model": delta.model,
        "delta": delta.text,
        "done": True,
        "finish_reason": FINISH_REASONS.get(finish.reason, pb.FINISH_REASON_UNSPECIFIED),
        "usage": _usage(finish.usage),
        "timings": pb.Timings(
            load_duration=_duration(finish.timings.load_s),
            time_to_first_token=_duration(finish.timings.time_to_first_token_s),
            total_duration=_duration(finish.timings.total_s),
        ),
    }


# ---- embeddings ----------------------------------------------------------------------------


def embedding_request(request: pb.GetEmbeddingRequest) -> t.EmbeddingRequest:
    return t.EmbeddingRequest(
        model=request.model, inputs=tuple(request.inputs), normalize=request.normalize, keep_alive=keep_alive(request)
    )


def embedding_response(result: t.EmbeddingResult) -> pb.GetEmbeddingResponse:
    return pb.GetEmbeddingResponse(
        model=result.model,
        dimension=result.dimension,
        embeddings=[
            pb.Embedding(index=e.index, values=e.values, tokens=e.tokens, truncated=e.truncated)
            for e in result.embeddings
        ],
        usage=_usage(result.usage),
    )


# ---- image jobs ----------------------------------------------------------------------------


def image_options(options: pb.ImageOptions) -> t.ImageOptions:
    return t.ImageOptions(
        negative_prompt=options.negative_prompt,
        width=options.width,
        height=options.height,
        steps=options.steps,
        guidance_scale=_optional(options, "guidance_scale"),
        seed=_optional(options, "seed"),
        num_images=options.num_images,
    )


def generate_image_request(request: pb.GenerateImageRequest) -> t.GenerateImageRequest:
    return t.GenerateImageRequest(
        model=request.model,
        prompt=request.prompt,
        options=image_options(request.options),
        keep_alive=keep_alive(request),
        request_id=request.request_id,
    )


def edit_image_request(request: pb.EditImageRequest) -> t.EditImageRequest:
    return t.EditImageRequest(
        model=request.model,
        prompt=request.prompt,
        image=request.image,
        mask=request.mask,
        strength=_optional(request, "strength"),
        options=image_options(request.options),
        keep_alive=keep_alive(request),
        request_id=request.request_id,
    )


JOB_STATES = {
    t.JobState.QUEUED: pb.JOB_STATE_QUEUED,
    t.JobState.RUNNING: pb.JOB_STATE_RUNNING,
    t.JobState.SUCCEEDED: pb.JOB_STATE_SUCCEEDED,
    t.JobState.FAILED: pb.JOB_STATE_FAILED,
}


def image_status_response(status: t.ImageJobStatus) -> pb.CheckImageStatusResponse:
    return pb.CheckImageStatusResponse(
        job_id=status.job_id,
        state=JOB_STATES[status.state],
        step=status.step,
        total_steps=status.total_steps,
        error_message=status.error_message,
        images=[pb.Image(png=i.png, width=i.width, height=i.height) for i in status.images],
        created_at=_timestamp(status.created_at) if status.created_at is not None else None,
        finished_at=_timestamp(status.finished_at) if status.finished_at is not None else None,
    )


# ---- memory --------------------------------------------------------------------------------

MODEL_STATES = {
    ModelState.UNLOADED: pb.MODEL_STATE_UNLOADED,
    ModelState.LOADING: pb.MODEL_STATE_LOADING,
    ModelState.LOADED: pb.MODEL_STATE_LOADED,
    ModelState.UNLOADING: pb.MODEL_STATE_UNLOADING,
    ModelState.FAILED: pb.MODEL_STATE_FAILED,
}
EVENT_KINDS = {
    EventKind.LOADED: pb.MODEL_EVENT_KIND_LOADED,
    EventKind.UNLOADED: pb.MODEL_EVENT_KIND_UNLOADED,
    EventKind.EVICTED: pb.MODEL_EVENT_KIND_EVICTED,
    EventKind.LOAD_FAILED: pb.MODEL_EVENT_KIND_LOAD_FAILED,
}


def _model_memory(model: t.ModelMemory) -> pb.ModelMemory:
    message = pb.ModelMemory(
        model=model.model,
        state=MODEL_STATES[model.state],
        memory_bytes=model.memory_bytes,
        memory_source=model.memory_source,
        pinned=model.pinned,
        in_flight=model.in_flight,
        reason=model.reason,
    )
    if model.last_used is not None:
        message.last_used.CopyFrom(_timestamp(model.last_used))
    # Unset (kept) past what a Timestamp can hold (a keep-alive of thousands of years).
    if model.expires_at is not None and model.expires_at <= MAX_TIMESTAMP_SECONDS:
        message.expires_at.CopyFrom(_timestamp(model.expires_at))
    return message


def memory_snapshot(snapshot: t.MemorySnapshot) -> pb.MemorySnapshot:
    return pb.MemorySnapshot(
        devices=[
            pb.DeviceMemory(
                device=d.device, total_bytes=d.total_bytes, used_bytes=d.used_bytes, free_bytes=d.free_bytes
            )
            for d in snapshot.devices
        ],
        models=[_model_memory(m) for m in snapshot.models],
        budget_bytes=snapshot.budget_bytes,
        taken_at=_timestamp(snapshot.taken_at),
    )


def clear_memory_request(request: pb.ClearMemoryRequest) -> t.ClearMemoryRequest:
    return t.ClearMemoryRequest(
        include_pinned=request.include_pinned,
        wait_for_idle_s=duration_seconds("wait_for_idle", request.wait_for_idle),
    )


def clear_memory_response(result: t.ClearMemoryResult) -> pb.ClearMemoryResponse:
    return pb.ClearMemoryResponse(
        unloaded_models=result.unloaded_models, skipped_models=result.skipped_models, freed_bytes=result.freed_bytes
    )


def vram_request(request: pb.ManageVRAMRequest) -> t.VramRequest:
    """One ManageVRAM command; one that cannot be read becomes InvalidCommand (its failed result)."""
    try:
        return t.VramRequest(command_id=request.command_id, command=_vram_command(request))
    except InvalidArgument as err:
        return t.VramRequest(command_id=request.command_id, command=t.InvalidCommand(err.message))


def _vram_command(request: pb.ManageVRAMRequest) -> t.VramCommand:
    kind = request.WhichOneof("command")
    command: t.VramCommand
    if kind == "load":
        command = t.LoadModel(request.load.model)
    elif kind == "unload":
        command = t.UnloadModel(request.unload.model)
    elif kind == "pin":
        command = t.PinModel(request.pin.model, True)
    elif kind == "unpin":
        command = t.PinModel(request.unpin.model, False)
    elif kind == "set_keep_alive":
        message = request.set_keep_alive
        value: t.KeepAlive = "default"
        if message.HasField("keep_alive"):
            seconds = duration_seconds("set_keep_alive.keep_alive", message.keep_alive)
            value = None if seconds < 0 else seconds
        command = t.SetKeepAlive(message.model, value)
    elif kind == "get_status":
        command = t.GetStatus()
    elif kind == "subscribe":
        command = t.Subscribe(duration_seconds("subscribe.snapshot_interval", request.subscribe.snapshot_interval))
    else:
        command = t.InvalidCommand(
            "no command given: set one of load, unload, pin, unpin, set_keep_alive, get_status, subscribe"
        )
    return command


def vram_response(message: t.VramMessage) -> pb.ManageVRAMResponse:
    if isinstance(message, t.CommandResult):
        result = pb.CommandResult(
            command_id=message.command_id,
            ok=message.ok,
            error_code=message.error_code,
            error_message=message.error_message,
        )
        if message.snapshot is not None:
            result.snapshot.CopyFrom(memory_snapshot(message.snapshot))
        return pb.ManageVRAMResponse(result=result)
    if isinstance(message, t.ModelEvent):
        return pb.ManageVRAMResponse(
            event=pb.ModelEvent(
                model=message.model,
                kind=EVENT_KINDS[message.kind],
                reason=message.reason,
                memory_bytes=message.memory_bytes,
                at=_timestamp(message.at),
            )
        )
    return pb.ManageVRAMResponse(snapshot=memory_snapshot(message))
