"""Tool calling for the LLM model, free of Triton and torch: the request's `tools`, `tool_choice` and
chat `messages` (with assistant `tool_calls` and `tool` messages) checked, the tools rendered into
the prompt, and the model's tool-call blocks parsed out of its text as it streams.

Shapes are OpenAI's Chat Completions ones:
- a tool: `{"type": "function", "function": {"name", "description"?, "parameters"?}}`;
- tool_choice: `"auto"`, `"none"`, `"required"` or `{"type": "function", "function": {"name"}}`;
- an assistant message's `tool_calls`: `[{"id", "type": "function", "function": {"name",
  "arguments": "<JSON text>"}}]`, a `tool` message: `{"role": "tool", "tool_call_id", "content"}`;
- streamed deltas: `{"index", "id"?, "type"?, "function": {"name"?, "arguments"?}}`.

The model's own format is the Hermes / Qwen one (what Qwen2.5, Qwen3, Hermes and SmolLM3 chat
templates render and their models emit), which `constrained.tool_call_grammar` enforces:

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

A chat template that takes `tools` renders them itself; for one that does not (SmolLM2's), the
tools go into the system message in that format's words, and earlier calls and results into text.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from model_runtime.text_generation import InvalidRequest

TOOL_CHOICES = ("auto", "none", "required")
CHAT_ROLES = ("system", "user", "assistant", "tool")
# OpenAI's rule for function names; it also keeps a name safe inside the grammar's literal text.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_TOOLS = 128
# A call's head (`{"name": "...", "arguments": `) longer than this is not one.
MAX_HEAD_CHARS = 256

OPEN_TAG = "<tool_call>"
CLOSE_TAG = "</tool_call>"
# Between the tags: the call object's head, up to where its arguments begin.
_HEAD = re.compile(r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"arguments"\s*:\s*')
_TAIL = re.compile(r"\s*\}\s*" + re.escape(CLOSE_TAG))

SYSTEM_PROMPT = (
    "You are a function calling AI model. You are provided with function signatures within <tools></tools> "
    "XML tags. You may call one or more functions to assist with the user query. Don't make assumptions "
    "about what values to plug into functions. Here are the available tools: <tools>\n{tools}\n</tools>\n"
    "For each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags as follows:\n"
    '<tool_call>\n{{"name": <function-name>, "arguments": <args-json-object>}}\n</tool_call>'
)


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]

    def openai(self) -> dict[str, Any]:
        function: dict[str, Any] = {"name": self.name}
        if self.description:
            function["description"] = self.description
        function["parameters"] = self.parameters
        return {"type": "function", "function": function}


@dataclass(frozen=True)
class ToolChoice:
    mode: str  # "auto", "none", "required" or "function" (then `name` is the one to call)
    name: str = ""


@dataclass(frozen=True)
class ToolCallDelta:
    """One piece of a streamed tool call: the first carries id and name, the rest argument text."""

    index: int
    arguments: str = ""
    id: str = ""
    name: str = ""

    def openai(self) -> dict[str, Any]:
        out: dict[str, Any] = {"index": self.index}
        function: dict[str, str] = {}
        if self.id:
            out["id"] = self.id
            out["type"] = "function"
        if self.name:
            function["name"] = self.name
        if self.arguments or self.name:
            function["arguments"] = self.arguments
        out["function"] = function
        return out


def _json(text: str | None, what: str) -> Any:
    try:
        return json.loads(text) if text is not None else None
    except json.JSONDecodeError as err:
        raise InvalidRequest(f"{what} is not valid JSON: {err}") from None


def parse_tools(text: str | None) -> list[Tool]:
    """The `tools` input: a JSON list of OpenAI function tools (absent or empty: none)."""
    raw = _json(text, "tools")
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise InvalidRequest("tools must be a JSON list of tools")
    if len(raw) > MAX_TOOLS:
        raise InvalidRequest(f"at most {MAX_TOOLS} tools, got {len(raw)}")
    tools: list[Tool] = []
    for i, item in enumerate(raw):
        where = f"tools[{i}]"
        if not isinstance(item, dict) or item.get("type", "function") != "function":
            raise InvalidRequest(f'{where} must be an object with "type": "function"')
        function = item.get("function")
        if not isinstance(function, dict):
            raise InvalidRequest(f"{where}.function must be an object with a name")
        name = function.get("name")
        if not isinstance(name, str) or not NAME_PATTERN.match(name):
            raise InvalidRequest(f"{where}.function.name must be 1-64 letters, digits, _ or -; got {name!r}")
        if any(t.name == name for t in tools):
            raise InvalidRequest(f"{where}.function.name {name!r} is given twice")
        description = function.get("description", "")
        if not isinstance(description, str):
            raise InvalidRequest(f"{where}.function.description must be a string")
        # OpenAI: omitted parameters mean a function that takes none.
        parameters = function.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(parameters, dict):
            raise InvalidRequest(f"{where}.function.parameters must be a JSON schema object")
        tools.append(Tool(name, description, parameters))
    return tools


def parse_tool_choice(text: str | None, tools: list[Tool]) -> ToolChoice:
    """The `tool_choice` input (JSON): absent means "auto" with tools and "none" without."""
    raw = _json(text, "tool_choice")
    if raw is None:
        return ToolChoice("auto" if tools else "none")
    if isinstance(raw, str):
        if raw not in TOOL_CHOICES:
            raise InvalidRequest(f"tool_choice must be one of {list(TOOL_CHOICES)} or a named function; got {raw!r}")
        choice = ToolChoice(raw)
    else:
        function = raw.get("function") if isinstance(raw, dict) else None
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(raw, dict) or raw.get("type") != "function" or not isinstance(name, str):
            raise InvalidRequest('tool_choice must be a string or {"type": "function", "function": {"name": ...}}')
        if name not in {t.name for t in tools}:
            raise InvalidRequest(
                f"tool_choice.function.name {name!r} is not among the tools: {sorted(t.name for t in tools)}"
            )
        choice = ToolChoice("function", name)
    if choice.mode in ("required", "function") and not tools:
        raise InvalidRequest(f"tool_choice {choice.mode!r} needs tools")
    return choice


def parse_chat_messages(text: str) -> list[dict[str, Any]]:
    """The `messages` input: a non-empty list of {role, content}, where an assistant message may
    carry `tool_calls` (content then optional) and a `tool` message answers one of them by
    `tool_call_id`. Returns the messages normalised (content always a string)."""
    messages = _json(text, "messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("messages must be a non-empty JSON list")
    called: set[str] = set()
    out: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise InvalidRequest(f"{where} must be an object with role and content")
        role, content = message.get("role"), message.get("content")
        if role not in CHAT_ROLES:
            raise InvalidRequest(f"{where}.role must be one of {list(CHAT_ROLES)}, got {role!r}")
        calls = _tool_calls(message.get("tool_calls"), where) if role == "assistant" else []
        if "tool_calls" in message and role != "assistant":
            raise InvalidRequest(f"{where}.tool_calls is only allowed on assistant messages")
        if content is None and calls:
            content = ""
        if not isinstance(content, str):
            raise InvalidRequest(f"{where}.content must be a string")
        entry: dict[str, Any] = {"role": role, "content": content}
        if calls:
            entry["tool_calls"] = calls
            called.update(call["id"] for call in calls)
        if role == "tool":
            call_id = message.get("tool_call_id")
            if not isinstance(call_id, str) or not call_id:
                raise InvalidRequest(f"{where}.tool_call_id must be the id of an earlier assistant tool call")
            if call_id not in called:
                raise InvalidRequest(f"{where}.tool_call_id {call_id!r} matches no earlier assistant tool call")
            entry["tool_call_id"] = call_id
        out.append(entry)
    return out


def _tool_calls(raw: Any, where: str) -> list[dict[str, Any]]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise InvalidRequest(f"{where}.tool_calls must be a list")
    calls = []
    for j, call in enumerate(raw):
        at = f"{where}.tool_calls[{j}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(call, dict) or not isinstance(function, dict):
            raise InvalidRequest(f"{at} must be an object with id and function")
        call_id, name, arguments = call.get("id"), function.get("name"), function.get("arguments", "{}")
        if not isinstance(call_id, str) or not call_id:
            raise InvalidRequest(f"{at}.id must be a non-empty string")
        if not isinstance(name, str) or not name:
            raise InvalidRequest(f"{at}.function.name must be a non-empty string")
        if not isinstance(arguments, str):
            raise InvalidRequest(f"{at}.function.arguments must be a string of JSON")
        try:
            parsed = json.loads(arguments)
        except json.JSONDecodeError as err:
            raise InvalidRequest(f"{at}.function.arguments is not valid JSON: {err}") from None
        calls.append({"id": call_id, "type": "function", "function": {"name": name, "arguments": parsed}})
    return calls


def template_takes_tools(tokenizer: Any) -> bool:
    """Whether the tokenizer's chat template renders a `tools` argument itself."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):
        template = template.get("tool_use") or template.get("default")
    return isinstance(template, str) and "tools" in template


