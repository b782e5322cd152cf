"""Checks of public requests: each bad field is refused as INVALID_ARGUMENT, naming the field."""

from __future__ import annotations

import json
import math
from typing import Any

import grpc
import pytest

from adapter.core import types as t
from adapter.core import validation
from adapter.core.errors import InvalidArgument
from adapter.gen.inference.v1 import inference_pb2 as pb
from adapter.grpc_front import convert
from adapter.grpc_front.status import grpc_code


def options(**fields: Any) -> t.GenerationOptions:
    """Options as a gRPC client sends them (32-bit floats), converted as the front does."""
    return convert.generation_options(pb.GenerationOptions(**fields))


def chat_messages(messages: Any) -> list[dict[str, str]]:
    """validation.chat_messages over the messages of a gRPC request, converted as the front does."""
    return validation.chat_messages(convert.chat_request(pb.ChatStreamRequest(messages=messages)).messages)


# --- model, prompt, messages ----------------------------------------------------------------


def test_model_name_is_returned_when_given() -> None:
    assert validation.require_model("llm") == "llm"


@pytest.mark.parametrize("model", ["", "   ", "\t\n"])
def test_missing_model_is_invalid_argument(model: str) -> None:
    with pytest.raises(InvalidArgument, match="model is required") as raised:
        validation.require_model(model)
    assert grpc_code(raised.value.code) == grpc.StatusCode.INVALID_ARGUMENT


def test_prompt_is_returned_unchanged() -> None:
    assert validation.prompt_text("  Once upon a time ") == "  Once upon a time "


def test_empty_prompt_is_invalid_argument() -> None:
    with pytest.raises(InvalidArgument, match="prompt"):
        validation.prompt_text("")


def test_chat_messages_become_role_content_dicts() -> None:
    messages = [
        pb.ChatMessage(role="system", content="be brief"),
        pb.ChatMessage(role="user", content="hi"),
        pb.ChatMessage(role="assistant", content=""),
    ]
    assert chat_messages(messages) == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": ""},
    ]


def test_chat_messages_of_a_real_request_are_accepted() -> None:
    request = pb.ChatStreamRequest(model="llm", messages=[pb.ChatMessage(role="user", content="hi")])
    assert chat_messages(request.messages) == [{"role": "user", "content": "hi"}]


def test_no_messages_is_invalid_argument() -> None:
    with pytest.raises(InvalidArgument, match="messages must not be empty"):
        chat_messages(pb.ChatStreamRequest(model="llm").messages)


@pytest.mark.parametrize("role", ["USER", "", "function", "developer"])
def test_unknown_role_is_invalid_argument_naming_the_message(role: str) -> None:
    messages = [pb.ChatMessage(role="user", content="hi"), pb.ChatMessage(role=role, content="x")]
    with pytest.raises(InvalidArgument, match=r"messages\[1\]\.role"):
        chat_messages(messages)


def test_messages_that_are_all_blank_are_invalid_argument() -> None:
    messages = [pb.ChatMessage(role="system", content=" "), pb.ChatMessage(role="user", content="\n")]
    with pytest.raises(InvalidArgument, match="messages must contain some text"):
        chat_messages(messages)


def test_one_message_with_text_is_enough() -> None:
    messages = [pb.ChatMessage(role="system", content=""), pb.ChatMessage(role="user", content="hi")]
    assert len(chat_messages(messages)) == 2


# --- sampling options ------------------------------------------------------------------------


def test_unset_options_give_an_empty_sampling_dict() -> None:
    assert validation.sampling_parameters(options(), None) == {}
    assert validation.sampling_parameters(options(), 10) == {}


def test_set_options_become_the_sampling_dict() -> None:
    sampling = validation.sampling_parameters(
        options(
            max_tokens=12,
            temperature=0.5,
            top_p=0.25,
            top_k=40,
            repetition_penalty=1.5,
            frequency_penalty=-1.0,
            presence_penalty=2.0,
            seed=2**64 - 1,
            stop=["\n", "END"],
        ),
        64,
    )
    assert sampling == {
        "max_tokens": 12,
        "temperature": 0.5,
        "top_p": 0.25,
        "top_k": 40,
        "repetition_penalty": 1.5,
        "frequency_penalty": -1.0,
        "presence_penalty": 2.0,
        "seed": 2**64 - 1,
        "stop": ["\n", "END"],
    }


def test_only_set_options_are_passed_on() -> None:
    assert validation.sampling_parameters(options(top_k=5, seed=9), None) == {"top_k": 5, "seed": 9}


def test_options_explicitly_set_to_zero_are_passed_on() -> None:
    # proto3 `optional`: a set zero (greedy, no top-k, seed 0) differs from unset.
    sampling = validation.sampling_parameters(
        options(temperature=0.0, top_k=0, seed=0, frequency_penalty=0.0, presence_penalty=0.0), None
    )
    assert sampling == {"temperature": 0.0, "top_k": 0, "seed": 0, "frequency_penalty": 0.0, "presence_penalty": 0.0}


