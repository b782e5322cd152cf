"""Continuous batching: how the `llm` model's throughput grows with concurrent streams.

ChatStream through the adapter and the same request streamed straight from Triton, at 1, 4, 16 and
64 closed-loop streams, alternating in rounds, for two sets of weights served as `llm`:
- `tiny`: the 2-layer random-weight Llama the tests use (the engine's own overhead shows);
- `chat`: SmolLM2-135M-Instruct, the trained model `make run` serves.

Writes benchmarks/results/<out>.md and <out>.json; with --before FILE.json (a run of the same
benchmark on an earlier engine, e.g. `--out batching-before`) the table gains before/after columns.

    .venv/bin/python -m benchmarks.batching [--seconds 6] [--streams 1,4,16,64] [--weights tiny,chat]
        [--model-repository DIR] [--out batching] [--before benchmarks/results/batching-before.json]

tokens/s counts generated tokens that arrived in the window: one per message with text, and the
final message adds what the request's completion token count says the earlier ones did not carry
(under load the model and the adapter merge several tokens' text into one message). TTFC: request
sent -> first text. Inter-token: per message with text, time since the previous one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from benchmarks.loadgen import StreamResult, closed_loop_streams, merge_streams
from benchmarks.streaming import Paths
from tests.harness import CHAT_LLM, TINY_LLM, build_small_models, start_adapter, stop_adapter

RESULTS = Path(__file__).parent / "results"
ROUNDS = 3
WEIGHTS = {"tiny": TINY_LLM, "chat": CHAT_LLM}
# weights -> (max_tokens per request, how much longer its rounds are than --seconds): the trained
# model makes ~12 tokens/s alone on 2 cores, so its rounds must be long enough to see requests end.
WORKLOAD = {"tiny": (64, 1.0), "chat": (16, 3.0)}

Cell = tuple[str, int]  # weights, streams


async def _measure(adapter: str, triton: str, weights: str, streams: int, seconds: float) -> dict[str, StreamResult]:
    max_tokens, scale = WORKLOAD[weights]
    paths = Paths(adapter, triton, "llm", "chat", max_tokens, count_tokens=True)
    try:
        for path in (paths.direct, paths.adapter):  # warm: first requests pay one-time costs
            async for _ in path(0):
                pass
        runs: dict[str, list[StreamResult]] = {"triton": [], "adapter": []}
        for _ in range(ROUNDS):
            for name, opener in (("triton", paths.direct), ("adapter", paths.adapter)):
                runs[name].append(await closed_loop_streams(opener, streams, seconds * scale / ROUNDS, 0.5 * scale))
        return {name: merge_streams(results) for name, results in runs.items()}
    finally:
        await paths.close()


def _p(values: list[float], q: float) -> float:
    return StreamResult.percentile(values, q)


def table(results: dict[Cell, dict[str, StreamResult]], before: dict[str, dict[str, float]] | None) -> str:
    head = (
        "| weights | streams | path | tokens/s | x 1 stream | req/s | TTFC p50 | p90 | p99 ms | TTFC p50 / 1 stream "
        "| inter-token p50 | p90 | p99 ms | adapter / direct |"
    )
    if before:
        head += " before: tokens/s | after / before |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for (weights, streams), paths in results.items():
        for name, label in (("triton", "Triton direct"), ("adapter", "adapter")):
            r = paths[name]
            one = results.get((weights, 1), {}).get(name)
            scaling = r.chunks_per_s / one.chunks_per_s if one and one.chunks_per_s else float("nan")
            ttfc_growth = _p(r.ttfc, 50) / _p(one.ttfc, 50) if one else float("nan")
            ratio = ""
            if name == "adapter" and paths["triton"].chunks_per_s:
                ratio = f"{r.chunks_per_s / paths['triton'].chunks_per_s:.2f}x"
            star = "" if r.ttfc_steady else "*"
            row = (
                f"| {weights} | {streams} | {label} | {r.chunks_per_s:.0f} | {scaling:.2f}x | {r.requests_per_s:.2f} "
                f"| {_p(r.ttfc, 50):.1f}{star} | {_p(r.ttfc, 90):.1f}{star} | {_p(r.ttfc, 99):.1f}{star} "
                f"| {ttfc_growth:.2f}x | {_p(r.gaps_ms, 50):.1f} | {_p(r.gaps_ms, 90):.1f} | {_p(r.gaps_ms, 99):.1f} "
                f"| {ratio} |"
            )
            if before:
                old = before.get(f"{weights}/{streams}/{name}", {}).get("tokens_per_s")
                row += f" {old:.0f} | {r.chunks_per_s / old:.2f}x |" if old else " | |"
            lines.append(row)
    return "\n".join(lines)


def summary(results: dict[Cell, dict[str, StreamResult]]) -> dict[str, dict[str, float]]:
    out = {}
    for (weights, streams), paths in results.items():
        for name, r in paths.items():
            out[f"{weights}/{streams}/{name}"] = {
                "tokens_per_s": r.chunks_per_s,
                "requests_per_s": r.requests_per_s,
                "ttfc_p50_ms": _p(r.ttfc, 50),
                "ttfc_p99_ms": _p(r.ttfc, 99),
                "inter_token_p50_ms": _p(r.gaps_ms, 50),
                "inter_token_p99_ms": _p(r.gaps_ms, 99),
            }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=6.0, help="per cell and path (x3 for chat), in rounds")
    parser.add_argument("--streams", default="1,4,16,64")
    parser.add_argument("--weights", default="tiny,chat")
    parser.add_argument("--model-repository", default="", help="serve this repository (an earlier engine)")
    parser.add_argument("--out", default="batching", help="file name stem under benchmarks/results/")
    parser.add_argument("--before", default="", help="a previous run's .json: adds before/after columns")
    parser.add_argument("--note", default="", help="a line for the header (which engine, what else ran)")
    args = parser.parse_args()
    levels = [int(s) for s in args.streams.split(",")]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    build_small_models()
    results: dict[Cell, dict[str, StreamResult]] = {}
    started = time.monotonic()
    for weights in args.weights.split(","):
        workdir = Path(tempfile.mkdtemp())
        env = {
            "LLM_MODEL_ID": str(WEIGHTS[weights]),
            "PRELOAD_MODELS": "llm",
            "LOG_LEVEL": "WARNING",
            "MODEL_KEEP_ALIVE_SECONDS": "-1",
            "IMAGE_DIR": str(workdir / "images"),
        }
        if args.model_repository:
            env["MODEL_REPOSITORY"] = args.model_repository
        adapter = start_adapter(workdir / "adapter.log", env=env)
        try:
            for streams in levels:
                cell = (weights, streams)
                results[cell] = asyncio.run(
                    _measure(adapter.address, adapter.triton_grpc_url, weights, streams, args.seconds)
                )
                r = results[cell]
                print(
                    f"{weights} x{streams}: direct {r['triton'].chunks_per_s:.0f} tokens/s, "
                    f"adapter {r['adapter'].chunks_per_s:.0f} tokens/s",
                    flush=True,
                )
        finally:
            stop_adapter(adapter)
    elapsed = time.monotonic() - started
    before = json.loads(Path(args.before).read_text())["cells"] if args.before else None
    lines = table(results, before)
    header = (
        f"Continuous batching: ChatStream on `llm`, {args.seconds:g} s per cell and path (chat weights x3) in"
        f" {ROUNDS} alternating rounds after warm-ups, {elapsed:.0f} s in all; {os.cpu_count()} cores shared by"
        f" load generator, adapter and Triton. max_tokens: tiny {WORKLOAD['tiny'][0]}, chat {WORKLOAD['chat'][0]}."
        " `x 1 stream`: tokens/s over the same path's 1-stream figure. * = TTFC of each loop's first requests"
        " only (no later request got its first token inside the window)." + (f" {args.note}" if args.note else "")
    )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.out}.md").write_text(header + "\n\n" + lines + "\n")
    cells = summary(results)
    (RESULTS / f"{args.out}.json").write_text(
        json.dumps({"note": args.note, "seconds": args.seconds, "cells": cells, "raw": _raw(results)}, indent=1)
    )
    print(lines)


def _raw(results: dict[Cell, dict[str, StreamResult]]) -> dict[str, dict[str, object]]:
    return {
        f"{w}/{s}/{name}": {k: v for k, v in asdict(r).items() if k not in ("ttfc_ms", "gaps_ms", "first_ttfc_ms")}
        for (w, s), paths in results.items()
        for name, r in paths.items()
    }


if __name__ == "__main__":
    main()
