"""Constrained decoding for the LLM model, with xgrammar: a request's grammar masks its row of the
logits at every step, so its output can only be text the grammar accepts (a JSON schema, any JSON
object, a regex, one of a list of choices, or tool calls in the model's format), while free and
constrained requests share one batch.

- `Grammars` (one per model instance) holds the tokenizer's vocabulary as xgrammar sees it and a
  compiler with a cache: a schema is compiled once (tens of ms) and reused by every later request
  that sends the same one. Compiling happens where the request is parsed (the model's tokenizing
  threads), never on the engine's step loop.
- `Constraint` is one request's compiled grammar; the engine makes it a `GrammarMatcher` (the
  request's state in the grammar) when the request is submitted.
- `LogitsMasker` (the engine's) fills one bitmask for all the constrained rows of a step in one
  batched call (xgrammar's threads) and applies it to their logits rows in one more.

The model's stop tokens (EOS) are part of the grammar: they are allowed only where the grammar may
end, and once it has ended nothing else is, so a finished grammar ends the request with "stop".

The request's shape follows vLLM's `guided_decoding` in `sampling_parameters`:
`{"json": <schema object or its JSON text>}`, `{"json_object": true}`, `{"regex": "..."}`,
`{"choice": ["a", "b"]}` (exactly one of them); tools come beside `messages` (tool_calls.py).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import xgrammar as xgr
from xgrammar.structural_tag import (
    JSONSchemaFormat,
    StructuralTag,
    TagFormat,
    TagsWithSeparatorFormat,
    TriggeredTagsFormat,
)

from model_runtime.text_generation import InvalidRequest
from model_runtime.tool_calls import (
    CLOSE_TAG,
    OPEN_TAG,
    Tool,
    ToolChoice,
    chat_prompt_ids,
    parse_chat_messages,
    parse_tool_choice,
    parse_tools,
)

GUIDED_KINDS = ("json", "json_object", "regex", "choice")
MAX_CHOICES = 1024
# Compiled grammars kept for reuse (bytes); the least recently used go beyond it.
CACHE_LIMIT_BYTES = 256 * 2**20
# xgrammar's C++ errors start with a timestamp and a source location: not for a client.
_ERROR_PREFIX = re.compile(r"^\[[^\]]*\]\s*\S+:\d+:\s*(Check failed: \(.*?\) is false:\s*)?")


class Utf8Guard:
    """Which tokens keep a row's bytes valid UTF-8, by where the row is inside a character.

    xgrammar's regex path (patterns, and the length bounds mapped to them) decodes UTF-8 leniently:
    it takes an overlong sequence such as E0 94 89 for one character, which the detokenizer turns
    into three U+FFFD, so a string could outgrow its maxLength. Masking the tokens that would make
    the bytes invalid UTF-8 closes that (a trained model hardly emits them; random weights do).
    States: 0 at a character boundary, 1-3 continuation bytes still due, 4-7 the restricted second
    byte after E0, ED, F0 and F4 (RFC 3629)."""

    def __init__(self, vocabulary: list[bytes], stop_token_ids: set[int]) -> None:
        states = 8
        self.allowed = torch.zeros((states, len(vocabulary)), dtype=torch.bool)
        self.next_state = torch.zeros((states, len(vocabulary)), dtype=torch.uint8)
        for token, data in enumerate(vocabulary):
            if token in stop_token_ids or data.isascii():
                self.allowed[0, token] = True  # the common case, and stop tokens end at a boundary
                continue
            for state in range(states):
                end = _utf8_run(state, data)
                if end is not None:
                    self.allowed[state, token] = True
                    self.next_state[state, token] = end
        # The same, packed as xgrammar's bitmasks (bit j of word i: token 32 i + j), to AND into them.
        words = (len(vocabulary) + 31) // 32
        padded = torch.zeros((states, words * 32), dtype=torch.int64)
        padded[:, : len(vocabulary)] = self.allowed.to(torch.int64)
        packed = (padded.view(states, words, 32) << torch.arange(32)).sum(dim=-1)
        self.bits = torch.where(packed >= 2**31, packed - 2**32, packed).to(torch.int32)
        # Plain bytes for the per-token lookup on the step loop (indexing a tensor costs microseconds).
        self.next_states = [bytes(row.tolist()) for row in self.next_state]


def _utf8_run(state: int, data: bytes) -> int | None:
    """The UTF-8 state after `data` from `state`, or None where the bytes are not valid UTF-8."""
    for byte in data:
        if state == 0:
            if byte < 0x80:
                continue
            lead = _UTF8_LEADS.get(byte)
            if lead is None:
                return None
            state = lead
        else:
            low, high, after = _UTF8_CONTINUATIONS[state]
            if not low <= byte <= high:
                return None
            state = after
    return state


# Lead byte -> state; state -> (lowest, highest continuation byte allowed, state after it).
_UTF8_LEADS = {
    **dict.fromkeys(range(0xC2, 0xE0), 1),
    0xE0: 4,
    **dict.fromkeys([*range(0xE1, 0xED), 0xEE, 0xEF], 2),
    0xED: 5,
    0xF0: 6,
    **dict.fromkeys(range(0xF1, 0xF4), 3),
    0xF4: 7,
}
_UTF8_CONTINUATIONS = {
    1: (0x80, 0xBF, 0),
    2: (0x80, 0xBF, 1),
    3: (0x80, 0xBF, 2),
    4: (0xA0, 0xBF, 1),
    5: (0x80, 0x9F, 1),
    6: (0x90, 0xBF, 2),
    7: (0x80, 0x8F, 2),
}


@dataclass(frozen=True)
class Constraint:
    """One request's grammar; `tool_calls`: its text carries tool-call blocks to parse out."""

    grammar: xgr.CompiledGrammar
    kind: str  # "json", "json_object", "regex", "choice" or "tools"
    utf8: Utf8Guard
    tool_calls: bool = False

    def matcher(self) -> xgr.GrammarMatcher:
        return xgr.GrammarMatcher(self.grammar)

    def start(self) -> GrammarState:
        """A request's own state in this grammar, from its first token."""
        return GrammarState(self.matcher(), self.utf8)


