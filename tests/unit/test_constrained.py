"""Constrained decoding in the batching engine on the tiny random-weight Llama (real forward passes,
no Triton): whatever the weights would say, every constrained output is what its grammar allows,
for many seeds, sampled and greedy, with free requests in the same batch left as they are."""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from model_runtime.batching import BatchingEngine
from model_runtime.constrained import Grammars, StructuredRequest, Utf8Guard
from model_runtime.text_generation import InvalidRequest, SamplingParams
from model_runtime.tool_calls import ToolCallDelta, merge_tool_call_deltas
from tests.harness import TINY_LLM
from tests.unit.test_batching import Result, collect, run_to_end

CPU = torch.device("cpu")
SEEDS = range(40)

# Bounded lengths: a random model would otherwise fill a free string until max_tokens.
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "role": {"enum": ["admin", "user", "guest"]},
        "score": {"type": "number", "minimum": -5, "maximum": 5},
        "active": {"type": "boolean"},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 6}, "maxItems": 3},
        "address": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 10},
                "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
            },
            "required": ["city", "zip"],
        },
    },
    "required": ["name", "age", "role", "active", "address"],
    "additionalProperties": False,
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 16}, "unit": {"enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {"type": "object", "properties": {"zone": {"type": "string", "pattern": "^[A-Z]{3}$"}}},
    },
}
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER, TIME)}


@pytest.fixture(scope="module")
def tiny(small_models: None) -> tuple[Any, Any]:
    tokenizer = AutoTokenizer.from_pretrained(TINY_LLM)
    model = AutoModelForCausalLM.from_pretrained(TINY_LLM).eval()
    return model, tokenizer


@pytest.fixture(scope="module")
def grammars(tiny: tuple[Any, Any]) -> Grammars:
    model, tokenizer = tiny
    return Grammars(tokenizer, model.config.vocab_size, new_engine(tiny).eos_token_ids)


def new_engine(tiny: tuple[Any, Any]) -> BatchingEngine:
    model, tokenizer = tiny
    return BatchingEngine(model, tokenizer, CPU, max_num_seqs=64, kv_cache_tokens=65536)


def chat_ids(tiny: tuple[Any, Any], text: str, request: StructuredRequest) -> list[int]:
    return request.chat_prompt_ids(tiny[1], json.dumps([{"role": "user", "content": text}]))


def guided(grammars: Grammars, guided_decoding: dict[str, Any]) -> StructuredRequest:
    return grammars.prepare(json.dumps({"guided_decoding": guided_decoding}), None, None, chat=True)


def with_tools(grammars: Grammars, choice: Any, tools: list[dict[str, Any]] | None = None) -> StructuredRequest:
    return grammars.prepare(None, json.dumps(tools or [WEATHER, TIME]), json.dumps(choice), chat=True)


def deltas_of(result: Result) -> list[ToolCallDelta]:
    return [delta for output in result.outputs for delta in output.tool_calls]


def test_json_schema_outputs_parse_and_validate_for_every_seed_amid_free_requests(
    tiny: tuple[Any, Any], grammars: Grammars
) -> None:
    request = guided(grammars, {"json": PERSON})
    e = new_engine(tiny)
    ids = chat_ids(tiny, "Describe someone.", request)
    for seed in SEEDS:
        e.submit(seed, ids, SamplingParams(max_tokens=160, temperature=1.0, seed=seed), request.constraint)
    free = SamplingParams(max_tokens=24, temperature=0.9, seed=5)
    for i in range(4):
        e.submit(1000 + i, ids, free)
    results = run_to_end(e, {})
    texts = set()
    for seed in SEEDS:
        result = results[seed]
        assert result.finish_reason == "stop", (seed, result)
        value = json.loads(result.text)
        jsonschema.validate(value, PERSON)
        texts.add(result.text)
    assert len(texts) > len(SEEDS) // 2  # the seeds really sample different outputs
    # The free requests in that batch got what they get alone (the masks touched only their rows).
    alone = new_engine(tiny)
    alone.submit(1, ids, free)
    expected = run_to_end(alone, {})[1].text
    assert all(results[1000 + i].text == expected for i in range(4))


def test_greedy_and_penalised_constrained_rows_validate_too(tiny: tuple[Any, Any], grammars: Grammars) -> None:
    request = guided(grammars, {"json": PERSON})
    e = new_engine(tiny)
    ids = chat_ids(tiny, "Describe someone.", request)
    params = [
        SamplingParams(max_tokens=160, temperature=0),
        SamplingParams(max_tokens=160, temperature=0.7, top_k=20, top_p=0.8, repetition_penalty=1.3, seed=1),
        SamplingParams(max_tokens=160, temperature=1.5, frequency_penalty=1.0, presence_penalty=0.5, seed=2),
    ]
    for i, p in enumerate(params):
        e.submit(i, ids, p, request.constraint)
    results = run_to_end(e, {})
    for i in range(len(params)):
        assert results[i].finish_reason == "stop"
        jsonschema.validate(json.loads(results[i].text), PERSON)


