"""Structured output and tool calling through both fronts (issue 20): the gRPC front, and the
OpenAI-compatible HTTP front through the official `openai` SDK. Constrained decoding makes the
guarantees hold even for the tiny random-weight model, over many seeds; the trained chat model
calls a tool with valid arguments when it must; bad requests name the field."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import grpc
import jsonschema
import openai
import pytest
from openai import OpenAI

from adapter.gen.inference.v1 import inference_pb2 as pb
from adapter.gen.inference.v1 import inference_pb2_grpc as pb_grpc
from tests.harness import CHAT_LLM, RunningAdapter, start_adapter, stop_adapter

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


@pytest.mark.parametrize("parallel", [None, False], ids=["parallel-default", "parallel-false"])
@pytest.mark.parametrize("seed", range(7))
def test_a_required_tool_call_has_arguments_that_validate(
    stub: pb_grpc.InferenceServiceStub, seed: int, parallel: bool | None
) -> None:
    """Whatever the weights, one or more calls whose arguments validate; with parallel_tool_calls
    false exactly one."""
    responses = chat(
        stub,
        "What is the weather in Paris?",
        seed=seed,
        max_tokens=160,
        tools=[WEATHER, TIME],
        tool_choice=pb.ToolChoice(mode=pb.ToolChoice.MODE_REQUIRED),
        parallel_tool_calls=parallel,
    )
    calls = assembled_calls(responses)
    assert responses[-1].finish_reason == pb.FINISH_REASON_TOOL_CALLS, responses[-1]
    assert calls, "a required tool call must be made"
    if parallel is False:
        assert len(calls) == 1, calls
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
def chat_adapter(small_models: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningAdapter]:
    workdir = tmp_path_factory.mktemp("structured-chat-model")
    running = start_adapter(
        workdir / "adapter.log",
        env={"LLM_MODEL_ID": str(CHAT_LLM), "PRELOAD_MODELS": "llm", "IMAGE_DIR": str(workdir / "images")},
    )
    try:
        yield running
    finally:
        stop_adapter(running)


@pytest.fixture(scope="module")
def chat_stub(chat_adapter: RunningAdapter) -> Iterator[pb_grpc.InferenceServiceStub]:
    with chat_adapter.channel() as channel:
        yield pb_grpc.InferenceServiceStub(channel)


def test_the_chat_model_calls_the_weather_tool_for_the_city(chat_stub: pb_grpc.InferenceServiceStub) -> None:
    # Named: exactly one call (under "required" the greedy 135M model repeats its call until max_tokens).
    request = pb.ChatStreamRequest(
        model="llm",
        messages=[pb.ChatMessage(role="user", content="What is the weather like in Paris today?")],
        options=pb.GenerationOptions(max_tokens=64, temperature=0),
        tools=[WEATHER, TIME],
        tool_choice=pb.ToolChoice(mode=pb.ToolChoice.MODE_FUNCTION, function="get_weather"),
    )
    responses = list(chat_stub.ChatStream(request, timeout=120))
    calls = assembled_calls(responses)
    assert calls, responses
    call = calls[0]
    arguments = json.loads(call["arguments"])
    jsonschema.validate(arguments, WEATHER_PARAMETERS)
    assert call["name"] == "get_weather" and "paris" in arguments["city"].lower(), call
    assert responses[-1].finish_reason == pb.FINISH_REASON_TOOL_CALLS


# ---- the OpenAI-compatible front, through the openai SDK -------------------------------------

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": WEATHER_PARAMETERS,
        "strict": True,
    },
}
TIME_TOOL = {
    "type": "function",
    "function": {"name": TIME.name, "description": TIME.description, "parameters": json.loads(TIME.parameters_json)},
}
TOOL_SCHEMAS = {"get_weather": WEATHER_PARAMETERS, "get_time": json.loads(TIME.parameters_json)}
PERSON_FORMAT = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}


def sdk(running: RunningAdapter) -> OpenAI:
    # No retries: a test must see the first answer, not the SDK's second try.
    return OpenAI(base_url=f"{running.http_url}/v1", api_key="unused", max_retries=0, timeout=180)


@pytest.fixture(scope="module")
def client(adapter: RunningAdapter) -> Iterator[OpenAI]:
    with sdk(adapter) as opened:
        yield opened


def ask(client: OpenAI, content: str, seed: int, max_tokens: int = 160, **fields: Any) -> Any:
    return client.chat.completions.create(
        model="llm",
        messages=[{"role": "user", "content": content}],
        max_tokens=max_tokens,
        temperature=1.0,
        seed=seed,
        **fields,
    )


def streamed(client: OpenAI, content: str, seed: int, max_tokens: int = 160, **fields: Any) -> list[Any]:
    return list(ask(client, content, seed, max_tokens, stream=True, **fields))


def sdk_calls(chunks: list[Any]) -> list[dict[str, str]]:
    """A streamed reply's tool calls put together as an OpenAI client does: by index, the first
    piece of a call bringing its id, type and name, the rest argument text."""
    calls: dict[int, dict[str, str]] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            for piece in choice.delta.tool_calls or ():
                call = calls.get(piece.index)
                if call is None:
                    assert piece.id and piece.type == "function" and piece.function.name, piece
                    call = calls[piece.index] = {"id": piece.id, "name": piece.function.name, "arguments": ""}
                else:
                    assert piece.id is None and piece.function.name is None, piece  # only arguments follow
                call["arguments"] += piece.function.arguments or ""
    return [calls[i] for i in sorted(calls)]


@pytest.mark.parametrize("seed", range(8))
def test_openai_json_schema_replies_always_validate(client: OpenAI, seed: int) -> None:
    reply = ask(client, "Describe a person.", seed, max_tokens=200, response_format=PERSON_FORMAT)
    choice = reply.choices[0]
    assert choice.finish_reason == "stop", choice
    jsonschema.validate(json.loads(choice.message.content), PERSON)


@pytest.mark.parametrize("seed", range(3))
def test_openai_streamed_json_schema_reply_validates_and_equals_grpcs(
    client: OpenAI, stub: pb_grpc.InferenceServiceStub, seed: int
) -> None:
    chunks = streamed(client, "Describe a person.", seed, max_tokens=200, response_format=PERSON_FORMAT)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(text), PERSON)
    # The same request through gRPC, same seed: the same constrained reply (one core, one model).
    responses = chat(
        stub,
        "Describe a person.",
        seed=seed,
        max_tokens=200,
        response_format=pb.ResponseFormat(
            type=pb.ResponseFormat.TYPE_JSON_SCHEMA, json_schema=json.dumps(PERSON), strict=True
        ),
    )
    assert "".join(r.delta for r in responses) == text


@pytest.mark.parametrize("seed", range(4))
def test_openai_json_object_reply_is_an_object(client: OpenAI, seed: int) -> None:
    reply = ask(client, "Reply in JSON.", seed, max_tokens=200, response_format={"type": "json_object"})
    choice = reply.choices[0]
    if choice.finish_reason == "stop":
        assert isinstance(json.loads(choice.message.content), dict), choice.message.content
    else:  # cut by max_tokens: still the start of an object
        assert choice.finish_reason == "length" and choice.message.content.lstrip().startswith("{")


@pytest.mark.parametrize("seed", range(6))
def test_openai_required_tool_calls_have_arguments_that_validate(client: OpenAI, seed: int) -> None:
    reply = ask(client, "What is the weather in Paris?", seed, tools=[WEATHER_TOOL, TIME_TOOL], tool_choice="required")
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    calls = choice.message.tool_calls
    assert calls, "a required tool call must be made"
    assert choice.message.content is None  # "required": nothing but calls
    for call in calls:
        assert call.id and call.type == "function" and call.function.name in TOOL_SCHEMAS, call
        jsonschema.validate(json.loads(call.function.arguments), TOOL_SCHEMAS[call.function.name])
    assert len({call.id for call in calls}) == len(calls)


@pytest.mark.parametrize("seed", range(3))
def test_openai_streamed_tool_call_deltas_reassemble_to_the_whole_reply(client: OpenAI, seed: int) -> None:
    fields: dict[str, Any] = {"tools": [WEATHER_TOOL, TIME_TOOL], "tool_choice": "required"}
    whole = ask(client, "What is the weather in Paris?", seed, **fields).choices[0].message.tool_calls
    chunks = streamed(client, "What is the weather in Paris?", seed, **fields)
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    pieces = sum(len(c.choices[0].delta.tool_calls or ()) for c in chunks if c.choices)
    calls = sdk_calls(chunks)
    assert pieces > len(calls), "the arguments came in one piece: not streamed"
    # Same seed, same calls (the ids are the server's own, new each time).
    assert [(c["name"], c["arguments"]) for c in calls] == [(c.function.name, c.function.arguments) for c in whole]
    for call in calls:
        jsonschema.validate(json.loads(call["arguments"]), TOOL_SCHEMAS[call["name"]])


@pytest.mark.parametrize("seed", range(4))
def test_openai_parallel_tool_calls_false_makes_one_call(client: OpenAI, seed: int) -> None:
    fields: dict[str, Any] = {"tools": [WEATHER_TOOL, TIME_TOOL], "tool_choice": "required"}
    reply = ask(client, "What is the weather in Paris?", seed, parallel_tool_calls=False, **fields)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls" and len(choice.message.tool_calls or ()) == 1, choice
    call = choice.message.tool_calls[0]  # type: ignore[index]
    jsonschema.validate(json.loads(call.function.arguments), TOOL_SCHEMAS[call.function.name])


def test_openai_named_tool_choice_calls_that_tool(client: OpenAI) -> None:
    choice = {"type": "function", "function": {"name": "get_time"}}
    reply = ask(client, "What time is it in Tokyo?", 1, tools=[WEATHER_TOOL, TIME_TOOL], tool_choice=choice)
    calls = reply.choices[0].message.tool_calls
    assert calls and {call.function.name for call in calls} == {"get_time"}
    for call in calls:
        jsonschema.validate(json.loads(call.function.arguments), TOOL_SCHEMAS["get_time"])


def test_openai_a_reply_with_calls_goes_back_as_it_came_with_the_tool_results(client: OpenAI) -> None:
    """The loop every agent runs: the SDK's own message object appended, then one tool message
    per call, then the model answers (here in text: tool_choice none)."""
    messages: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]
    first = client.chat.completions.create(
        model="llm", messages=messages, max_tokens=120, seed=3, tools=[WEATHER_TOOL], tool_choice="required"
    )
    message = first.choices[0].message
    assert message.tool_calls
    messages.append(message)
    messages += [{"role": "tool", "tool_call_id": c.id, "content": '{"temperature": 21}'} for c in message.tool_calls]
    second = client.chat.completions.create(
        model="llm", messages=messages, max_tokens=6, tools=[WEATHER_TOOL], tool_choice="none"
    )
    assert second.choices[0].message.content and not second.choices[0].message.tool_calls
    # The call and its result reached the model: a longer prompt than the question alone.
    alone = client.chat.completions.create(
        model="llm", messages=messages[:1], max_tokens=1, tools=[WEATHER_TOOL], tool_choice="none"
    )
    assert second.usage is not None and alone.usage is not None
    assert second.usage.prompt_tokens > alone.usage.prompt_tokens + 10


@pytest.mark.parametrize(
    ("fields", "messages", "param", "words"),
    [
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": 7}}}},
            None,
            "response_format.json_schema.schema",
            "not a valid JSON schema",
        ),
        ({"response_format": {"type": "json_schema"}}, None, "response_format", "json_schema is required"),
        ({"response_format": {"type": "yaml"}}, None, "response_format.type", "one of"),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "nope"}}}]},
            None,
            "tools[0].function.parameters",
            "not a valid JSON schema",
        ),
        (
            {"tools": [{"type": "function", "function": {"name": "bad name"}}]},
            None,
            "tools[0].function.name",
            "letters",
        ),
        ({"tools": [{"type": "custom", "function": {"name": "f"}}]}, None, "tools[0].type", "function tools only"),
        (
            {"tools": [WEATHER_TOOL], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            None,
            "tool_choice.function.name",
            "not among the tools",
        ),
        ({"tool_choice": "required"}, None, "tool_choice", "needs tools"),
        ({"tools": [WEATHER_TOOL], "tool_choice": "sometimes"}, None, "tool_choice", "must be"),
        ({"tools": [WEATHER_TOOL], "response_format": {"type": "json_object"}}, None, "response_format", "one of them"),
        ({"functions": [{"name": "f"}]}, None, "functions", "send tools"),
        (
            {},
            [{"role": "user", "content": "hi"}, {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}],
            "messages[1].tool_call_id",
            "answers no tool call",
        ),
        (
            {},
            [
                {"role": "user", "content": "hi"},
                {
                    "role": "assistant",
                    "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "[1]"}}],
                },
            ],
            "messages[1].tool_calls[0].function.arguments",
            "JSON object",
        ),
    ],
)
def test_openai_bad_structured_requests_are_400_naming_the_field(
    client: OpenAI, fields: dict[str, Any], messages: list[dict[str, Any]] | None, param: str, words: str
) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(
            model="llm", messages=messages or [{"role": "user", "content": "hi"}], max_tokens=4, **fields
        )
    body = raised.value.body
    assert isinstance(body, dict) and body["type"] == "invalid_request_error", body
    assert body["param"] == param and words in body["message"], body


def test_openai_the_chat_model_calls_the_weather_tool_for_the_city(chat_adapter: RunningAdapter) -> None:
    with sdk(chat_adapter) as trained:
        reply = trained.chat.completions.create(
            model="llm",
            messages=[{"role": "user", "content": "What is the weather like in Paris today?"}],
            max_tokens=64,
            temperature=0,
            tools=[WEATHER_TOOL, TIME_TOOL],
            # "required" and one call: the greedy 135M model would otherwise repeat its call.
            tool_choice="required",
            parallel_tool_calls=False,
        )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls" and len(choice.message.tool_calls or ()) == 1, choice
    call = choice.message.tool_calls[0]
    arguments = json.loads(call.function.arguments)
    jsonschema.validate(arguments, WEATHER_PARAMETERS)
    assert call.function.name == "get_weather" and "paris" in arguments["city"].lower(), call
