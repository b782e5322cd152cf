"""Checks of public requests, before anything reaches Triton. Each failure names the field."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

import jsonschema

from adapter.core import types as t
from adapter.core.errors import InvalidArgument
from model_runtime import sampling_limits

VALID_ROLES = ("system", "user", "assistant", "tool")
MAX_STOP_SEQUENCES = 16
MAX_TOOLS = 128
# OpenAI's rule for function names.
TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def require_model(model: str, example: str = "llm") -> str:
    """The one check that a request names a model (every call that takes one)."""
    if not model.strip():
        raise InvalidArgument(f'model is required (for example "{example}")')
    return model


def chat_messages(messages: Sequence[t.ChatMessage]) -> list[dict[str, Any]]:
    """The conversation as the LLM model's `messages` (OpenAI's shape): an assistant turn may carry
    tool calls, and a tool turn must answer one of the calls made before it."""
    if not messages:
        raise InvalidArgument("messages must not be empty")
    checked: list[dict[str, Any]] = []
    called: set[str] = set()
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if message.role not in VALID_ROLES:
            raise InvalidArgument(f"{where}.role must be one of {', '.join(VALID_ROLES)}; got {message.role!r}")
        out: dict[str, Any] = {"role": message.role, "content": message.content}
        if message.tool_calls:
            if message.role != "assistant":
                raise InvalidArgument(f"{where}.tool_calls: only an assistant message carries tool calls")
            out["tool_calls"] = [_tool_call(f"{where}.tool_calls[{j}]", c) for j, c in enumerate(message.tool_calls)]
            called.update(c.id for c in message.tool_calls)
        if message.role == "tool":
            if not message.tool_call_id:
                raise InvalidArgument(f"{where}.tool_call_id is required for a tool message (the call it answers)")
            if message.tool_call_id not in called:
                raise InvalidArgument(
                    f"{where}.tool_call_id {message.tool_call_id!r} answers no tool call of an earlier assistant "
                    "message"
                )
            out["tool_call_id"] = message.tool_call_id
        elif message.tool_call_id:
            raise InvalidArgument(f"{where}.tool_call_id: only a tool message answers a call")
        checked.append(out)
    if not any(m["content"].strip() or m.get("tool_calls") for m in checked):
        raise InvalidArgument("messages must contain some text; every content is empty")
    return checked


def _tool_call(where: str, call: t.ToolCall) -> dict[str, Any]:
    if not call.id:
        raise InvalidArgument(f"{where}.id is required")
    if not TOOL_NAME.match(call.name):
        raise InvalidArgument(f"{where}.name must be 1-64 letters, digits, _ or -; got {call.name!r}")
    arguments = _json_object(f"{where}.arguments", call.arguments or "{}")
    return {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": json.dumps(arguments)}}


def _json_object(where: str, text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as err:
        raise InvalidArgument(f"{where} is not valid JSON: {err}") from None
    if not isinstance(value, dict):
        raise InvalidArgument(f"{where} must be a JSON object; got {type(value).__name__}")
    return value


def _json_schema(where: str, text: str) -> dict[str, Any]:
    schema = _json_object(where, text)
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as err:
        path = "".join(f"[{p!r}]" for p in err.absolute_path)
        raise InvalidArgument(f"{where} is not a valid JSON schema: {err.message} (at {path or 'the root'})") from None
    return schema


def tools(given: Sequence[t.Tool]) -> list[dict[str, Any]]:
    """The tools as the LLM model's `tools` input (OpenAI's function tools)."""
    if len(given) > MAX_TOOLS:
        raise InvalidArgument(f"tools allows at most {MAX_TOOLS} tools; got {len(given)}")
    out: list[dict[str, Any]] = []
    names: set[str] = set()
    for i, tool in enumerate(given):
        where = f"tools[{i}]"
        if not TOOL_NAME.match(tool.name):
            raise InvalidArgument(f"{where}.name must be 1-64 letters, digits, _ or -; got {tool.name!r}")
        if tool.name in names:
            raise InvalidArgument(f"{where}.name {tool.name!r} is given twice")
        names.add(tool.name)
        # OpenAI: omitted parameters mean a function that takes none.
        parameters = (
            _json_schema(f"{where}.parameters", tool.parameters)
            if tool.parameters
            else {"type": "object", "properties": {}}
        )
        function = {"name": tool.name, "description": tool.description, "parameters": parameters}
        out.append({"type": "function", "function": function})
    return out


def tool_choice(choice: t.ToolChoice, given: Sequence[t.Tool]) -> str | dict[str, Any] | None:
    """The LLM model's `tool_choice` input; None leaves the default (auto with tools)."""
    mode = choice.mode
    if mode is None:
        if choice.function:
            mode = t.ToolChoiceMode.FUNCTION
        else:
            return None
    if mode in (t.ToolChoiceMode.REQUIRED, t.ToolChoiceMode.FUNCTION) and not given:
        raise InvalidArgument(f"tool_choice {mode.value!r} needs tools")
    if mode == t.ToolChoiceMode.FUNCTION:
        names = [tool.name for tool in given]
        if choice.function not in names:
            raise InvalidArgument(f"tool_choice.function {choice.function!r} is not among the tools: {sorted(names)}")
        return {"type": "function", "function": {"name": choice.function}}
    if choice.function:
        raise InvalidArgument(f"tool_choice.function is only for mode function; got mode {mode.value!r}")
    return mode.value


def guided_decoding(response_format: t.ResponseFormat) -> dict[str, Any] | None:
    """The response format as the LLM model's `guided_decoding` sampling parameter (vLLM's name);
    None for free text."""
    kind = response_format.type
    if kind == t.ResponseFormatType.JSON_SCHEMA:
        if not response_format.json_schema:
            raise InvalidArgument("response_format.json_schema is required for type json_schema")
        schema = _json_schema("response_format.json_schema", response_format.json_schema)
        if response_format.strict and schema.get("type") == "object" and "additionalProperties" not in schema:
            # OpenAI's strict mode: no property the schema does not name.
            schema = {**schema, "additionalProperties": False}
        return {"json": schema}
    if response_format.json_schema:
        raise InvalidArgument(f"response_format.json_schema is only for type json_schema; got {kind.value}")
    if kind == t.ResponseFormatType.JSON_OBJECT:
        return {"json_object": True}
    return None


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
