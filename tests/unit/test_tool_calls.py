"""Tool calling without a model: the request's tools, tool_choice and messages checked (errors name
the field), tools rendered into a template that has no tools support, and the streaming parser that
splits a model's text into content and tool-call deltas however the text is cut."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from transformers import AutoTokenizer

from model_runtime.text_generation import InvalidRequest
from model_runtime.tool_calls import (
    ToolCallDelta,
    ToolCallParser,
    chat_prompt_ids,
    merge_tool_call_deltas,
    parse_chat_messages,
    parse_tool_choice,
    parse_tools,
    template_takes_tools,
)
from tests.harness import CHAT_LLM

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
TIME = {"type": "function", "function": {"name": "get_time"}}


def block(name: str, arguments: dict[str, Any]) -> str:
    return f"<tool_call>\n{json.dumps({'name': name, 'arguments': arguments})}\n</tool_call>"


def parse_in_pieces(text: str, cuts: list[int]) -> tuple[str, list[ToolCallDelta], ToolCallParser]:
    parser = ToolCallParser()
    content, deltas = "", []
    for start, end in zip([0, *cuts], [*cuts, len(text)], strict=True):
        piece, found = parser.push(text[start:end])
        content += piece
        deltas += found
    rest, found = parser.finish()
    return content + rest, deltas + found, parser


def calls_of(deltas: list[ToolCallDelta]) -> list[tuple[str, Any]]:
    return [(d.name, json.loads(d.arguments)) for d in merge_tool_call_deltas(deltas)]


TEXTS = [
    block("get_weather", {"city": "Paris"}),
    "Let me check. " + block("get_weather", {"city": 'Lyon, "old town" {x}'}) + "\n" + block("get_time", {}),
    "No tools here, just a < sign and <tool and </tool_call> text.",
    block("get_weather", {"city": "Oslo", "days": [1, 2, {"deep": ["]}"]}]}) + " Done.",
]


@pytest.mark.parametrize("text", TEXTS)
def test_the_parser_gives_the_same_content_and_calls_however_the_text_is_cut(text: str) -> None:
    whole_content, whole_deltas, parser = parse_in_pieces(text, [])
    rng = random.Random(7)
    for _ in range(30):
        cuts = sorted(rng.sample(range(1, len(text)), k=min(len(text) - 1, rng.randint(1, 40))))
        content, deltas, _ = parse_in_pieces(text, cuts)
        assert content == whole_content
        assert calls_of(deltas) == calls_of(whole_deltas)
    by_char, deltas, _ = parse_in_pieces(text, list(range(1, len(text))))
    assert by_char == whole_content and calls_of(deltas) == calls_of(whole_deltas)


def test_the_parser_splits_text_and_calls_and_numbers_them() -> None:
    content, deltas, parser = parse_in_pieces(TEXTS[1], [5, 20, 41, 60])
    assert content == "Let me check. "  # the newline between the calls is not content
    assert calls_of(deltas) == [("get_weather", {"city": 'Lyon, "old town" {x}'}), ("get_time", {})]
    assert parser.calls == 2
    firsts = [d for d in deltas if d.id]
    assert [d.index for d in firsts] == [0, 1] and len({d.id for d in firsts}) == 2
    assert all(d.id.startswith("call_") for d in firsts)
    # Argument fragments carry no id or name: a client appends them to the call with that index.
    assert all(not d.name for d in deltas if not d.id)


def test_text_that_only_looks_like_a_call_is_content() -> None:
    content, deltas, parser = parse_in_pieces("<tool_call>not json</tool_call> after", [3, 12])
    assert content == "<tool_call>not json</tool_call> after" and deltas == [] and parser.calls == 0


def test_an_unfinished_call_stays_as_far_as_it_got() -> None:
    text = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Pa'
    content, deltas, parser = parse_in_pieces(text, [15, 30])
    assert content == "" and parser.calls == 0
    merged = merge_tool_call_deltas(deltas)
    assert [(d.name, d.arguments) for d in merged] == [("get_weather", '{"city": "Pa')]


def test_openai_delta_shapes() -> None:
    first = ToolCallDelta(0, id="call_1", name="f").openai()
    assert first == {"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": ""}}
    assert ToolCallDelta(0, arguments='{"a"').openai() == {"index": 0, "function": {"arguments": '{"a"'}}


@pytest.mark.parametrize(
    ("tools", "field"),
    [
        ("{}", "tools must be a JSON list"),
        ("[1]", "tools[0] must be an object"),
        ('[{"type": "function", "function": {"name": "bad name"}}]', "tools[0].function.name"),
        (json.dumps([WEATHER, WEATHER]), "tools[1].function.name 'get_weather' is given twice"),
        ('[{"type": "function", "function": {"name": "f", "parameters": []}}]', "tools[0].function.parameters"),
        ("[", "tools is not valid JSON"),
    ],
)
def test_bad_tools_are_refused_naming_the_field(tools: str, field: str) -> None:
    with pytest.raises(InvalidRequest, match=field.replace("[", r"\[").replace("]", r"\]")):
        parse_tools(tools)


def test_tool_choice() -> None:
    tools = parse_tools(json.dumps([WEATHER, TIME]))
    assert parse_tool_choice(None, tools).mode == "auto"
    assert parse_tool_choice(None, []).mode == "none"
    named = parse_tool_choice('{"type": "function", "function": {"name": "get_time"}}', tools)
    assert (named.mode, named.name) == ("function", "get_time")
    with pytest.raises(InvalidRequest, match=r"tool_choice.function.name 'nope' is not among the tools"):
        parse_tool_choice('{"type": "function", "function": {"name": "nope"}}', tools)
    with pytest.raises(InvalidRequest, match="tool_choice must be one of"):
        parse_tool_choice('"sometimes"', tools)
    with pytest.raises(InvalidRequest, match="tool_choice 'required' needs tools"):
        parse_tool_choice('"required"', [])


CALL = {"id": "call_9", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}


def test_messages_with_a_call_and_its_result() -> None:
    messages = parse_chat_messages(
        json.dumps(
            [
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": None, "tool_calls": [CALL]},
                {"role": "tool", "tool_call_id": "call_9", "content": "18 C, sunny"},
            ]
        )
    )
    assert messages[1] == {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {"id": "call_9", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
        ],
    }
    assert messages[2] == {"role": "tool", "content": "18 C, sunny", "tool_call_id": "call_9"}


@pytest.mark.parametrize(
    ("messages", "field"),
    [
        (
            [{"role": "tool", "tool_call_id": "call_1", "content": "x"}],
            r"messages\[0\].tool_call_id 'call_1' matches no",
        ),
        ([{"role": "tool", "content": "x"}], r"messages\[0\].tool_call_id must be"),
        (
            [
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [{**CALL, "function": {"name": "f", "arguments": "{"}}],
                }
            ],
            r"messages\[0\].tool_calls\[0\].function.arguments is not valid JSON",
        ),
        ([{"role": "user", "content": "x", "tool_calls": [CALL]}], r"messages\[0\].tool_calls is only allowed"),
        ([{"role": "robot", "content": "x"}], r"messages\[0\].role must be one of"),
        ([{"role": "user", "content": None}], r"messages\[0\].content must be a string"),
    ],
)
def test_bad_messages_are_refused_naming_the_field(messages: list[dict[str, Any]], field: str) -> None:
    with pytest.raises(InvalidRequest, match=field):
        parse_chat_messages(json.dumps(messages))


def test_tools_go_into_the_system_message_of_a_template_without_tools_support(small_models: None) -> None:
    tokenizer = AutoTokenizer.from_pretrained(CHAT_LLM)
    assert not template_takes_tools(tokenizer)  # SmolLM2's ChatML template ignores `tools`
    messages = parse_chat_messages(
        json.dumps(
            [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": None, "tool_calls": [CALL]},
                {"role": "tool", "tool_call_id": "call_9", "content": "18 C, sunny"},
            ]
        )
    )
    prompt = tokenizer.decode(chat_prompt_ids(tokenizer, messages, parse_tools(json.dumps([WEATHER]))))
    assert prompt.startswith("<|im_start|>system\nBe brief.\n\nYou are a function calling AI model.")
    assert '"name": "get_weather", "description": "The weather in a city"' in prompt
    assert (
        '<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
        in prompt
    )
    assert "<|im_start|>user\n<tool_response>\n18 C, sunny\n</tool_response><|im_end|>" in prompt
    assert prompt.endswith("<|im_start|>assistant\n")
    plain = tokenizer.decode(chat_prompt_ids(tokenizer, messages[:2], []))
    assert "function calling" not in plain
