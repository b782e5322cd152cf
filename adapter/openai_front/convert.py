"""OpenAI's bodies <-> the core's dataclasses. Options this server cannot honour are refused here,
by name (errors.unsupported); everything else is checked by the core, as for gRPC."""

from __future__ import annotations

import base64
import json
import re
import time
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np

from adapter.core import types as t
from adapter.openai_front import schemas as s
from adapter.openai_front.errors import HttpError, unsupported
from model_runtime import sampling_limits


def refuse_unsupported(values: dict[str, Any]) -> None:
    """400 naming the first option set to something this server cannot do."""
    for name, value in values.items():
        rule = s.REFUSED_UNLESS.get(name)
        if rule is not None and value not in rule[0]:
            raise unsupported(name, f"{rule[1]} (got {json.dumps(value, default=str)[:100]})")


def _sampling_values(body: s._Sampling) -> dict[str, Any]:
    return {name: getattr(body, name) for name in body.model_fields_set}


def _stop(stop: str | list[str] | None) -> tuple[str, ...]:
    if stop is None:
        return ()
    return (stop,) if isinstance(stop, str) else tuple(stop)


def _options(body: s._Sampling, max_tokens: int | None) -> t.GenerationOptions:
    if body.seed is not None and not 0 <= body.seed < sampling_limits.MAX_SEED:
        raise HttpError(400, f"seed must be in [0, 2^64); got {body.seed}", param="seed")
    return t.GenerationOptions(
        max_tokens=max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=body.top_k,
        repetition_penalty=body.repetition_penalty,
        frequency_penalty=body.frequency_penalty,
        presence_penalty=body.presence_penalty,
        seed=body.seed,
        stop=_stop(body.stop),
    )


def _stream_options(body: s._Sampling) -> bool:
    """Whether usage is to come in a last chunk of its own."""
    if body.stream_options is None:
        return False
    if not body.stream:
        raise HttpError(400, "stream_options is only allowed with stream: true", param="stream_options")
    return bool(body.stream_options.include_usage)


def _content(i: int, content: str | list[s.TextPart] | None) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts = []
    for j, part in enumerate(content):
        if part.type == "text" and part.text is None:
            raise HttpError(
                400, f"messages[{i}].content[{j}].text is required", param=f"messages[{i}].content[{j}].text"
            )
        if part.type == "text" and part.model_extra:
            extra = sorted(part.model_extra)[0]
            raise HttpError(
                400, f"unrecognized request argument: messages[{i}].content[{j}].{extra}", f"messages[{i}].content[{j}]"
            )
        if part.type != "text" or part.text is None:
            raise unsupported(
                f"messages[{i}].content[{j}]", f"content of type {part.type!r}: the models here read text parts only"
            )
        texts.append(part.text)
    return "".join(texts)


_FIELDS_OF_ROLE = {role: fields for roles, fields in s.MESSAGE_FIELDS.items() for role in roles}


def _message(i: int, message: s.ChatMessage) -> t.ChatMessage:
    allowed = _FIELDS_OF_ROLE.get(message.role)
    if allowed is not None:  # an unknown role: the core names it
        for field in sorted(message.model_fields_set - set(allowed)):
            raise HttpError(
                400, f"messages[{i}].{field}: a {message.role} message has no {field}", param=f"messages[{i}].{field}"
            )
    if message.name is not None:
        raise unsupported(f"messages[{i}].name", "messages carry no names")
    for field in ("refusal", "function_call"):
        if getattr(message, field) is not None:
            raise unsupported(f"messages[{i}].{field}", "accepted only as null")
    calls = []
    for j, call in enumerate(message.tool_calls or ()):
        if call.type != "function":
            raise unsupported(f"messages[{i}].tool_calls[{j}].type", f"{call.type!r}: function calls only")
        calls.append(t.ToolCall(id=call.id, name=call.function.name, arguments=call.function.arguments))
    # OpenAI's newer name for the system role.
    role = "system" if message.role == "developer" else message.role
    return t.ChatMessage(
        role=role,
        content=_content(i, message.content),
        tool_calls=tuple(calls),
        tool_call_id=message.tool_call_id or "",
    )


def _tools(tools: list[s.ChatTool] | None) -> tuple[t.Tool, ...]:
    out = []
    for i, tool in enumerate(tools or ()):
        if tool.type != "function":
            raise unsupported(f"tools[{i}].type", f"{tool.type!r}: function tools only")
        function = tool.function
        parameters = json.dumps(function.parameters) if function.parameters is not None else ""
        out.append(t.Tool(name=function.name, description=function.description or "", parameters=parameters))
    return tuple(out)