def test_a_seeded_constrained_request_gives_the_same_output_alone_and_in_a_batch(
    tiny: tuple[Any, Any], grammars: Grammars
) -> None:
    request = guided(grammars, {"json": PERSON})
    ids = chat_ids(tiny, "Someone", request)
    seeded = SamplingParams(max_tokens=160, temperature=1.0, seed=77)
    alone = new_engine(tiny)
    alone.submit(1, ids, seeded, request.constraint)
    expected = run_to_end(alone, {})[1].text
    e = new_engine(tiny)
    for i in range(6):
        e.submit(10 + i, ids, SamplingParams(max_tokens=30 + i, temperature=1.0), request.constraint if i % 2 else None)
    results: dict[int, Result] = {}
    collect(results, e.step())
    e.submit(1, ids, seeded, request.constraint)
    assert run_to_end(e, results)[1].text == expected


def test_json_object_choice_and_regex(tiny: tuple[Any, Any], grammars: Grammars) -> None:
    requests = {
        "object": guided(grammars, {"json_object": True}),
        "choice": guided(grammars, {"choice": ["red", "green", "blue, or teal"]}),
        "regex": guided(grammars, {"regex": r"[A-Z]{2}-[0-9]{3}"}),
    }
    e = new_engine(tiny)
    for n, request in enumerate(requests.values()):
        for seed in range(12):
            params = SamplingParams(max_tokens=400, temperature=1.0, seed=seed)
            e.submit(n * 100 + seed, chat_ids(tiny, "Go", request), params, request.constraint)
    results = run_to_end(e, {})
    for seed in range(12):
        obj = results[seed]
        # A random walk through "any object" may run past max_tokens; what ends must be an object.
        if obj.finish_reason == "stop":
            assert isinstance(json.loads(obj.text), dict)
        else:
            assert obj.finish_reason == "length" and obj.text.startswith("{")
        assert results[100 + seed].text in ("red", "green", "blue, or teal")
        assert results[100 + seed].finish_reason == "stop"
        assert re.fullmatch(r"[A-Z]{2}-[0-9]{3}", results[200 + seed].text), results[200 + seed].text
    assert sum(results[s].finish_reason == "stop" for s in range(12)) >= 3


def test_max_tokens_still_ends_a_constrained_request(tiny: tuple[Any, Any], grammars: Grammars) -> None:
    request = guided(grammars, {"json": PERSON})
    e = new_engine(tiny)
    e.submit(1, chat_ids(tiny, "x", request), SamplingParams(max_tokens=5, temperature=1.0, seed=3), request.constraint)
    result = run_to_end(e, {})[1]
    assert (result.finish_reason, result.completion_tokens) == ("length", 5)
    assert result.text.startswith('{"name"')  # the schema's first property, in declared order


def test_required_tool_calls_validate_for_every_seed_and_their_deltas_reassemble(
    tiny: tuple[Any, Any], grammars: Grammars
) -> None:
    request = with_tools(grammars, "required")
    e = new_engine(tiny)
    ids = chat_ids(tiny, "Weather in Paris?", request)
    for seed in SEEDS:
        e.submit(seed, ids, SamplingParams(max_tokens=200, temperature=1.0, seed=seed), request.constraint)
    e.submit(999, ids, SamplingParams(max_tokens=20, temperature=1.0, seed=1))  # a free one beside them
    results = run_to_end(e, {})
    names = set()
    for seed in SEEDS:
        result = results[seed]
        assert result.finish_reason == "tool_calls", (seed, result)
        assert result.text == ""  # "required": calls and nothing else
        calls = merge_tool_call_deltas(deltas_of(result))
        assert calls and [c.index for c in calls] == list(range(len(calls)))
        for call in calls:
            assert call.id.startswith("call_")
            jsonschema.validate(json.loads(call.arguments), SCHEMAS[call.name])
            names.add(call.name)
    assert names <= set(SCHEMAS)
    assert results[999].finish_reason == "length" and not deltas_of(results[999])


