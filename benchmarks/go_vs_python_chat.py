"""Chat streams from the Go client (maistro) vs the Python client (grpc.aio) on the same request,
against one running adapter, in one run, alternating in rounds: time to first chunk and chunks/s.

    .venv/bin/python -m benchmarks.go_vs_python_chat [--model chunk_counter] [--max-tokens 200]
        [--requests 20] [--rounds 5]

Each round runs `maistro bench-chat` (a Go binary built once, one connection, requests one after
another) and then the same requests from Python over one grpc.aio channel, each side timing its
own calls in its own process, so process start-up is not measured. The default model is the
test-only `chunk_counter` (numbered chunks, no compute), so the figures are the clients' and the
hops' cost rather than a model's. Prints a Markdown table: medians over every measured request,
and Go / Python ratios (chunks/s: higher is better; TTFC: Python's over Go's, so >1 means Go is
faster in both columns).

Definitions (identical on both sides): TTFC = call started -> first response with text;
total = call started -> the stream's end; chunks = numbered items in the text (the adapter may
merge chunks that are ready together into one message); chunks/s = chunks / total.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import grpc

from adapter.gen.inference.v1 import inference_pb2 as pb
from adapter.gen.inference.v1 import inference_pb2_grpc as pb_grpc
from tests.harness import REPO, start_adapter, stop_adapter

MAISTRO = REPO / "maistro"


def build_go_client(dest: Path) -> Path:
    binary = dest / "maistro"
    subprocess.run(["go", "build", "-o", str(binary), "."], cwd=MAISTRO, check=True)
    return binary


def run_go(binary: Path, address: str, args: argparse.Namespace) -> dict[str, list[float]]:
    out = subprocess.run(
        [
            str(binary),
            "bench-chat",
            "--config",
            "/dev/null",
            "--address",
            address,
            "--model",
            args.model,
            "--content",
            args.content,
            "--max-tokens",
            str(args.max_tokens),
            "--requests",
            str(args.requests),
            "--warmup",
            str(args.warmup),
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    result: dict[str, list[float]] = json.loads(out)
    return result


async def run_python(address: str, args: argparse.Namespace) -> dict[str, list[float]]:
    request = pb.ChatStreamRequest(
        model=args.model,
        messages=[pb.ChatMessage(role="user", content=args.content)],
        options=pb.GenerationOptions(max_tokens=args.max_tokens),
    )
    counted = args.model == "chunk_counter"
    result: dict[str, list[float]] = {"ttfc_s": [], "total_s": [], "messages": [], "chunks": []}
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        for i in range(args.warmup + args.requests):
            first = 0.0
            messages = chunks = 0
            start = time.perf_counter()
            async for response in stub.ChatStream(request):
                messages += 1
                if not response.delta:
                    continue
                if not first:
                    first = time.perf_counter() - start
                chunks += response.delta.count(",") if counted else 1
            total = time.perf_counter() - start
            if i < args.warmup:
                continue
            result["ttfc_s"].append(first)
            result["total_s"].append(total)
            result["messages"].append(messages)
            result["chunks"].append(chunks)
    return result


def summarize(runs: list[dict[str, list[float]]]) -> dict[str, float]:
    ttfc = [x for r in runs for x in r["ttfc_s"]]
    rates = [c / t for r in runs for c, t in zip(r["chunks"], r["total_s"], strict=True)]
    per_msg = [c / m for r in runs for c, m in zip(r["chunks"], r["messages"], strict=True) if m]
    return {
        "requests": len(ttfc),
        "ttfc_ms_p50": statistics.median(ttfc) * 1e3,
        "ttfc_ms_p90": statistics.quantiles(ttfc, n=10)[-1] * 1e3 if len(ttfc) > 1 else ttfc[0] * 1e3,
        "chunks_per_s_p50": statistics.median(rates),
        "chunks_per_message": statistics.mean(per_msg),
        "chunks_p50": statistics.median([c for r in runs for c in r["chunks"]]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="chunk_counter")
    parser.add_argument("--content", default="Count for me.")
    parser.add_argument("--max-tokens", type=int, default=200)
    parser.add_argument("--requests", type=int, default=20, help="measured requests per side per round")
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured requests per side per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="go-vs-python-chat-") as tmp:
        binary = build_go_client(Path(tmp))
        env = {"PRELOAD_MODELS": args.model}
        adapter = start_adapter(Path(tmp) / "adapter.log", env=env, test_models=args.model == "chunk_counter")
        try:
            go_runs, py_runs = [], []
            for _ in range(args.rounds):
                go_runs.append(run_go(binary, adapter.address, args))
                py_runs.append(asyncio.run(run_python(adapter.address, args)))
        finally:
            stop_adapter(adapter)

    go, py = summarize(go_runs), summarize(py_runs)
    print(
        f"model={args.model} max_tokens={args.max_tokens} rounds={args.rounds} "
        f"requests/side/round={args.requests} (medians over {go['requests']} requests per side)\n"
    )
    print("| client | TTFC p50 (ms) | TTFC p90 (ms) | chunks/s p50 | chunks/request | chunks/message |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, s in (("Go (maistro)", go), ("Python (grpc.aio)", py)):
        print(
            f"| {name} | {s['ttfc_ms_p50']:.2f} | {s['ttfc_ms_p90']:.2f} | {s['chunks_per_s_p50']:.0f} "
            f"| {s['chunks_p50']:.0f} | {s['chunks_per_message']:.2f} |"
        )
    ttfc50, ttfc90 = py["ttfc_ms_p50"] / go["ttfc_ms_p50"], py["ttfc_ms_p90"] / go["ttfc_ms_p90"]
    rate = go["chunks_per_s_p50"] / py["chunks_per_s_p50"]
    print(f"| **Go / Python** | {ttfc50:.2f}x (speed) | {ttfc90:.2f}x | {rate:.2f}x | | |")


if __name__ == "__main__":
    main()