_TOOL_CHOICE_MODES = {mode.value: mode for mode in t.ToolChoiceMode if mode != t.ToolChoiceMode.FUNCTION}


def _tool_choice(choice: str | s.NamedToolChoice | None) -> t.ToolChoice:
    if choice is None:
        return t.ToolChoice()
    if isinstance(choice, str):
        if choice not in _TOOL_CHOICE_MODES:
            raise HttpError(
                400,
                'tool_choice must be "none", "auto", "required" or '
                f'{{"type": "function", "function": {{"name": ...}}}}; got {choice!r}',
                param="tool_choice",
            )
        return t.ToolChoice(mode=_TOOL_CHOICE_MODES[choice])
    if choice.type != "function":
        raise unsupported("tool_choice.type", f"{choice.type!r}: a named choice is a function")
    return t.ToolChoice(mode=t.ToolChoiceMode.FUNCTION, function=choice.function.name)


_FORMATS = {kind.value: kind for kind in t.ResponseFormatType}
_FORMAT_NAME = re.compile(r"^[A-Za-z0-9_-]{0,64}$")  # OpenAI's rule (it also requires one)


def _response_format(response_format: s.ResponseFormat | None) -> t.ResponseFormat:
    if response_format is None:
        return t.ResponseFormat()
    kind = _FORMATS.get(response_format.type)
    if kind is None:
        raise HttpError(
            400,
            f"response_format.type must be one of {', '.join(_FORMATS)}; got {response_format.type!r}",
            param="response_format.type",
        )
    spec = response_format.json_schema
    if kind != t.ResponseFormatType.JSON_SCHEMA:
        if spec is not None:
            raise HttpError(
                400, f"response_format.json_schema is only for type json_schema; got {kind.value}", "response_format"
            )
        return t.ResponseFormat(type=kind)
    if spec is None:
        raise HttpError(400, "response_format.json_schema is required for type json_schema", "response_format")
    if not _FORMAT_NAME.match(spec.name):
        raise HttpError(
            400,
            f"response_format.json_schema.name must be at most 64 letters, digits, _ or -; got {spec.name[:80]!r}",
            "response_format.json_schema.name",
        )
    if spec.schema_ is None:
        raise HttpError(
            400,
            "response_format.json_schema.schema is required: the JSON schema the reply must follow",
            "response_format.json_schema.schema",
        )
    return t.ResponseFormat(type=kind, json_schema=json.dumps(spec.schema_), name=spec.name, strict=bool(spec.strict))


def chat_request(body: s.ChatCompletionRequest) -> tuple[t.ChatRequest, bool]:
    """The core's request, and whether usage comes in a last chunk (stream_options.include_usage)."""
    refuse_unsupported(_sampling_values(body))
    if body.max_tokens is not None and body.max_completion_tokens not in (None, body.max_tokens):
        raise HttpError(
            400,
            f"max_tokens ({body.max_tokens}) and max_completion_tokens ({body.max_completion_tokens}) disagree; "
            "send one of them (max_completion_tokens is the current name)",
            param="max_completion_tokens",
        )
    messages = tuple(_message(i, message) for i, message in enumerate(body.messages))
    max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    request = t.ChatRequest(
        model=body.model,
        messages=messages,
        options=_options(body, max_tokens),
        tools=_tools(body.tools),
        tool_choice=_tool_choice(body.tool_choice),
        response_format=_response_format(body.response_format),
        parallel_tool_calls=body.parallel_tool_calls is not False,
    )
    return request, _stream_options(body)


# The core names tool fields as gRPC's messages do (flat); OpenAI nests them under `function`.
_CHAT_FIELD_NAMES = (
    (re.compile(r"\btools\[(\d+)\]\.(name|description|parameters)\b"), r"tools[\1].function.\2"),
    (re.compile(r"\b(messages\[\d+\]\.tool_calls\[\d+\])\.(name|arguments)\b"), r"\1.function.\2"),
    (re.compile(r"\btool_choice\.function\b(?!\.)"), "tool_choice.function.name"),
    (re.compile(r"\bresponse_format\.json_schema\b(?!\.| is required| is only)"), "response_format.json_schema.schema"),
)


def rename_chat_fields(message: str) -> str:
    for pattern, replacement in _CHAT_FIELD_NAMES:
        message = pattern.sub(replacement, message)
    return message