@pytest.mark.parametrize("choice", ["required", "auto"])
def test_without_parallel_tool_calls_the_grammar_ends_after_the_first_call(grammars: Grammars, choice: str) -> None:
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n</tool_call>'
    second = '\n<tool_call>\n{"name": "get_time", "arguments": {"zone": "UTC"}}\n</tool_call>'

    def accepts(parallel: bool, text: str) -> bool:
        tools = json.dumps([WEATHER, TIME])
        constraint = grammars.prepare(None, tools, json.dumps(choice), chat=True, parallel=parallel).constraint
        assert constraint is not None
        matcher = constraint.matcher()
        return bool(matcher.accept_string(text)) and bool(matcher.is_completed())

    assert accepts(True, call) and accepts(True, call + second)
    assert accepts(False, call)
    assert not accepts(False, call + second)


@pytest.mark.parametrize("seed", range(6))
def test_without_parallel_tool_calls_a_required_reply_is_exactly_one_valid_call(
    tiny: tuple[Any, Any], grammars: Grammars, seed: int
) -> None:
    one = grammars.prepare(None, json.dumps([WEATHER, TIME]), '"required"', chat=True, parallel=False)
    e = new_engine(tiny)
    e.submit(
        seed,
        chat_ids(tiny, "Weather in Paris?", one),
        SamplingParams(max_tokens=200, temperature=1.0, seed=seed),
        one.constraint,
    )
    result = run_to_end(e, {})[seed]
    calls = merge_tool_call_deltas(deltas_of(result))
    assert result.finish_reason == "tool_calls" and len(calls) == 1, result
    jsonschema.validate(json.loads(calls[0].arguments), SCHEMAS[calls[0].name])


def test_a_named_tool_choice_calls_exactly_that_tool(tiny: tuple[Any, Any], grammars: Grammars) -> None:
    request = with_tools(grammars, {"type": "function", "function": {"name": "get_weather"}})
    e = new_engine(tiny)
    ids = chat_ids(tiny, "Weather?", request)
    for seed in range(16):
        e.submit(seed, ids, SamplingParams(max_tokens=200, temperature=1.0, seed=seed), request.constraint)
    results = run_to_end(e, {})
    for seed in range(16):
        calls = merge_tool_call_deltas(deltas_of(results[seed]))
        assert results[seed].finish_reason == "tool_calls"
        assert [c.name for c in calls] == ["get_weather"]
        jsonschema.validate(json.loads(calls[0].arguments), SCHEMAS["get_weather"])


def test_the_auto_grammar_allows_text_and_holds_any_call_to_its_schema(grammars: Grammars) -> None:
    constraint = with_tools(grammars, "auto").constraint
    assert constraint is not None and constraint.tool_calls

    def accepts(text: str) -> bool:
        matcher = constraint.matcher()
        return bool(matcher.accept_string(text)) and bool(matcher.is_completed())

    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n</tool_call>'
    assert accepts("It is sunny, I think.")
    assert accepts("Let me look. " + call + " Done.")
    assert not accepts(call.replace("celsius", "kelvin"))  # not in the enum
    assert not accepts(call.replace("get_weather", "get_wether"))  # no such tool
    assert not accepts(call.replace(', "unit": "celsius"', ""))  # a required argument missing


@pytest.mark.parametrize(
    ("sampling", "tools", "choice", "message"),
    [
        ({"guided_decoding": {"json": {"type": "foo"}}}, None, None, r'guided_decoding.json: Unsupported type "foo"'),
        ({"guided_decoding": {"json": "{not json"}}, None, None, r"guided_decoding.json is not valid JSON"),
        ({"guided_decoding": {"json": [1]}}, None, None, r"guided_decoding.json must be a JSON schema object"),
        ({"guided_decoding": {"regex": "[a-"}}, None, None, r"guided_decoding.regex: Regex parsing error"),
        ({"guided_decoding": {"grammar": "x"}}, None, None, r"unknown key\(s\) \['grammar'\]"),
        ({"guided_decoding": {"json": {}, "regex": "a"}}, None, None, r"exactly one of"),
        ({"guided_decoding": {"json_object": "yes"}}, None, None, r"guided_decoding.json_object must be true"),
        ({"guided_decoding": {"choice": []}}, None, None, r"guided_decoding.choice must be a non-empty list"),
        ({"guided_decoding": {"json_object": True}}, [WEATHER], None, r"cannot be combined with tools"),
        (
            {},
            [
                WEATHER,
                {
                    "type": "function",
                    "function": {"name": "f", "parameters": {"type": "object", "properties": {"a": {"$ref": "#/x"}}}},
                },
            ],
            None,
            r"tools\[1\].function.parameters: ",
        ),
        ({}, [WEATHER], {"type": "function", "function": {"name": "nope"}}, r"tool_choice.function.name 'nope'"),
    ],
)
def test_bad_constraints_are_refused_naming_the_field(
    grammars: Grammars, sampling: dict[str, Any], tools: Any, choice: Any, message: str
) -> None:
    with pytest.raises(InvalidRequest, match=message):
        grammars.prepare(
            json.dumps(sampling),
            None if tools is None else json.dumps(tools),
            None if choice is None else json.dumps(choice),
            chat=True,
        )


