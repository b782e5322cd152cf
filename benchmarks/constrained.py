"""Constrained decoding: tokens/s of JSON-schema-constrained vs free generation, same model, same
concurrency, in the batching engine (model_runtime/batching.py, no Triton: the masking's cost is
what shows), plus the one-time costs: a model's grammar setup at load, a schema's first compile and
a cached one, and a tool set's compile.

Closed loop at each concurrency: `streams` requests in flight, a finished one replaced at once, for
--seconds per mode in alternating rounds (free, constrained, free, ...) after a warm-up; each round's
clock starts after its first prefill of all the streams (on 2 cores that takes SmolLM2 seconds). Sampled at
temperature 0.7; the constrained requests' output is checked to parse and validate as it arrives.
tokens/s counts every generated token (EOS included) of the window; free requests run to
max_tokens or EOS, constrained ones to the end of their JSON.

    .venv/bin/python -m benchmarks.constrained [--seconds 20] [--streams 1,16] [--weights chat,tiny]

Writes benchmarks/results/constrained.md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from model_runtime.batching import BatchingEngine
from model_runtime.constrained import Constraint, Grammars, LogitsMasker
from model_runtime.text_generation import SamplingParams
from tests.harness import CHAT_LLM, TINY_LLM, build_small_models

RESULTS = Path(__file__).parent / "results"
WEIGHTS = {"chat": CHAT_LLM, "tiny": TINY_LLM}
ROUNDS = 2
MAX_TOKENS = 96
# A moderate schema: nested object, array, enum, bounds, a pattern.
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "email": {"type": "string", "maxLength": 40},
        "role": {"enum": ["admin", "user", "guest"]},
        "active": {"type": "boolean"},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 4},
        "address": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 24},
                "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
            },
            "required": ["city", "zip"],
        },
    },
    "required": ["name", "age", "role", "active", "address"],
}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": f"tool_{i}",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1, "maximum": 14}},
                "required": ["city"],
            },
        },
    }
    for i in range(4)
]
PROMPT = "Describe a fictional person as a JSON object with name, age, email, role, active, tags and address."


@dataclass
class Cell:
    tokens_per_s: float
    requests: int
    tokens: int
    invalid: int


def closed_loop(
    engine: BatchingEngine, ids: list[int], constraint: Constraint | None, streams: int, seconds: float
) -> Cell:
    texts: dict[int, str] = {}
    next_id = 0
    seed = 0

    def submit() -> None:
        nonlocal next_id, seed
        next_id += 1
        seed += 1
        texts[next_id] = ""
        engine.submit(next_id, ids, SamplingParams(max_tokens=MAX_TOKENS, temperature=0.7, seed=seed), constraint)

    for _ in range(streams):
        submit()
    outputs = engine.step()  # the first prefill of all the streams, outside the window
    tokens = requests = invalid = 0
    # What that step made is not the window's: those still running, and any that ended in it.
    tokens -= sum(len(s.generated) for s in engine._rows)  # noqa: SLF001 - a benchmark reads the running batch
    tokens -= sum(o.completion_tokens for o in outputs if o.finished)
    started = time.perf_counter()
    while True:
        for output in outputs:
            texts[output.request_id] += output.text
            if output.finished:
                tokens += output.completion_tokens
                requests += 1
                text = texts.pop(output.request_id)
                if constraint is not None and not _valid(text, output.finish_reason):
                    invalid += 1
                submit()
        if time.perf_counter() - started >= seconds:
            break
        outputs = engine.step()
    elapsed = time.perf_counter() - started
    # Requests still running count the tokens they made inside the window.
    for sequence in engine._rows:  # noqa: SLF001 - a benchmark reads the running batch
        tokens += len(sequence.generated)
    _drain(engine)
    return Cell(tokens / elapsed, requests, tokens, invalid)


def _valid(text: str, reason: str | None) -> bool:
    if reason == "length":
        return True  # cut by max_tokens: not a complete document, nothing to check
    try:
        jsonschema.validate(json.loads(text), SCHEMA)
    except (ValueError, jsonschema.ValidationError):
        return False
    return True


def _drain(engine: BatchingEngine) -> None:
    for sequence in list(engine._rows):  # noqa: SLF001
        engine.cancel(sequence.request_id)
    while engine.has_work():
        engine.step()


def compile_costs(tokenizer: Any, model: Any, engine: BatchingEngine) -> dict[str, float]:
    started = time.perf_counter()
    grammars = Grammars(tokenizer, int(model.config.vocab_size), engine.eos_token_ids)
    setup = time.perf_counter() - started
    firsts, cached = [], []
    for i in range(5):
        schema = {**SCHEMA, "title": f"variant {i}"}  # a new schema each time: no cache hit
        started = time.perf_counter()
        grammars.json_schema(schema, "bench")
        firsts.append(time.perf_counter() - started)
        started = time.perf_counter()
        grammars.json_schema(schema, "bench")
        cached.append(time.perf_counter() - started)
    started = time.perf_counter()
    grammars.prepare(None, json.dumps(TOOLS), '"auto"', chat=True)
    tools = time.perf_counter() - started
    return {
        "mask_16_rows_ms": mask_cost(grammars, int(model.config.vocab_size)) * 1e3,
        "grammar_setup_ms": setup * 1e3,
        "schema_compile_ms": statistics.median(firsts) * 1e3,
        "schema_cached_ms": statistics.median(cached) * 1e3,
        "tools_compile_ms": tools * 1e3,
    }


def mask_cost(grammars: Grammars, vocabulary: int, rows: int = 16, steps: int = 40) -> float:
    """Median time of one step's masking (batched fill, UTF-8 guard, apply) for `rows` constrained
    rows, each walking its grammar by a random allowed token."""
    constraint = grammars.prepare(json.dumps({"guided_decoding": {"json": SCHEMA}}), None, None, chat=True).constraint
    assert constraint is not None
    states = [constraint.start() for _ in range(rows)]
    masker = LogitsMasker()
    generator = torch.Generator().manual_seed(0)
    times = []
    for _ in range(steps):
        logits = torch.randn((rows, vocabulary), generator=generator)
        started = time.perf_counter()
        masker.mask(logits, list(range(rows)), states)
        times.append(time.perf_counter() - started)
        for row, state in enumerate(states):
            allowed = torch.isfinite(logits[row]).nonzero().flatten()
            if not state.matcher.is_terminated() and len(allowed):
                state.accept(int(allowed[torch.randint(len(allowed), (1,), generator=generator)]))
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30.0, help="per mode and cell, split over rounds")
    parser.add_argument("--streams", default="1,16")
    parser.add_argument("--weights", default="chat,tiny")
    args = parser.parse_args()
    build_small_models()
    levels = [int(s) for s in args.streams.split(",")]
    rows, costs, raw = [], {}, {}
    for weights in args.weights.split(","):
        tokenizer = AutoTokenizer.from_pretrained(WEIGHTS[weights])
        model = AutoModelForCausalLM.from_pretrained(WEIGHTS[weights]).eval()
        engine = BatchingEngine(model, tokenizer, torch.device("cpu"), max_num_seqs=64, kv_cache_tokens=65536)
        engine.warm_up()
        costs[weights] = compile_costs(tokenizer, model, engine)
        grammars = Grammars(tokenizer, int(model.config.vocab_size), engine.eos_token_ids)
        constrained = grammars.prepare(json.dumps({"guided_decoding": {"json": SCHEMA}}), None, None, chat=True)
        ids = constrained.chat_prompt_ids(tokenizer, json.dumps([{"role": "user", "content": PROMPT}]))
        for streams in levels:
            closed_loop(engine, ids, constrained.constraint, streams, 2.0)  # warm-up
            closed_loop(engine, ids, None, streams, 2.0)
            cells: dict[str, list[Cell]] = {"free": [], "json_schema": []}
            for _ in range(ROUNDS):
                for mode, constraint in (("free", None), ("json_schema", constrained.constraint)):
                    cells[mode].append(closed_loop(engine, ids, constraint, streams, args.seconds / ROUNDS))
            free = sum(c.tokens for c in cells["free"]) / args.seconds
            held = sum(c.tokens for c in cells["json_schema"]) / args.seconds
            invalid = sum(c.invalid for c in cells["json_schema"])
            done = sum(c.requests for c in cells["json_schema"])
            rows.append((weights, streams, free, held, done, invalid))
            raw[f"{weights}/{streams}"] = {k: [c.__dict__ for c in v] for k, v in cells.items()}
            print(
                f"{weights} x{streams}: free {free:.1f} tokens/s, json_schema {held:.1f} ({held / free:.2f}x)",
                flush=True,
            )
    lines = [
        "| weights | streams | free tokens/s | json_schema tokens/s | constrained / free | constrained requests "
        "(invalid) |",
        "|---|---|---|---|---|---|",
    ]
    for weights, streams, free, held, done, invalid in rows:
        lines.append(f"| {weights} | {streams} | {free:.1f} | {held:.1f} | {held / free:.2f}x | {done} ({invalid}) |")
    lines += [
        "",
        "| weights | grammar setup at load | schema first compile (median of 5) | same schema again (cache) "
        "| 4 tools, auto | masking one step, 16 rows |",
        "|---|---|---|---|---|---|",
    ]
    for weights, c in costs.items():
        lines.append(
            f"| {weights} | {c['grammar_setup_ms']:.0f} ms | {c['schema_compile_ms']:.1f} ms "
            f"| {c['schema_cached_ms']:.3f} ms | {c['tools_compile_ms']:.1f} ms | {c['mask_16_rows_ms']:.2f} ms |"
        )
    header = (
        f"Constrained decoding (xgrammar) in the batching engine, CPU ({os.cpu_count()} cores, torch threads"
        f" {torch.get_num_threads()}): closed loop at each concurrency, {args.seconds:g} s per mode in {ROUNDS}"
        f" alternating rounds after warm-ups; max_tokens {MAX_TOKENS}, temperature 0.7, the same chat prompt for"
        " both modes. Target: constrained >= 0.8x free. `invalid`: finished constrained outputs that did not"
        " parse or validate. Grammar setup: xgrammar's tokenizer info and the UTF-8 guard, once per model load."
    )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "constrained.md").write_text(header + "\n\n" + "\n".join(lines) + "\n")
    (RESULTS / "constrained.json").write_text(json.dumps({"costs": costs, "cells": raw}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