def completion_request(body: s.CompletionRequest) -> tuple[t.GenerateRequest, bool]:
    refuse_unsupported(_sampling_values(body))
    prompt = body.prompt
    if isinstance(prompt, list):
        if len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        elif all(isinstance(p, str) for p in prompt):
            raise unsupported("prompt", "several prompts in one request; send one request per prompt")
        else:
            raise unsupported("prompt", "token ids; send the prompt as text")
    request = t.GenerateRequest(model=body.model, prompt=prompt, options=_options(body, body.max_tokens))
    return request, _stream_options(body)


def embedding_request(body: s.EmbeddingRequest) -> t.EmbeddingRequest:
    raw = body.input
    if isinstance(raw, str):
        inputs: tuple[str, ...] = (raw,)
    elif all(isinstance(item, str) for item in raw):
        inputs = tuple(str(item) for item in raw)
    else:
        raise unsupported("input", "token ids; send the inputs as text")
    return t.EmbeddingRequest(model=body.model, inputs=inputs, normalize=body.normalize)


# ---- responses -----------------------------------------------------------------------------


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def usage(u: t.Usage) -> dict[str, int]:
    return {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens, "total_tokens": u.total_tokens}


def tool_call(call: t.ToolCall) -> dict[str, Any]:
    return {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}


def chat_completion(model: str, text: str, calls: list[t.ToolCall], finish: t.Finish) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": text if text or not calls else None}
    if calls:
        message["tool_calls"] = [tool_call(c) for c in calls]
    return {
        "id": new_id("chatcmpl"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish.reason.value}],
        "usage": usage(finish.usage),
    }


class ToolCallAssembler:
    """A reply's tool calls put together from their streamed pieces (the non-streamed response)."""

    def __init__(self) -> None:
        self._calls: dict[int, list[str]] = {}  # index -> [id, name, arguments]

    def add(self, deltas: tuple[t.ToolCallDelta, ...]) -> None:
        for delta in deltas:
            call = self._calls.setdefault(delta.index, ["", "", ""])
            call[0] = call[0] or delta.id
            call[1] = call[1] or delta.name
            call[2] += delta.arguments

    def calls(self) -> list[t.ToolCall]:
        return [t.ToolCall(id=c[0], name=c[1], arguments=c[2]) for _, c in sorted(self._calls.items())]


def completion(model: str, text: str, finish: t.Finish) -> dict[str, Any]:
    return {
        "id": new_id("cmpl"),
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish.reason.value}],
        "usage": usage(finish.usage),
    }