def test_stop_list_is_passed_as_a_plain_list() -> None:
    sampling = validation.sampling_parameters(options(stop=["###"]), None)
    assert sampling["stop"] == ["###"]
    assert type(sampling["stop"]) is list


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_tokens", 0),
        ("max_tokens", -5),
        ("temperature", -0.5),
        ("top_p", 0.0),
        ("top_p", 1.5),
        ("top_p", -0.5),
        ("top_k", -1),
        ("repetition_penalty", 0.0),
        ("repetition_penalty", -1.0),
        ("frequency_penalty", 2.5),
        ("frequency_penalty", -2.5),
        ("presence_penalty", 3.0),
        ("presence_penalty", -2.25),
    ],
)
def test_out_of_range_option_is_invalid_argument_naming_the_field(field: str, value: float) -> None:
    with pytest.raises(InvalidArgument, match=f"options.{field}"):
        validation.sampling_parameters(options(**{field: value}), None)


@pytest.mark.parametrize(
    ("field", "value"),
    [("temperature", 0.0), ("top_p", 1.0), ("frequency_penalty", 2.0), ("frequency_penalty", -2.0), ("top_k", 0)],
)
def test_option_at_the_edge_of_its_range_is_accepted(field: str, value: float) -> None:
    assert validation.sampling_parameters(options(**{field: value}), None) == {field: value}


@pytest.mark.parametrize(
    "field", ["temperature", "top_p", "repetition_penalty", "frequency_penalty", "presence_penalty"]
)
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_option_is_invalid_argument_naming_the_field(field: str, value: float) -> None:
    with pytest.raises(InvalidArgument, match=f"options.{field} must be a finite number"):
        validation.sampling_parameters(options(**{field: value}), None)


def test_nan_temperature_is_rejected() -> None:
    with pytest.raises(InvalidArgument, match="options.temperature"):
        validation.sampling_parameters(options(temperature=math.nan), None)


def test_max_tokens_above_the_model_limit_is_invalid_argument() -> None:
    with pytest.raises(InvalidArgument, match="options.max_tokens must be at most 64"):
        validation.sampling_parameters(options(max_tokens=65), 64)


def test_max_tokens_at_the_model_limit_is_accepted() -> None:
    assert validation.sampling_parameters(options(max_tokens=64), 64) == {"max_tokens": 64}


def test_max_tokens_is_not_capped_without_a_limit() -> None:
    assert validation.sampling_parameters(options(max_tokens=2**31 - 1), None) == {"max_tokens": 2**31 - 1}


def test_non_positive_max_tokens_is_refused_even_without_a_limit() -> None:
    with pytest.raises(InvalidArgument, match="options.max_tokens must be > 0"):
        validation.sampling_parameters(options(max_tokens=0), None)


def test_empty_stop_sequence_is_invalid_argument() -> None:
    with pytest.raises(InvalidArgument, match="options.stop"):
        validation.sampling_parameters(options(stop=["ok", ""]), None)


def test_too_many_stop_sequences_are_invalid_argument() -> None:
    allowed = [f"s{i}" for i in range(validation.MAX_STOP_SEQUENCES)]
    assert validation.sampling_parameters(options(stop=allowed), None) == {"stop": allowed}
    with pytest.raises(InvalidArgument, match="options.stop"):
        validation.sampling_parameters(options(stop=[*allowed, "one more"]), None)


def test_options_of_a_real_generate_request_are_checked() -> None:
    request = pb.GenerateStreamRequest(model="llm", prompt="hi", options=pb.GenerationOptions(top_p=2.0))
    with pytest.raises(InvalidArgument, match="options.top_p"):
        validation.sampling_parameters(convert.generation_options(request.options), None)


class TestEmbeddingInputs:
    def test_valid_inputs_pass_through_in_order(self) -> None:
        assert validation.embedding_inputs(["b", "a"], max_inputs=2, max_total_chars=2) == ["b", "a"]

    @pytest.mark.parametrize(
        ("inputs", "needle"),
        [
            ([], "at least one"),
            (["ok", ""], "inputs[1]"),
            (["\t\n "], "inputs[0]"),
            (["a", "b", "c"], "EMBEDDING_MAX_INPUTS"),
            (["abcd", "ef"], "EMBEDDING_MAX_TOTAL_CHARS"),
        ],
    )
    def test_bad_inputs_name_the_problem(self, inputs: list[str], needle: str) -> None:
        with pytest.raises(InvalidArgument) as caught:
            validation.embedding_inputs(inputs, max_inputs=2, max_total_chars=5)
        assert needle in caught.value.message


def test_a_prompt_past_the_character_limit_is_refused_naming_the_setting() -> None:
    validation.prompt_size(100, 100)
    validation.prompt_size(10**9, 0)  # 0: no limit in the adapter
    with pytest.raises(InvalidArgument, match="LLM_MAX_PROMPT_CHARS"):
        validation.prompt_size(101, 100)


def test_a_whitespace_only_prompt_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="prompt"):
        validation.prompt_text(" \n\t")