@dataclass
class GrammarState:
    """Where one request is: in its grammar, and inside a UTF-8 character."""

    matcher: xgr.GrammarMatcher
    utf8: Utf8Guard
    utf8_state: int = 0

    def accept(self, token: int) -> bool:
        """Advances past `token`; False if the grammar refuses it (the mask should have)."""
        if not self.matcher.accept_token(token):
            return False
        self.utf8_state = self.utf8.next_states[self.utf8_state][token]
        return True


@dataclass(frozen=True)
class StructuredRequest:
    """What `Grammars.prepare` made of a request: its sampling parameters less `guided_decoding`
    (for text_generation.parse_sampling_parameters), its constraint, and the tools to render."""

    sampling_parameters: str | None
    constraint: Constraint | None
    tools: list[Tool]
    tool_choice: ToolChoice

    def chat_prompt_ids(self, tokenizer: Any, messages_json: str) -> list[int]:
        """The `messages` input checked (tool calls and tool results included) and rendered with
        the chat template, this request's tools in it."""
        return chat_prompt_ids(tokenizer, parse_chat_messages(messages_json), self.tools)


class Grammars:
    """A model's grammar compiler: its vocabulary, stop tokens and a cache of compiled grammars."""

    def __init__(self, tokenizer: Any, vocab_size: int, stop_token_ids: set[int]) -> None:
        self.info = xgr.TokenizerInfo.from_huggingface(
            tokenizer, vocab_size=vocab_size, stop_token_ids=sorted(stop_token_ids)
        )
        self.compiler = xgr.GrammarCompiler(
            self.info, max_threads=_threads(), cache_enabled=True, cache_limit_bytes=CACHE_LIMIT_BYTES
        )
        vocabulary = list(self.info.decoded_vocab) + [b""] * (vocab_size - len(self.info.decoded_vocab))
        self.utf8 = Utf8Guard(vocabulary[:vocab_size], stop_token_ids)

    def prepare(
        self,
        sampling_json: str | None,
        tools_json: str | None,
        tool_choice_json: str | None,
        chat: bool,
        parallel: bool = True,
    ) -> StructuredRequest:
        """Parses and compiles a request's constraints (InvalidRequest naming the field): the
        `guided_decoding` entry of `sampling_parameters`, the `tools` and `tool_choice` inputs, and
        `parallel_tool_calls` (False: at most one call)."""
        rest, guided = _split_guided_decoding(sampling_json)
        tools = parse_tools(tools_json)
        if tools and not chat:
            raise InvalidRequest("tools need messages (a chat), not text_input")
        choice = parse_tool_choice(tool_choice_json, tools)
        constraint = None
        if guided is not None:
            if choice.mode != "none":
                raise InvalidRequest(
                    "sampling_parameters.guided_decoding cannot be combined with tools unless tool_choice is none"
                )
            constraint = self.guided(guided)
        elif choice.mode != "none":
            constraint = Constraint(self.tool_calls(tools, choice, parallel), "tools", self.utf8, tool_calls=True)
        # tool_choice none: the model is not shown the tools at all, so it cannot call them.
        return StructuredRequest(rest, constraint, tools if choice.mode != "none" else [], choice)

    def guided(self, guided: Any) -> Constraint:
        """A `guided_decoding` object compiled (exactly one of GUIDED_KINDS)."""
        where = "sampling_parameters.guided_decoding"
        if not isinstance(guided, dict):
            raise InvalidRequest(f"{where} must be an object with one of {list(GUIDED_KINDS)}")
        unknown = sorted(set(guided) - set(GUIDED_KINDS))
        if unknown:
            raise InvalidRequest(f"{where} has unknown key(s) {unknown}; known: {list(GUIDED_KINDS)}")
        given = [k for k in GUIDED_KINDS if guided.get(k) not in (None, False)]
        if len(given) != 1:
            raise InvalidRequest(f"{where} must set exactly one of {list(GUIDED_KINDS)}; got {given or 'none'}")
        kind = given[0]
        value = guided[kind]
        where = f"{where}.{kind}"
        if kind == "json":
            return Constraint(self.json_schema(_schema(value, where), where), kind, self.utf8)
        if kind == "json_object":
            if value is not True:
                raise InvalidRequest(f"{where} must be true")
            # strict_mode off: any properties (in strict mode a bare object schema allows only {}).
            grammar = self._compile(
                where, self.compiler.compile_json_schema, '{"type": "object"}', any_whitespace=False, strict_mode=False
            )
            return Constraint(grammar, kind, self.utf8)
        if kind == "regex":
            if not isinstance(value, str) or not value:
                raise InvalidRequest(f"{where} must be a non-empty string")
            return Constraint(self._compile(where, self.compiler.compile_regex, value), kind, self.utf8)
        if not isinstance(value, list) or not value or not all(isinstance(c, str) and c for c in value):
            raise InvalidRequest(f"{where} must be a non-empty list of non-empty strings")
        if len(value) > MAX_CHOICES:
            raise InvalidRequest(f"{where} takes at most {MAX_CHOICES} choices, got {len(value)}")
        pattern = "|".join(f"({re.escape(c)})" for c in value)
        return Constraint(self._compile(where, self.compiler.compile_regex, pattern), kind, self.utf8)

    def json_schema(self, schema: dict[str, Any], where: str) -> xgr.CompiledGrammar:
        """A JSON schema's grammar: compact JSON (no free whitespace, which a model could repeat
        until max_tokens), no properties beyond the schema's unless it allows them."""
        text = json.dumps(_bounded_strings_as_patterns(schema))  # key order kept: it is the output's
        return self._compile(where, self.compiler.compile_json_schema, text, any_whitespace=False, strict_mode=True)

    def tool_calls(self, tools: list[Tool], choice: ToolChoice, parallel: bool = True) -> xgr.CompiledGrammar:
        """The grammar of tool calls in the Hermes/Qwen `<tool_call>` format (tool_calls.py), each
        call's arguments held to its tool's parameters schema: with "auto" free text in which any
        `<tool_call>` must be a valid call, with "required" one or more calls and nothing else, with
        a named function exactly that one call. Not `parallel`: the reply ends after its first call."""
        selected = [(i, t) for i, t in enumerate(tools) if choice.mode != "function" or t.name == choice.name]
        for i, tool in selected:
            self.json_schema(tool.parameters, f"tools[{i}].function.parameters")  # names a bad schema
        tags = [
            TagFormat(
                begin=f"{OPEN_TAG}\n{{{json.dumps('name')}: {json.dumps(tool.name)}, {json.dumps('arguments')}: ",
                # At most one whitespace character in a row: a weak model cannot pad for ever.
                content=JSONSchemaFormat(
                    json_schema=_bounded_strings_as_patterns(tool.parameters), max_whitespace_cnt=1
                ),
                end=f"}}\n{CLOSE_TAG}",
            )
            for _, tool in selected
        ]
        layout: Any
        if choice.mode == "auto":
            layout = TriggeredTagsFormat(triggers=[OPEN_TAG], tags=tags, stop_after_first=not parallel)
        elif choice.mode == "required":
            layout = TagsWithSeparatorFormat(
                tags=tags, separator="\n", at_least_one=True, stop_after_first=not parallel
            )
        else:
            layout = tags[0]
        return self._compile("tools", self.compiler.compile_structural_tag, StructuralTag(format=layout))

    def _compile(
        self, where: str, compile_with: Callable[..., xgr.CompiledGrammar], *args: Any, **options: Any
    ) -> xgr.CompiledGrammar:
        try:
            return compile_with(*args, **options)
        except (RuntimeError, ValueError) as err:
            raise InvalidRequest(f"{where}: {_error_text(err)}") from None