class ChunkWriter:
    """The server-sent events of one stream, as bytes. A text chunk is a template around the
    JSON-escaped text: the hot path costs one json.dumps of a string, no dict or model per chunk."""

    def __init__(self, kind: str, model: str, include_usage: bool) -> None:
        chat = kind == "chat"
        self.kind = kind
        self._head = {
            "id": new_id("chatcmpl" if chat else "cmpl"),
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": int(time.time()),
            "model": model,
        }
        self._chat = chat
        self._include_usage = include_usage
        self._tail = ',"usage":null' if include_usage else ""
        head = json.dumps(self._head, separators=(",", ":"))[:-1]
        if chat:
            self._before = f'data: {head},"choices":[{{"index":0,"delta":{{"content":'.encode()
            self._after = f'}},"logprobs":null,"finish_reason":null}}]{self._tail}}}\n\n'.encode()
        else:
            self._before = f'data: {head},"choices":[{{"index":0,"text":'.encode()
            self._after = f',"logprobs":null,"finish_reason":null}}]{self._tail}}}\n\n'.encode()

    def _event(self, fields: dict[str, Any]) -> bytes:
        return b"data: " + json.dumps({**self._head, **fields}, separators=(",", ":")).encode() + b"\n\n"

    def opening(self) -> bytes:
        """Chat streams start with the assistant's role, as OpenAI's do."""
        if not self._chat:
            return b""
        choice = {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
        return self._event({"choices": [choice], **({"usage": None} if self._include_usage else {})})

    def text(self, text: str) -> bytes:
        return self._before + json.dumps(text).encode() + self._after

    def tool_calls(self, deltas: tuple[t.ToolCallDelta, ...]) -> bytes:
        """OpenAI's tool-call deltas: a call's first piece has its id, type and name, the rest
        argument text only."""
        pieces = []
        for delta in deltas:
            piece: dict[str, Any] = {"index": delta.index}
            function: dict[str, str] = {}
            if delta.id:
                piece.update(id=delta.id, type="function")
            if delta.name:
                function["name"] = delta.name
            if delta.arguments or delta.id:
                function["arguments"] = delta.arguments
            piece["function"] = function
            pieces.append(piece)
        choice = {"index": 0, "delta": {"tool_calls": pieces}, "logprobs": None, "finish_reason": None}
        return self._event({"choices": [choice], **({"usage": None} if self._include_usage else {})})

    def finish(self, finish: t.Finish) -> bytes:
        if self._chat:
            choice: dict[str, Any] = {"index": 0, "delta": {}, "logprobs": None, "finish_reason": finish.reason.value}
        else:
            choice = {"index": 0, "text": "", "logprobs": None, "finish_reason": finish.reason.value}
        last = self._event({"choices": [choice], **({"usage": None} if self._include_usage else {})})
        if self._include_usage:
            last += self._event({"choices": [], "usage": usage(finish.usage)})
        return last + b"data: [DONE]\n\n"

    @staticmethod
    def error(error_body: dict[str, Any]) -> bytes:
        return b"data: " + json.dumps(error_body).encode() + b"\n\n"


def embedding_list(result: t.EmbeddingResult, encoding: str) -> dict[str, Any]:
    encode: Callable[[list[float]], Any]
    if encoding == "base64":
        # OpenAI's base64 form: the little-endian float32 bytes of the vector.
        def encode(values: list[float]) -> Any:
            return base64.b64encode(np.asarray(values, dtype="<f4").tobytes()).decode()
    else:

        def encode(values: list[float]) -> Any:
            return values

    return {
        "object": "list",
        "data": [{"object": "embedding", "index": e.index, "embedding": encode(e.values)} for e in result.embeddings],
        "model": result.model,
        "usage": {"prompt_tokens": result.usage.prompt_tokens, "total_tokens": result.usage.prompt_tokens},
    }


# ---- images --------------------------------------------------------------------------------

_SIZE = re.compile(r"^(\d{1,5})x(\d{1,5})$")


def image_options(
    n: int | None,
    size: str | None,
    negative_prompt: str | None,
    steps: int | None,
    guidance_scale: float | None,
    seed: int | None,
) -> t.ImageOptions:
    width = height = 0  # the model's default (an edit: the input's size)
    if size is not None and size != "auto":
        match = _SIZE.match(size)
        if match is None:
            raise HttpError(400, f'size must be "WIDTHxHEIGHT" (for example "512x512") or "auto"; got {size!r}', "size")
        width, height = int(match.group(1)), int(match.group(2))
        if not width or not height:
            raise HttpError(400, f"size must have a width and a height above 0; got {size!r}", "size")
    if n is not None and n < 1:
        raise HttpError(400, f"n must be at least 1; got {n}", "n")
    if steps is not None and steps < 1:
        raise HttpError(400, f"steps must be at least 1; got {steps}", "steps")
    if seed is not None and seed < 0:
        raise HttpError(400, f"seed must not be negative; got {seed}", "seed")
    return t.ImageOptions(
        negative_prompt=negative_prompt or "",
        width=width,
        height=height,
        steps=steps or 0,
        guidance_scale=guidance_scale,
        seed=seed,
        num_images=n or 0,
    )


def check_image_formats(response_format: str | None, output_format: str | None) -> None:
    if response_format not in (None, "b64_json"):
        raise unsupported("response_format", f'{response_format!r}: images come back as "b64_json" only')
    if output_format not in (None, "png"):
        raise unsupported("output_format", f"{output_format!r}: the image model makes PNG only")


# The core names image options as gRPC's ImageOptions does; OpenAI's fields for them.
IMAGE_FIELD_NAMES = {
    "options.width": "size",
    "options.height": "size",
    "options.num_images": "n",
    "options.steps": "steps",
    "options.guidance_scale": "guidance_scale",
    "options.seed": "seed",
}


def rename_image_fields(message: str) -> str:
    for core, ours in IMAGE_FIELD_NAMES.items():
        if message.startswith(core + " "):
            return f"{ours} ({core.removeprefix('options.')}){message[len(core) :]}"
    return message


def images_response(status: t.ImageJobStatus) -> dict[str, Any]:
    first = status.images[0]
    return {
        "created": int(status.created_at or time.time()),
        "data": [{"b64_json": base64.b64encode(image.png).decode()} for image in status.images],
        "output_format": "png",
        "size": f"{first.width}x{first.height}",
    }