def chat_prompt_ids(tokenizer: Any, messages: list[dict[str, Any]], tools: list[Tool]) -> list[int]:
    """The chat template rendered and tokenized, with the tools and any earlier calls in it."""
    if template_takes_tools(tokenizer):
        encoded = tokenizer.apply_chat_template(
            messages, tools=[t.openai() for t in tools] or None, add_generation_prompt=True, return_dict=True
        )
    else:
        encoded = tokenizer.apply_chat_template(
            _as_plain_messages(messages, tools), add_generation_prompt=True, return_dict=True
        )
    return list(encoded["input_ids"])


def _as_plain_messages(messages: list[dict[str, Any]], tools: list[Tool]) -> list[dict[str, str]]:
    """For a template without tool support: the tools in the system message, calls and results as
    text in the format the model is asked for (results as user turns, as Qwen2.5's template does)."""
    plain: list[dict[str, str]] = []
    for message in messages:
        content = message["content"]
        if message.get("tool_calls"):
            blocks = [
                f"{OPEN_TAG}\n{json.dumps({'name': c['function']['name'], 'arguments': c['function']['arguments']})}"
                f"\n{CLOSE_TAG}"
                for c in message["tool_calls"]
            ]
            content = "\n".join(([content] if content else []) + blocks)
        if message["role"] == "tool":
            plain.append({"role": "user", "content": f"<tool_response>\n{content}\n</tool_response>"})
        else:
            plain.append({"role": message["role"], "content": content})
    if tools:
        listing = "\n".join(json.dumps(t.openai()) for t in tools)
        prompt = SYSTEM_PROMPT.format(tools=listing)
        if plain and plain[0]["role"] == "system":
            plain[0] = {"role": "system", "content": plain[0]["content"] + "\n\n" + prompt}
        else:
            plain.insert(0, {"role": "system", "content": prompt})
    return plain


