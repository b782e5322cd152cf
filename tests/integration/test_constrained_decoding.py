"""Constrained decoding through the embedded Triton's `llm` model (requests straight to Triton, in
the model's own tensors: `guided_decoding` in sampling_parameters, `tools` and `tool_choice` beside
messages, `tool_calls` deltas out). With the tiny random model every output is what its grammar
allows, for many seeds in one batch with free requests; with the trained SmolLM2, a weather tool is
called with valid arguments when the call is required."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import jsonschema
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
from tritonclient.utils import InferenceServerException

from tests.harness import CHAT_LLM, TINY_LLM, start_adapter, stop_adapter

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "role": {"enum": ["admin", "user", "guest"]},
        "active": {"type": "boolean"},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 6}, "maxItems": 3},
    },
    "required": ["name", "age", "role", "active"],
    "additionalProperties": False,
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "The city name", "maxLength": 40}},
            "required": ["city"],
        },
    },
}
WEATHER_SCHEMA = WEATHER["function"]["parameters"]  # type: ignore[index]


@dataclass
class Reply:
    text: str = ""
    finish_reason: str = ""
    completion_tokens: int = 0
    deltas: list[dict[str, Any]] = field(default_factory=list)
    error: InferenceServerException | None = None
    responses: int = 0

    def calls(self) -> list[dict[str, Any]]:
        """The deltas reassembled as a client does: by index, name from the first, arguments appended."""
        calls: dict[int, dict[str, Any]] = {}
        for delta in self.deltas:
            call = calls.setdefault(delta["index"], {"id": "", "name": "", "arguments": ""})
            call["id"] = delta.get("id", call["id"])
            call["name"] += delta.get("function", {}).get("name", "")
            call["arguments"] += delta.get("function", {}).get("arguments", "")
        return [calls[i] for i in sorted(calls)]


def _input(name: str, value: str | bool) -> triton_grpc.InferInput:
    if isinstance(value, bool):
        tensor = triton_grpc.InferInput(name, [1], "BOOL")
        tensor.set_data_from_numpy(np.array([value]))
    else:
        tensor = triton_grpc.InferInput(name, [1], "BYTES")
        tensor.set_data_from_numpy(np.array([value.encode()], dtype=np.object_))
    return tensor


def run(url: str, requests: list[dict[str, Any]], timeout_s: float = 240) -> list[Reply]:
    """Sends every request at once on one stream (so they share the engine's batches) and waits
    for all of them. A request: messages, sampling (dict), tools, tool_choice, stream."""
    replies = [Reply() for _ in requests]
    done = threading.Semaphore(0)

    def on_response(result: Any, error: InferenceServerException | None) -> None:
        if error is not None:
            # An error response names no request id: the tests send erroneous requests one by one.
            replies[0].error = error
            done.release()
            return
        reply = replies[int(result.get_response().id)]
        reply.responses += 1
        reply.text += result.as_numpy("text_output")[0].decode()
        calls = result.as_numpy("tool_calls")
        if calls is not None:
            reply.deltas += json.loads(calls[0].decode())
        # Triton's vLLM dialect: counts per response, finish_reason "None" until the last one.
        reply.completion_tokens += int(result.as_numpy("num_output_tokens")[0])
        reason = result.as_numpy("finish_reason")[0].decode()
        if reason != "None":
            reply.finish_reason = reason
            done.release()

    client = triton_grpc.InferenceServerClient(url)
    try:
        client.start_stream(callback=on_response)
        for i, request in enumerate(requests):
            inputs = [
                _input("messages", json.dumps(request["messages"])),
                _input("sampling_parameters", json.dumps(request.get("sampling", {}))),
                _input("stream", request.get("stream", True)),
                _input("return_finish_reason", True),
                _input("return_num_output_tokens", True),
                _input("exclude_input_in_output", True),
            ]
            for name in ("tools", "tool_choice"):
                if name in request:
                    inputs.append(_input(name, json.dumps(request[name])))
            client.async_stream_infer("llm", inputs, request_id=str(i))
        for _ in requests:
            assert done.acquire(timeout=timeout_s), "a request did not finish"
    finally:
        client.stop_stream()
        client.close()
    return replies


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


@pytest.fixture(scope="module")
def tiny_triton(small_models: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    workdir = tmp_path_factory.mktemp("constrained-tiny")
    running = start_adapter(
        workdir / "adapter.log",
        env={"LLM_MODEL_ID": str(TINY_LLM), "PRELOAD_MODELS": "llm", "IMAGE_DIR": str(workdir / "images")},
    )
    try:
        yield running.triton_grpc_url
    finally:
        stop_adapter(running)


def test_every_json_schema_output_parses_and_validates_amid_free_requests(tiny_triton: str) -> None:
    constrained = [
        {
            "messages": user("Describe a person."),
            "sampling": {"max_tokens": 160, "temperature": 1.0, "seed": seed, "guided_decoding": {"json": PERSON}},
        }
        for seed in range(24)
    ]
    free = [{"messages": user("Hello"), "sampling": {"max_tokens": 24, "temperature": 1.0, "seed": 3}}] * 4
    replies = run(tiny_triton, constrained + free)
    for seed, reply in enumerate(replies[:24]):
        assert reply.error is None and reply.finish_reason == "stop", (seed, reply)
        jsonschema.validate(json.loads(reply.text), PERSON)
    assert len({r.text for r in replies[:24]}) > 12
    # The free requests beside them: unconstrained, and all the same (one seed).
    assert {r.finish_reason for r in replies[24:]} == {"length"}
    assert len({r.text for r in replies[24:]}) == 1 and not replies[24].deltas


def test_json_object_output_is_an_object(tiny_triton: str) -> None:
    requests = [
        {
            "messages": user("Any JSON."),
            "sampling": {"max_tokens": 300, "temperature": 1.0, "seed": seed, "guided_decoding": {"json_object": True}},
        }
        for seed in range(8)
    ]
    replies = run(tiny_triton, requests)
    stopped = [r for r in replies if r.finish_reason == "stop"]
    assert stopped  # a random walk may run past max_tokens; those that end are objects
    assert all(isinstance(json.loads(r.text), dict) for r in stopped)
    assert all(r.text.startswith("{") for r in replies)


def test_streamed_tool_call_deltas_reassemble_to_the_whole_call(tiny_triton: str) -> None:
    request = {
        "messages": user("What is the weather in Paris?"),
        "sampling": {"max_tokens": 120, "temperature": 1.0, "seed": 11},
        "tools": [WEATHER],
        "tool_choice": "required",
    }
    streamed, whole = run(tiny_triton, [request, {**request, "stream": False}])
    assert streamed.finish_reason == whole.finish_reason == "tool_calls"
    assert streamed.responses > 2 and whole.responses == 1  # deltas over several responses, then one
    assert streamed.text == whole.text == ""
    calls, whole_calls = streamed.calls(), whole.calls()
    assert [(c["name"], c["arguments"]) for c in calls] == [(c["name"], c["arguments"]) for c in whole_calls]
    for call in calls:
        assert call["name"] == "get_weather" and call["id"].startswith("call_")
        jsonschema.validate(json.loads(call["arguments"]), WEATHER_SCHEMA)
    assert sum(1 for d in streamed.deltas if d.get("id")) == len(calls)  # id and name once per call


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        ({"sampling": {"guided_decoding": {"json": {"type": "foo"}}}}, "sampling_parameters.guided_decoding.json"),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "get_time"}}},
            "tool_choice.function.name 'get_time' is not among the tools",
        ),
        (
            {"messages": [*user("Hi"), {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]},
            "messages[1].tool_call_id 'call_1' matches no earlier assistant tool call",
        ),
    ],
)
def test_bad_constraints_are_invalid_arguments_naming_the_field(
    tiny_triton: str, request_: dict[str, Any], field: str
) -> None:
    (reply,) = run(tiny_triton, [{"messages": user("Hi"), **request_}])
    assert reply.error is not None
    message = reply.error.message()
    # A refused request (TritonError.INVALID_ARG, which the adapter maps to INVALID_ARGUMENT), not
    # a failure while generating ("generation failed: ...", INTERNAL).
    assert field in message and "generation failed" not in message, message


@pytest.fixture(scope="module")
def chat_triton(small_models: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    workdir = tmp_path_factory.mktemp("constrained-chat")
    running = start_adapter(
        workdir / "adapter.log",
        env={"LLM_MODEL_ID": str(CHAT_LLM), "PRELOAD_MODELS": "llm", "IMAGE_DIR": str(workdir / "images")},
    )
    try:
        yield running.triton_grpc_url
    finally:
        stop_adapter(running)


def test_the_chat_model_calls_the_weather_tool_with_valid_arguments_when_required(chat_triton: str) -> None:
    base = {
        "messages": user("What is the weather like in Paris today?"),
        "sampling": {"max_tokens": 100, "temperature": 0},
        "tools": [WEATHER],
    }
    named = {"type": "function", "function": {"name": "get_weather"}}
    required, forced, untooled = run(
        chat_triton,
        [{**base, "tool_choice": "required"}, {**base, "tool_choice": named}, {**base, "tool_choice": "none"}],
    )
    for reply in (required, forced):
        assert reply.finish_reason == "tool_calls" and reply.text == "", reply
        calls = reply.calls()
        assert calls  # "required" allows several; this small model repeats its call
        for call in calls:
            arguments = json.loads(call["arguments"])
            jsonschema.validate(arguments, WEATHER_SCHEMA)
            assert call["name"] == "get_weather" and "paris" in arguments["city"].lower(), call
    assert len(forced.calls()) == 1  # a named function: exactly one call
    assert untooled.finish_reason in ("stop", "length") and not untooled.deltas  # "none": plain text
    assert "<tool_call>" not in untooled.text


def test_the_chat_model_answers_after_a_tool_result(chat_triton: str) -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    messages = [
        *user("What is the weather like in Paris today?"),
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature_c": 18, "sky": "sunny"}'},
    ]
    (reply,) = run(
        chat_triton,
        [
            {
                "messages": messages,
                "sampling": {"max_tokens": 48, "temperature": 0},
                "tools": [WEATHER],
                "tool_choice": "none",
            }
        ],
    )
    assert reply.error is None and reply.text.strip(), reply
    assert "18" in reply.text or "sunny" in reply.text.lower(), reply.text
