"""The continuous-batching engine on the tiny Llama (real forward passes, no Triton), driven step by
step: requests join and leave a running batch, and each one's result is what it gets alone."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from model_runtime.batching import BatchingEngine, StepOutput, merge_outputs
from model_runtime.text_generation import InvalidRequest, SamplingParams
from tests.harness import TINY_LLM

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny(small_models: None) -> tuple[Any, Any]:
    tokenizer = AutoTokenizer.from_pretrained(TINY_LLM)
    model = AutoModelForCausalLM.from_pretrained(TINY_LLM).eval()
    return model, tokenizer


@dataclass
class Result:
    text: str = ""
    finish_reason: str | None = None
    completion_tokens: int = 0
    error: str = ""
    outputs: list[StepOutput] = field(default_factory=list)


def engine(tiny: tuple[Any, Any], **limits: int) -> BatchingEngine:
    model, tokenizer = tiny
    limits.setdefault("max_num_seqs", 16)
    limits.setdefault("kv_cache_tokens", 8192)
    return BatchingEngine(model, tokenizer, CPU, **limits)  # type: ignore[arg-type]


def collect(results: dict[int, Result], outputs: Iterable[StepOutput]) -> None:
    for output in outputs:
        result = results.setdefault(output.request_id, Result())
        assert result.finish_reason is None, f"request {output.request_id} got output after its end"
        result.outputs.append(output)
        result.text += output.text
        if output.finished:
            result.finish_reason = output.finish_reason
            result.completion_tokens = output.completion_tokens
            result.error = output.error


def run_to_end(e: BatchingEngine, results: dict[int, Result], max_steps: int = 2000) -> dict[int, Result]:
    for _ in range(max_steps):
        if not e.has_work():
            return results
        collect(results, e.step())
    raise AssertionError("the engine did not finish")


def prompt(tiny: tuple[Any, Any], text: str) -> list[int]:
    return list(tiny[1](text)["input_ids"])


def alone(tiny: tuple[Any, Any], ids: list[int], params: SamplingParams) -> Result:
    e = engine(tiny)
    e.submit(1, ids, params)
    return run_to_end(e, {})[1]


PROMPTS = ["def main():", "import os\nimport sys\n\nclass Parser", "x", "Hello there, how are you today?"]


def test_requests_joining_mid_generation_each_get_what_they_get_alone(tiny: tuple[Any, Any]) -> None:
    params = [
        SamplingParams(max_tokens=30, temperature=0),
        SamplingParams(max_tokens=25, temperature=0.9, seed=11),
        SamplingParams(max_tokens=40, temperature=0.7, top_k=50, top_p=0.9, seed=12),
        SamplingParams(max_tokens=10, temperature=1.2, seed=13),
    ]
    e = engine(tiny)
    results: dict[int, Result] = {}
    e.submit(0, prompt(tiny, PROMPTS[0]), params[0])
    for _ in range(6):  # request 0 runs alone for a while, then the others join one by one
        collect(results, e.step())
    for i in (1, 2, 3):
        e.submit(i, prompt(tiny, PROMPTS[i]), params[i])
        collect(results, e.step())
        assert e.stats().running == i + 1
    run_to_end(e, results)
    for i in range(4):
        expected = alone(tiny, prompt(tiny, PROMPTS[i]), params[i])
        assert results[i].text == expected.text, f"request {i}"
        assert results[i].finish_reason == expected.finish_reason == "length"
        assert results[i].completion_tokens == params[i].max_tokens


def test_seeded_request_gives_the_same_text_alone_and_amid_sixteen_others(tiny: tuple[Any, Any]) -> None:
    seeded = SamplingParams(max_tokens=40, temperature=0.9, top_p=0.95, seed=1234)
    ids = prompt(tiny, "Hello")
    e = engine(tiny, max_num_seqs=32)
    for i in range(16):
        e.submit(100 + i, prompt(tiny, PROMPTS[i % 4]), SamplingParams(max_tokens=20 + i, temperature=1.0))
    collect(results := {}, e.step())
    e.submit(1, ids, seeded)
    run_to_end(e, results)
    assert results[1].text == alone(tiny, ids, seeded).text
    other_seed = alone(tiny, ids, SamplingParams(max_tokens=40, temperature=0.9, top_p=0.95, seed=4321))
    assert other_seed.text != results[1].text


def test_cancelling_one_request_ends_it_at_the_next_step_and_leaves_the_others(tiny: tuple[Any, Any]) -> None:
    e = engine(tiny)
    greedy = SamplingParams(max_tokens=40, temperature=0)
    e.submit(1, prompt(tiny, PROMPTS[0]), greedy)
    e.submit(2, prompt(tiny, PROMPTS[1]), greedy)
    results: dict[int, Result] = {}
    for _ in range(5):
        collect(results, e.step())
    e.cancel(1)
    collect(results, e.step())
    assert results[1].finish_reason == "cancelled"
    assert results[1].completion_tokens == 6  # the first step prefills and decodes: two tokens
    assert e.stats().running == 1
    run_to_end(e, results)
    assert results[2].text == alone(tiny, prompt(tiny, PROMPTS[1]), greedy).text


def test_cancelling_a_waiting_request_ends_it_without_tokens(tiny: tuple[Any, Any]) -> None:
    e = engine(tiny, max_num_seqs=1)
    e.submit(1, prompt(tiny, "a"), SamplingParams(max_tokens=20, temperature=0))
    e.submit(2, prompt(tiny, "b"), SamplingParams(max_tokens=20, temperature=0))
    results: dict[int, Result] = {}
    collect(results, e.step())
    e.cancel(2)
    run_to_end(e, results)
    assert results[2].finish_reason == "cancelled" and results[2].completion_tokens == 0
    assert results[1].finish_reason == "length"


def test_stop_sequence_ends_one_request_inside_a_batch_with_the_text_before_it(tiny: tuple[Any, Any]) -> None:
    ids = prompt(tiny, PROMPTS[1])
    full = alone(tiny, ids, SamplingParams(max_tokens=60, temperature=0.8, seed=99)).text
    stop = full[20:23]
    assert len(stop) == 3 and stop.strip(), f"pick another seed: {full!r}"
    e = engine(tiny)
    e.submit(1, ids, SamplingParams(max_tokens=60, temperature=0.8, seed=99, stop=(stop,)))
    e.submit(2, prompt(tiny, PROMPTS[0]), SamplingParams(max_tokens=60, temperature=0))
    results = run_to_end(e, {})
    assert results[1].finish_reason == "stop"
    assert results[1].text == full[: full.index(stop)]
    assert results[2].finish_reason == "length"


def test_penalties_hold_per_request_inside_the_batch(tiny: tuple[Any, Any]) -> None:
    ids = prompt(tiny, PROMPTS[0])
    penalised = SamplingParams(max_tokens=40, temperature=0, repetition_penalty=1.8, frequency_penalty=1.0)
    plain = SamplingParams(max_tokens=40, temperature=0)
    e = engine(tiny)
    e.submit(1, ids, penalised)
    e.submit(2, ids, plain)
    results = run_to_end(e, {})
    assert results[1].text == alone(tiny, ids, penalised).text
    assert results[2].text == alone(tiny, ids, plain).text
    assert results[1].text != results[2].text  # the penalty changed that row only


def test_a_failure_in_one_request_ends_that_request_only(tiny: tuple[Any, Any], monkeypatch: Any) -> None:
    e = engine(tiny)
    penalised = SamplingParams(max_tokens=30, temperature=0.9, seed=5, repetition_penalty=1.3)
    sampled = SamplingParams(max_tokens=30, temperature=0.9, seed=5)
    e.submit(1, prompt(tiny, PROMPTS[0]), penalised)
    e.submit(2, prompt(tiny, PROMPTS[1]), sampled)
    results: dict[int, Result] = {}
    for _ in range(3):
        collect(results, e.step())
    broken = next(s for s in e._rows if s.request_id == 1)

    def fail(*args: Any) -> torch.Tensor:
        raise RuntimeError("index out of range in penalties")

    monkeypatch.setattr(broken.sampler, "penalize", fail)
    run_to_end(e, results)
    assert results[1].finish_reason == "error" and "index out of range" in results[1].error
    assert results[2].finish_reason == "length"
    assert results[2].text == alone(tiny, prompt(tiny, PROMPTS[1]), sampled).text


def test_a_request_whose_probabilities_turn_non_finite_ends_alone(tiny: tuple[Any, Any], monkeypatch: Any) -> None:
    e = engine(tiny)
    sampled = SamplingParams(max_tokens=30, temperature=0.9, seed=5)
    e.submit(1, prompt(tiny, PROMPTS[0]), SamplingParams(max_tokens=30, temperature=0.9, seed=6))
    e.submit(2, prompt(tiny, PROMPTS[1]), sampled)
    results: dict[int, Result] = {}
    collect(results, e.step())
    real_forward = e._forward

    def nan_for_request_1(*args: Any) -> torch.Tensor:
        logits = real_forward(*args).clone()
        rows = [i for i, s in enumerate(e._rows) if s.request_id == 1]
        logits[rows] = float("nan")
        return logits

    monkeypatch.setattr(e, "_forward", nan_for_request_1)
    run_to_end(e, results)
    assert results[1].finish_reason == "error" and "not finite" in results[1].error
    assert results[2].finish_reason == "length"
    assert results[2].text == alone(tiny, prompt(tiny, PROMPTS[1]), sampled).text


def test_at_most_max_num_seqs_run_and_the_rest_wait_in_arrival_order(tiny: tuple[Any, Any]) -> None:
    e = engine(tiny, max_num_seqs=2)
    for i in range(5):
        e.submit(i, prompt(tiny, PROMPTS[i % 4]), SamplingParams(max_tokens=5 + i, temperature=0))
    started: list[int] = []
    results: dict[int, Result] = {}
    while e.has_work():
        outputs = e.step()
        started += [o.request_id for o in outputs if o.first_token]
        collect(results, outputs)
        assert e.stats().running <= 2
    assert started == [0, 1, 2, 3, 4]
    assert all(results[i].completion_tokens == 5 + i for i in range(5))


def test_kv_cache_budget_holds_requests_back_and_refuses_one_that_never_fits(tiny: tuple[Any, Any]) -> None:
    ids = prompt(tiny, "hello")
    e = engine(tiny, kv_cache_tokens=2 * (len(ids) + 20))
    with pytest.raises(InvalidRequest, match="kv_cache_tokens"):
        e.submit(9, ids, SamplingParams(max_tokens=1000))
    for i in range(3):
        e.submit(i, ids, SamplingParams(max_tokens=20, temperature=0))
    collect(results := {}, e.step())
    stats = e.stats()
    assert (stats.running, stats.waiting) == (2, 1)
    assert 0 < stats.kv_cache_usage <= 1
    run_to_end(e, results)
    assert [results[i].finish_reason for i in range(3)] == ["length"] * 3


def test_finished_rows_leave_the_cache(tiny: tuple[Any, Any]) -> None:
    e = engine(tiny)
    e.submit(1, prompt(tiny, PROMPTS[1]), SamplingParams(max_tokens=3, temperature=0))  # long prompt, short life
    e.submit(2, prompt(tiny, "x"), SamplingParams(max_tokens=30, temperature=0))
    results: dict[int, Result] = {}
    for _ in range(5):
        collect(results, e.step())
    assert results[1].finish_reason == "length"
    # 6 tokens so far (the last not yet in the cache), and the long prompt's padding trimmed away.
    assert e._mask is not None and e._mask.shape == (1, len(prompt(tiny, "x")) + 5)
    run_to_end(e, results)
    assert e._cache is None  # nothing running: the cache is gone


def test_the_engine_thread_serves_concurrent_submissions(tiny: tuple[Any, Any]) -> None:
    delivered: list[StepOutput] = []
    model, tokenizer = tiny
    e = BatchingEngine(model, tokenizer, CPU, max_num_seqs=8, kv_cache_tokens=4096, deliver=delivered.extend)
    e.warm_up()
    assert e.kv_bytes_per_token > 0
    e.start()
    try:
        for i in range(6):
            e.submit(i, prompt(tiny, PROMPTS[i % 4]), SamplingParams(max_tokens=12, temperature=0))
        deadline = time.monotonic() + 60
        while sum(o.finished for o in delivered) < 6 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        e.stop()
    assert sorted(o.request_id for o in delivered if o.finished) == list(range(6))
    assert all(o.completion_tokens == 12 for o in delivered if o.finished)


def test_a_kv_budget_larger_than_the_free_memory_fails_the_load(tiny: tuple[Any, Any]) -> None:
    e = engine(tiny, kv_cache_tokens=2**50)
    e.warm_up()
    with pytest.raises(ValueError, match="lower kv_cache_tokens"):
        e.check_budget_fits()
    sane = engine(tiny, kv_cache_tokens=4096)
    sane.warm_up()
    sane.check_budget_fits()


def test_outputs_of_several_steps_merge_into_one_per_request_in_order() -> None:
    outputs = [
        StepOutput(1, "He", first_token=True),
        StepOutput(2, "A", first_token=True),
        StepOutput(1, "llo"),
        StepOutput(2, "B", finish_reason="length", completion_tokens=2, prompt_tokens=3),
        StepOutput(1, "!"),
    ]
    merged = merge_outputs(outputs)
    assert [(o.request_id, o.text, o.first_token, o.finish_reason) for o in merged] == [
        (1, "Hello!", True, None),
        (2, "AB", True, "length"),
    ]
    assert merged[1].completion_tokens == 2 and merged[1].prompt_tokens == 3