@dataclass
class ToolCallParser:
    """Splits a model's streamed text into content and tool-call deltas. `push` takes each new
    piece of text and returns (content to stream, deltas); `finish` releases what was held back.
    Text that could still become `<tool_call>` is held back; a block that turns out not to be a
    call (possible only without a grammar) goes out as content."""

    calls: int = 0  # complete calls parsed
    _state: str = "text"  # text | head | arguments | tail
    _buffer: str = ""
    _block: str = ""  # the raw text of the open block, for the not-a-call case
    _depth: int = 0
    _in_string: bool = False
    _escaped: bool = False
    _started: bool = False
    _after_call: bool = False  # whitespace right after a call is the calls' separator, not content
    _ids: list[str] = field(default_factory=list)

    def push(self, text: str) -> tuple[str, list[ToolCallDelta]]:
        self._buffer += text
        content: list[str] = []
        deltas: list[ToolCallDelta] = []
        while self._buffer:
            if self._state == "text":
                if self._after_call:
                    self._buffer = self._buffer.lstrip()
                    if not self._buffer:
                        break
                    self._after_call = False
                at = self._buffer.find(OPEN_TAG)
                if at < 0:
                    hold = _partial_suffix(self._buffer, OPEN_TAG)
                    content.append(self._buffer[: len(self._buffer) - hold])
                    self._buffer = self._buffer[len(self._buffer) - hold :]
                    break
                content.append(self._buffer[:at])
                self._buffer = self._buffer[at + len(OPEN_TAG) :]
                self._block, self._state = OPEN_TAG, "head"
            elif self._state == "head":
                match = _HEAD.match(self._buffer)
                if match is None:
                    if CLOSE_TAG in self._buffer or not _could_become_head(self._buffer):
                        content.append(self._not_a_call())
                        continue
                    break
                index = len(self._ids)
                self._ids.append(f"call_{uuid.uuid4().hex[:24]}")
                deltas.append(ToolCallDelta(index, id=self._ids[-1], name=json.loads(f'"{match.group(1)}"')))
                self._block += self._buffer[: match.end()]
                self._buffer = self._buffer[match.end() :]
                self._state, self._depth, self._in_string, self._escaped, self._started = (
                    "arguments",
                    0,
                    False,
                    False,
                    False,
                )
            elif self._state == "arguments":
                if not self._started:
                    self._buffer = self._buffer.lstrip()  # the arguments are the JSON value alone
                    if not self._buffer:
                        break
                end = self._scan_arguments()
                piece, self._buffer = self._buffer[:end], self._buffer[end:]
                self._block += piece
                if piece:
                    deltas.append(ToolCallDelta(len(self._ids) - 1, arguments=piece))
                if self._started and self._depth == 0:
                    self._state = "tail"
                else:
                    break
            else:  # tail: `}` and the closing tag
                match = _TAIL.match(self._buffer)
                if match is None:
                    break
                self._buffer = self._buffer[match.end() :]
                self.calls += 1
                self._state, self._after_call = "text", True
        return "".join(content), deltas

    def finish(self) -> tuple[str, list[ToolCallDelta]]:
        """At the end of generation: held-back text (an unfinished call stays as far as it got)."""
        rest = self._buffer if self._state == "text" else ""
        if self._state == "head":
            rest = self._not_a_call()
        self._buffer = ""
        return rest, []

    def _not_a_call(self) -> str:
        text, self._block = self._block + self._buffer, ""
        self._buffer, self._state = "", "text"
        return text

    def _scan_arguments(self) -> int:
        """How much of the buffer belongs to the arguments' JSON value (strings and nesting aware)."""
        for i, char in enumerate(self._buffer):
            if self._started and self._depth == 0:
                return i
            if self._in_string:
                if self._escaped:
                    self._escaped = False
                elif char == "\\":
                    self._escaped = True
                elif char == '"':
                    self._in_string = False
            elif char == '"':
                self._in_string = True
            elif char in "{[":
                self._depth += 1
                self._started = True
            elif char in "}]":
                self._depth -= 1
        return len(self._buffer)


