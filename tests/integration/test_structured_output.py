"""Structured output and tool calling through the adapter's gRPC front (issue 20): constrained
decoding makes the guarantees hold even for the tiny random-weight model, over many seeds; the
trained chat model calls a tool with valid arguments when it must; bad requests name the field."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import grpc
import jsonschema
import pytest

from adapter.gen.inference.v1 import inference_pb2 as pb
from adapter.gen.inference.v1 import inference_pb2_grpc as pb_grpc
from tests.harness import CHAT_LLM, start_adapter, stop_adapter

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 130},
        "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 3},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}
WEATHER_PARAMETERS = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 40}, "unit": {"enum": ["celsius", "fahrenheit"]}},
    "required": ["city"],
    "additionalProperties": False,
}
WEATHER = pb.Tool(
    name="get_weather", description="Current weather for a city", parameters_json=json.dumps(WEATHER_PARAMETERS)
)
TIME = pb.Tool(
    name="get_time",
    description="Current time in a timezone",
    parameters_json=json.dumps(
        {"type": "object", "properties": {"tz": {"type": "string", "maxLength": 30}}, "required": ["tz"]}
    ),
)


def chat(
    stub: pb_grpc.InferenceServiceStub,
    content: str,
    seed: int = 0,
    max_tokens: int = 96,
    **fields: Any,
) -> list[pb.ChatStreamResponse]:
    request = pb.ChatStreamRequest(
        model="llm",
        messages=[pb.ChatMessage(role="user", content=content)],
        options=pb.GenerationOptions(max_tokens=max_tokens, temperature=1.0, seed=seed),
        **fields,
    )
    return list(stub.ChatStream(request, timeout=120))


def assembled_calls(responses: list[pb.ChatStreamResponse]) -> list[dict[str, str]]:
    """The tool calls of a reply, put together from its streamed deltas by index."""
    calls: dict[int, dict[str, str]] = {}
    for response in responses:
        for delta in response.tool_calls:
            call = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
            call["id"] = call["id"] or delta.id
            call["name"] = call["name"] or delta.name
            call["arguments"] += delta.arguments
    return [calls[i] for i in sorted(calls)]


# ---- the tiny random model: the guarantees hold whatever the weights -----------------------


@pytest.mark.parametrize("seed", range(12))
def test_json_schema_output_always_parses_and_validates(stub: pb_grpc.InferenceServiceStub, seed: int) -> None:
    responses = chat(
        stub,
        "Describe a person.",
        seed=seed,
        max_tokens=200,
        response_format=pb.ResponseFormat(type=pb.ResponseFormat.TYPE_JSON_SCHEMA, json_schema=json.dumps(PERSON)),
    )
    text = "".join(r.delta for r in responses)
    assert responses[-1].finish_reason == pb.FINISH_REASON_STOP, (text, responses[-1])
    jsonschema.validate(json.loads(text), PERSON)


@pytest.mark.parametrize("seed", range(6))
def test_json_object_output_is_a_json_object(stub: pb_grpc.InferenceServiceStub, seed: int) -> None:
    responses = chat(
        stub,
        "Reply in JSON.",
        seed=seed,
        max_tokens=200,
        response_format=pb.ResponseFormat(type=pb.ResponseFormat.TYPE_JSON_OBJECT),
    )
    text = "".join(r.delta for r in responses)
    if responses[-1].finish_reason == pb.FINISH_REASON_STOP:
        assert isinstance(json.loads(text), dict), text
    else:
        # Cut by max_tokens: still a prefix of a JSON object.
        assert responses[-1].finish_reason == pb.FINISH_REASON_LENGTH and text.lstrip().startswith("{"), text


@pytest.mark.parametrize("seed", range(8))
def test_a_required_tool_call_has_arguments_that_validate(stub: pb_grpc.InferenceServiceStub, seed: int) -> None:
    responses = chat(
        stub,
        "What is the weather in Paris?",
        seed=seed,
        max_tokens=160,
        tools=[WEATHER, TIME],
        tool_choice=pb.ToolChoice(mode=pb.ToolChoice.MODE_REQUIRED),
    )
    calls = assembled_calls(responses)
    assert responses[-1].finish_reason == pb.FINISH_REASON_TOOL_CALLS, responses[-1]
    assert calls, "a required tool call must be made"
    schemas = {"get_weather": WEATHER_PARAMETERS, "get_time": json.loads(TIME.parameters_json)}
    for call in calls:
        assert call["id"] and call["name"] in schemas, call
        jsonschema.validate(json.loads(call["arguments"]), schemas[call["name"]])


@pytest.mark.parametrize("seed", range(4))
def test_a_named_tool_is_the_one_called(stub: pb_grpc.InferenceServiceStub, seed: int) -> None:
    responses = chat(
        stub,
        "What time is it in Tokyo?",
        seed=seed,
        max_tokens=160,
        tools=[WEATHER, TIME],
        tool_choice=pb.ToolChoice(mode=pb.ToolChoice.MODE_FUNCTION, function="get_time"),
    )
    calls = assembled_calls(responses)
    assert [call["name"] for call in calls] == ["get_time"] * len(calls) and calls
    for call in calls:
        jsonschema.validate(json.loads(call["arguments"]), json.loads(TIME.parameters_json))


def test_constrained_and_free_requests_share_the_batch(stub: pb_grpc.InferenceServiceStub) -> None:
    """Concurrent constrained and free streams of one model: each keeps its own guarantee."""
    schema = pb.ResponseFormat(type=pb.ResponseFormat.TYPE_JSON_SCHEMA, json_schema=json.dumps(PERSON))
    futures = []
    for seed in range(6):
        for constrained in (True, False):
            request = pb.ChatStreamRequest(
                model="llm",
                messages=[pb.ChatMessage(role="user", content="Describe a person.")],
                options=pb.GenerationOptions(max_tokens=200, temperature=1.0, seed=seed),
                response_format=schema if constrained else None,
            )
            futures.append((constrained, stub.ChatStream(request, timeout=180)))
    free_texts = []
    for constrained, call in futures:
        responses = list(call)
        text = "".join(r.delta for r in responses)
        if constrained:
            jsonschema.validate(json.loads(text), PERSON)
        else:
            free_texts.append(text)
    # The free ones were not constrained: random weights do not write schema-valid JSON by chance.
    assert not any(_validates(text) for text in free_texts), free_texts


def _validates(text: str) -> bool:
    try:
        jsonschema.validate(json.loads(text), PERSON)
    except (ValueError, jsonschema.ValidationError):
        return False
    return True


# ---- bad requests: INVALID_ARGUMENT naming the field ---------------------------------------


@pytest.mark.parametrize(
    ("fields", "messages", "match"),
    [
        (
            {"response_format": pb.ResponseFormat(type=pb.ResponseFormat.TYPE_JSON_SCHEMA, json_schema="{not json")},
            None,
            "response_format.json_schema is not valid JSON",
        ),
        (
            {"response_format": pb.ResponseFormat(type=pb.ResponseFormat.TYPE_JSON_SCHEMA, json_schema='{"type": 7}')},
            None,
            "response_format.json_schema is not a valid JSON schema",
        ),
        (
            {"tools": [WEATHER], "tool_choice": pb.ToolChoice(mode=pb.ToolChoice.MODE_FUNCTION, function="nope")},
            None,
            "tool_choice.function 'nope' is not among the tools",
        ),
        (
            {},
            [
                pb.ChatMessage(role="user", content="hi"),
                pb.ChatMessage(role="tool", tool_call_id="call_1", content="sunny"),
            ],
            r"messages\[1\]\.tool_call_id 'call_1' answers no tool call",
        ),
    ],
)
def test_bad_structured_requests_are_invalid_argument(
    stub: pb_grpc.InferenceServiceStub, fields: dict[str, Any], messages: list[pb.ChatMessage] | None, match: str
) -> None:
    request = pb.ChatStreamRequest(
        model="llm", messages=messages or [pb.ChatMessage(role="user", content="hi")], **fields
    )
    with pytest.raises(grpc.RpcError) as err:
        list(stub.ChatStream(request, timeout=60))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert re.search(match, err.value.details()), err.value.details()


def test_a_tool_result_conversation_is_accepted(stub: pb_grpc.InferenceServiceStub) -> None:
    """The next turn after a call: the assistant's call and the tool's answer go back to the model."""
    request = pb.ChatStreamRequest(
        model="llm",
        messages=[
            pb.ChatMessage(role="user", content="Weather in Paris?"),
            pb.ChatMessage(
                role="assistant",
                tool_calls=[pb.ToolCall(id="call_1", name="get_weather", arguments='{"city": "Paris"}')],
            ),
            pb.ChatMessage(role="tool", tool_call_id="call_1", content='{"temperature": 21}'),
        ],
        tools=[WEATHER],
        options=pb.GenerationOptions(max_tokens=8),
    )
    responses = list(stub.ChatStream(request, timeout=60))
    assert responses[-1].done and responses[-1].usage.prompt_tokens > 0


# ---- the trained chat model ----------------------------------------------------------------


@pytest.fixture(scope="module")
def chat_stub(small_models: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[pb_grpc.InferenceServiceStub]:
    workdir = tmp_path_factory.mktemp("structured-chat-model")
    running = start_adapter(
        workdir / "adapter.log",
        env={"LLM_MODEL_ID": str(CHAT_LLM), "PRELOAD_MODELS": "llm", "IMAGE_DIR": str(workdir / "images")},
    )
    try:
        with running.channel() as channel:
            yield pb_grpc.InferenceServiceStub(channel)
    finally:
        stop_adapter(running)


def test_the_chat_model_calls_the_weather_tool_for_the_city(chat_stub: pb_grpc.InferenceServiceStub) -> None:
    request = pb.ChatStreamRequest(
        model="llm",
        messages=[pb.ChatMessage(role="user", content="What is the weather like in Paris today?")],
        options=pb.GenerationOptions(max_tokens=64, temperature=0),
        tools=[WEATHER],
        tool_choice=pb.ToolChoice(mode=pb.ToolChoice.MODE_REQUIRED),
    )
    responses = list(chat_stub.ChatStream(request, timeout=120))
    calls = assembled_calls(responses)
    assert calls, responses
    call = calls[0]
    arguments = json.loads(call["arguments"])
    jsonschema.validate(arguments, WEATHER_PARAMETERS)
    assert call["name"] == "get_weather" and "paris" in arguments["city"].lower(), call
    assert responses[-1].finish_reason == pb.FINISH_REASON_TOOL_CALLS