class LogitsMasker:
    """The engine's masking: one bitmask for a step's constrained rows, filled in one batched call
    and applied to their logits rows in one more."""

    def __init__(self) -> None:
        self._batch = xgr.BatchGrammarMatcher(max_threads=_threads())
        self._bitmask: torch.Tensor | None = None

    def mask(self, logits: torch.Tensor, rows: list[int], states: list[GrammarState]) -> None:
        """Sets to -inf, in place, each listed row's logits of the tokens its grammar forbids and
        of those that would break its UTF-8."""
        rows_total, vocabulary = logits.shape
        if self._bitmask is None or self._bitmask.shape[0] < rows_total or self._bitmask.shape[1] * 32 < vocabulary:
            self._bitmask = xgr.allocate_token_bitmask(max(rows_total, 16), vocabulary)
        bitmask = self._bitmask[:rows_total]
        self._batch.batch_fill_next_token_bitmask([s.matcher for s in states], bitmask, indices=rows)
        guard = states[0].utf8  # one per model: every constraint comes from its Grammars
        index = torch.tensor(rows)
        words = min(guard.bits.shape[1], bitmask.shape[1])
        bitmask[index, :words] &= guard.bits[torch.tensor([s.utf8_state for s in states]), :words]
        with torch.inference_mode():  # the forward's logits are inference tensors
            # On the CPU name the backend: "auto" asks CUDA about stream capture on every call.
            xgr.apply_token_bitmask_inplace(
                logits,
                bitmask.to(logits.device, non_blocking=True),
                indices=rows,
                backend="cpu" if logits.device.type == "cpu" else "auto",
            )