def _partial_suffix(text: str, tag: str) -> int:
    """The length of the longest end of `text` that is a start of `tag`."""
    for k in range(min(len(text), len(tag) - 1), 0, -1):
        if tag.startswith(text[-k:]):
            return k
    return 0


def _could_become_head(text: str) -> bool:
    """Whether more text could still make `text` a call's head: it is a start of `{"name": "` or
    goes on from one (the name and `"arguments":` still to come, within a bounded length)."""
    compact = re.sub(r"\s+", "", text)
    probe = '{"name":"'
    if len(compact) <= len(probe):
        return probe.startswith(compact)
    return compact.startswith(probe) and len(text) <= MAX_HEAD_CHARS


def merge_tool_call_deltas(deltas: list[ToolCallDelta]) -> list[ToolCallDelta]:
    """Deltas joined per call (consecutive fragments of one call become one): a response that
    carries several steps' worth, or the whole calls for a non-streamed reply."""
    merged: list[ToolCallDelta] = []
    for delta in deltas:
        last = merged[-1] if merged else None
        if last is not None and last.index == delta.index and not delta.id:
            merged[-1] = ToolCallDelta(last.index, last.arguments + delta.arguments, last.id, last.name)
        else:
            merged.append(delta)
    return merged


def tool_calls_json(deltas: list[ToolCallDelta]) -> str:
    """The `tool_calls` output: a JSON list of OpenAI delta objects."""
    return json.dumps([d.openai() for d in merge_tool_call_deltas(deltas)])