@pytest.mark.parametrize(("seconds", "nanos"), [(1, -500_000_000), (-1, 500_000_000)])
def test_a_duration_with_mixed_signs_is_refused(seconds: int, nanos: int) -> None:
    from google.protobuf.duration_pb2 import Duration

    with pytest.raises(InvalidArgument, match="same sign"):
        convert.duration_seconds("keep_alive", Duration(seconds=seconds, nanos=nanos))
    assert convert.duration_seconds("keep_alive", Duration(seconds=0, nanos=-5)) == -5e-9


# --- tools, tool_choice, response_format (issue 20) -------------------------------------------

WEATHER = t.Tool("get_weather", "Weather for a city", '{"type": "object", "properties": {"city": {"type": "string"}}}')


def test_a_tool_message_must_answer_an_earlier_call() -> None:
    call = pb.ToolCall(id="call_1", name="get_weather", arguments='{"city": "Paris"}')
    answered = [
        pb.ChatMessage(role="user", content="weather?"),
        pb.ChatMessage(role="assistant", tool_calls=[call]),
        pb.ChatMessage(role="tool", tool_call_id="call_1", content="sunny"),
    ]
    checked = chat_messages(answered)
    assert checked[1]["tool_calls"] == [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    ]
    assert checked[2] == {"role": "tool", "content": "sunny", "tool_call_id": "call_1"}
    with pytest.raises(InvalidArgument, match=r"messages\[2\]\.tool_call_id 'call_9' answers no tool call"):
        chat_messages([*answered[:2], pb.ChatMessage(role="tool", tool_call_id="call_9", content="x")])
    with pytest.raises(InvalidArgument, match=r"messages\[1\]\.tool_call_id is required"):
        chat_messages([answered[0], pb.ChatMessage(role="tool", content="x")])


def test_tool_call_arguments_must_be_a_json_object() -> None:
    call = pb.ToolCall(id="c", name="f", arguments="[1, 2]")
    with pytest.raises(InvalidArgument, match=r"messages\[0\]\.tool_calls\[0\]\.arguments must be a JSON object"):
        chat_messages([pb.ChatMessage(role="assistant", tool_calls=[call])])


def test_tools_become_openai_function_tools() -> None:
    [tool] = validation.tools([WEATHER])
    assert tool == {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
    assert validation.tools([t.Tool("noop")])[0]["function"]["parameters"] == {"type": "object", "properties": {}}


@pytest.mark.parametrize(
    ("tool", "match"),
    [
        (t.Tool("bad name"), r"tools\[0\]\.name"),
        (t.Tool("f", parameters="{nope"), r"tools\[0\]\.parameters is not valid JSON"),
        (t.Tool("f", parameters='{"type": "objekt"}'), r"tools\[0\]\.parameters is not a valid JSON schema"),
    ],
)
def test_bad_tools_name_the_field(tool: t.Tool, match: str) -> None:
    with pytest.raises(InvalidArgument, match=match):
        validation.tools([tool])


def test_tool_choice_must_name_a_given_tool() -> None:
    named = t.ToolChoice(t.ToolChoiceMode.FUNCTION, "get_weather")
    assert validation.tool_choice(named, [WEATHER]) == {"type": "function", "function": {"name": "get_weather"}}
    assert validation.tool_choice(t.ToolChoice(t.ToolChoiceMode.REQUIRED), [WEATHER]) == "required"
    assert validation.tool_choice(t.ToolChoice(), [WEATHER]) is None
    with pytest.raises(InvalidArgument, match=r"tool_choice.function 'get_time' is not among the tools"):
        validation.tool_choice(t.ToolChoice(t.ToolChoiceMode.FUNCTION, "get_time"), [WEATHER])
    with pytest.raises(InvalidArgument, match="tool_choice 'required' needs tools"):
        validation.tool_choice(t.ToolChoice(t.ToolChoiceMode.REQUIRED), [])


def test_response_format_becomes_guided_decoding() -> None:
    schema = '{"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}'
    json_schema = t.ResponseFormat(t.ResponseFormatType.JSON_SCHEMA, schema)
    assert validation.guided_decoding(json_schema) == {"json": json.loads(schema)}
    strict = t.ResponseFormat(t.ResponseFormatType.JSON_SCHEMA, schema, strict=True)
    assert validation.guided_decoding(strict) == {"json": {**json.loads(schema), "additionalProperties": False}}
    assert validation.guided_decoding(t.ResponseFormat(t.ResponseFormatType.JSON_OBJECT)) == {"json_object": True}
    assert validation.guided_decoding(t.ResponseFormat()) is None
    with pytest.raises(InvalidArgument, match="response_format.json_schema is not a valid JSON schema"):
        validation.guided_decoding(t.ResponseFormat(t.ResponseFormatType.JSON_SCHEMA, '{"type": 5}'))
    with pytest.raises(InvalidArgument, match="response_format.json_schema is required"):
        validation.guided_decoding(t.ResponseFormat(t.ResponseFormatType.JSON_SCHEMA))