def test_prepare_leaves_the_other_sampling_parameters_and_needs_a_chat_for_tools(grammars: Grammars) -> None:
    request = grammars.prepare('{"temperature": 0.5, "guided_decoding": {"json_object": true}}', None, None, chat=True)
    assert json.loads(request.sampling_parameters or "") == {"temperature": 0.5}
    assert request.constraint is not None and request.constraint.kind == "json_object"
    assert grammars.prepare('{"max_tokens": 3}', None, None, chat=False).constraint is None
    none = grammars.prepare(None, json.dumps([WEATHER]), '"none"', chat=True)
    assert none.constraint is None and none.tools == []  # the model is not shown the tools
    with pytest.raises(InvalidRequest, match="tools need messages"):
        grammars.prepare(None, json.dumps([WEATHER]), None, chat=False)


def test_length_bounded_strings_never_admit_raw_control_characters(grammars: Grammars) -> None:
    # xgrammar 0.2.9 lets them into minLength/maxLength strings (mlc-ai/xgrammar#800); ours map
    # those bounds to a pattern, which keeps the lengths and is escaped correctly.
    schema = {
        "type": "object",
        "properties": {"s": {"type": "string", "minLength": 2, "maxLength": 4}},
        "required": ["s"],
    }
    constraint = guided(grammars, {"json": schema}).constraint
    assert constraint is not None

    def accepts(text: str) -> bool:
        matcher = constraint.matcher()
        return bool(matcher.accept_string(text)) and bool(matcher.is_completed())

    assert accepts('{"s": "ab"}') and accepts('{"s": "abcd"}')
    assert not accepts('{"s": "a"}') and not accepts('{"s": "abcde"}')
    assert not accepts('{"s": "a\x01b"}') and not accepts('{"s": "a\tb"}')


def test_the_utf8_guard_allows_only_tokens_that_keep_the_bytes_valid_utf8() -> None:
    vocabulary = [b"a", b"\xe0", b"\x94", b"\xa0", b"\x89", "é".encode(), b"\xc0\x81", "€".encode()[:2], b"</s>"]
    guard = Utf8Guard(vocabulary, stop_token_ids={8})
    allowed = {state: [vocabulary[t] for t in range(len(vocabulary)) if guard.allowed[state, t]] for state in range(8)}
    assert allowed[0] == [b"a", b"\xe0", "é".encode(), "€".encode()[:2], b"</s>"]  # no stray continuation
    after_e0 = int(guard.next_state[0, 1])
    assert allowed[after_e0] == [b"\xa0"]  # E0 94 would be an overlong encoding
    assert allowed[int(guard.next_state[after_e0, 3])] == [b"\x94", b"\xa0", b"\x89"]
    assert int(guard.next_state[0, 5]) == 0 and int(guard.next_state[0, 7]) != 0  # é is whole, € half
    # Packed like xgrammar's bitmasks: bit j of word i is token 32 i + j.
    for state in range(8):
        unpacked = [(int(guard.bits[state, t // 32]) >> (t % 32)) & 1 == 1 for t in range(len(vocabulary))]
        assert unpacked == guard.allowed[state].tolist()


def test_a_masking_failure_ends_the_constrained_rows_and_spares_the_free_ones(
    tiny: tuple[Any, Any], grammars: Grammars, monkeypatch: pytest.MonkeyPatch
) -> None:
    request = guided(grammars, {"json": PERSON})
    ids = chat_ids(tiny, "x", request)
    free = SamplingParams(max_tokens=12, temperature=0)
    e = new_engine(tiny)
    e.submit(1, ids, SamplingParams(max_tokens=50, temperature=0), request.constraint)
    e.submit(2, ids, free)
    assert e._masker is not None

    def broken(*_: Any) -> None:
        raise RuntimeError("bitmask exploded")

    monkeypatch.setattr(e._masker, "mask", broken)
    results = run_to_end(e, {})
    assert results[1].finish_reason == "error" and "bitmask exploded" in results[1].error
    alone = new_engine(tiny)
    alone.submit(2, ids, free)
    assert results[2].finish_reason == "length" and results[2].text == run_to_end(alone, {})[2].text