def _split_guided_decoding(text: str | None) -> tuple[str | None, Any]:
    """`sampling_parameters` without its `guided_decoding` entry, and that entry (None if absent)."""
    if not text:
        return text, None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError:
        return text, None  # parse_sampling_parameters reports it
    if not isinstance(raw, dict) or "guided_decoding" not in raw:
        return text, None
    guided = raw.pop("guided_decoding")
    return json.dumps(raw), guided


# Values that are data, not subschemas: left as they are.
_DATA_KEYWORDS = frozenset({"enum", "const", "default", "examples"})


def _bounded_strings_as_patterns(schema: Any) -> Any:
    """The schema with each string's minLength/maxLength (when it has no pattern or format) given
    as a pattern instead. xgrammar 0.2.9 turns a length-bounded string into a character class that
    lets raw control characters through, which is not JSON (mlc-ai/xgrammar#800, fix pending in
    #880); its pattern path escapes correctly. `^.{m,n}$` means the same lengths (it only leaves out
    newlines, and quotes and backslashes, which that path cannot emit escaped)."""
    if isinstance(schema, list):
        return [_bounded_strings_as_patterns(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: v if k in _DATA_KEYWORDS else _bounded_strings_as_patterns(v) for k, v in schema.items()}
    bounded = "minLength" in out or "maxLength" in out
    if out.get("type") == "string" and bounded and "pattern" not in out and "format" not in out:
        low, high = out.pop("minLength", 0), out.pop("maxLength", "")
        if isinstance(low, int) and isinstance(high, int | str):
            out["pattern"] = f"^.{{{low},{high}}}$"
    return out


def _schema(value: Any, where: str) -> dict[str, Any]:
    if isinstance(value, str):  # vLLM takes the schema as an object or as its JSON text
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise InvalidRequest(f"{where} is not valid JSON: {err}") from None
    if not isinstance(value, dict):
        raise InvalidRequest(f"{where} must be a JSON schema object")
    return value


def _error_text(err: Exception) -> str:
    return _ERROR_PREFIX.sub("", str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__)


def _threads() -> int:
    return max(1, min(8, (os.cpu_count() or 2) // 2))
