"""Streaming: ChatStream and GenerateStream through the adapter vs the same requests streamed straight
from Triton (tritonclient grpc.aio `stream_infer`, the inputs the adapter sends), in one run,
alternating in rounds, at 1, 16 and 64 concurrent streams. Two models:

- `chunk_counter` (test-only, no compute): streams N numbered chunks as fast as it can, so the
  figures are the cost of the hops (adapter, gRPC), not of a model;
- `llm`: the small real transformers model.

Writes benchmarks/results/streaming.md (or --out) and streaming.png.

    .venv/bin/python -m benchmarks.streaming [--seconds 6] [--streams 1,16,64] [--out streaming]

Metrics. chunks/s counts *text chunks*, i.e. model responses, not gRPC messages: the adapter may merge
responses that are ready together into one message, so for chunk_counter the load generator counts
the numbered items in each message's text. The llm's deltas carry no numbers: there it counts
messages with text on both paths (which undercounts the adapter if it ever merged llm responses).
TTFC: request sent -> first text. Inter-chunk latency: per text chunk, time since the previous one
(0 for a chunk that arrived in the same message as the one before).
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
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import numpy as np
import tritonclient.grpc.aio as triton_aio

from adapter.gen.inference.v1 import inference_pb2 as pb
from adapter.gen.inference.v1 import inference_pb2_grpc as pb_grpc
from adapter.triton.tensors import TEXT_SWITCHES
from benchmarks.loadgen import StreamResult, closed_loop_streams, merge_streams
from tests.harness import build_small_models, start_adapter, stop_adapter

RESULTS = Path(__file__).parent / "results"
STREAM_HEADERS = {"triton_grpc_error": "true"}  # as the adapter sends them
ROUNDS = 3

# model -> chunks (max_tokens) per request: short, so that a 2 s round at 64 streams still sees
# requests start and end (64 llm answers at once take seconds on 2 CPU cores).
WORKLOADS = {"chunk_counter": 32, "llm": 16}
# model -> how much longer its rounds and warm-ups are than --seconds says: an llm request at 64
# streams lasts seconds, and a round must see several of them start and end.
TIME_SCALE = {"chunk_counter": 1.0, "llm": 2.5}
MESSAGES = [{"role": "user", "content": "Write a short story about a lighthouse."}]
PROMPT = "def fibonacci(n):"


def _count_chunk_counter(text: bytes) -> int:
    return text.count(b",")  # chunk i is "i," padded with '.'


def _count_one(text: bytes) -> int:
    return 1 if text else 0


def _bytes_input(name: str, value: str) -> triton_aio.InferInput:
    tensor = triton_aio.InferInput(name, [1], "BYTES")
    tensor.set_data_from_numpy(np.array([value.encode("utf-8")], dtype=np.object_))
    return tensor


def _true_input(name: str) -> triton_aio.InferInput:
    tensor = triton_aio.InferInput(name, [1], "BOOL")
    tensor.set_data_from_numpy(np.array([True]))
    return tensor


def _first_bytes(raw: bytes) -> bytes:
    """The first element of a raw BYTES tensor (uint32 length, then the bytes)."""
    length = int.from_bytes(raw[:4], "little")
    return raw[4 : 4 + length]


class Paths:
    """Opens one stream per call through each path; yields (text chunks, final) per message.

    count_tokens: count generated tokens instead (benchmarks/batching.py): straight from Triton each
    response's num_output_tokens; through the adapter each message with text counts one, and the
    final one adds what the request's completion token count says the earlier messages did not carry
    (the model and the adapter merge tokens' text under load)."""

    def __init__(
        self, adapter_address: str, triton_url: str, model: str, rpc: str, max_tokens: int, count_tokens: bool = False
    ) -> None:
        self.model, self.rpc, self.count_tokens = model, rpc, count_tokens
        self.count: Callable[[bytes], int] = _count_chunk_counter if model == "chunk_counter" else _count_one
        self._channel = grpc.aio.insecure_channel(adapter_address)
        self._stub = pb_grpc.InferenceServiceStub(self._channel)
        self._triton = triton_aio.InferenceServerClient(triton_url)
        options = pb.GenerationOptions(max_tokens=max_tokens)
        if rpc == "chat":
            self._request: pb.ChatStreamRequest | pb.GenerateStreamRequest = pb.ChatStreamRequest(
                model=model, messages=[pb.ChatMessage(**m) for m in MESSAGES], options=options
            )
            second = _bytes_input("messages", json.dumps(MESSAGES))
        else:
            self._request = pb.GenerateStreamRequest(model=model, prompt=PROMPT, options=options)
            second = _bytes_input("text_input", PROMPT)
        # What TritonGateway.stream_text sends for these options: the dialect's switches all on
        # (streamed, no prompt in front, finish_reason and token counts).
        self._inputs = [
            _bytes_input("sampling_parameters", json.dumps({"max_tokens": max_tokens})),
            second,
            *(_true_input(name) for name in TEXT_SWITCHES),
        ]

    async def close(self) -> None:
        await self._channel.close()
        await self._triton.close()

    async def adapter(self, client: int) -> AsyncIterator[tuple[int, bool]]:
        method = self._stub.ChatStream if self.rpc == "chat" else self._stub.GenerateStream
        call = method(self._request, timeout=300)
        done, seen = False, 0
        try:
            async for response in call:
                done = response.done
                count = self.count(response.delta.encode())
                if done and self.count_tokens:
                    count = max(count, response.usage.completion_tokens - seen)
                seen += count
                yield count, done
                if done:
                    return
        finally:
            if not done:
                call.cancel()

    async def direct(self, client: int) -> AsyncIterator[tuple[int, bool]]:
        async def one_request() -> AsyncIterator[dict[str, object]]:
            yield {"model_name": self.model, "inputs": self._inputs}

        responses = self._triton.stream_infer(one_request(), headers=STREAM_HEADERS)
        done = False
        try:
            async for result, error in responses:
                if error is not None:
                    raise error
                # The raw response, not as_numpy: the load generator's CPU is shared with the hops.
                response = result.get_response()
                text, tokens = b"", 0
                for i, output in enumerate(response.outputs):
                    if output.name == "text_output":
                        text = _first_bytes(response.raw_output_contents[i])
                    elif output.name == "finish_reason":
                        # "None" until the last response (vLLM's dialect).
                        done = _first_bytes(response.raw_output_contents[i]) != b"None"
                    elif output.name == "num_output_tokens":
                        tokens = int.from_bytes(response.raw_output_contents[i][:4], "little")
                count = tokens if self.count_tokens else self.count(text)
                yield count, done
                if done:
                    return
        finally:
            if not done:
                responses.cancel()


async def _warm(paths: Paths) -> None:
    for path in (paths.direct, paths.adapter):
        async for _ in path(0):
            pass


async def _measure(
    adapter_address: str, triton_url: str, model: str, rpc: str, streams: int, seconds: float
) -> dict[str, StreamResult]:
    paths = Paths(adapter_address, triton_url, model, rpc, WORKLOADS[model])
    try:
        await _warm(paths)
        runs: dict[str, list[StreamResult]] = {"triton": [], "adapter": []}
        scale = TIME_SCALE[model]
        for _ in range(ROUNDS):
            for path, opener in (("triton", paths.direct), ("adapter", paths.adapter)):
                runs[path].append(
                    await closed_loop_streams(opener, streams, seconds * scale / ROUNDS, warmup_s=0.5 * scale)
                )
        return {path: merge_streams(results) for path, results in runs.items()}
    finally:
        await paths.close()


Cell = tuple[str, str, int]  # model, rpc, streams

HEADER = (
    "| model | rpc | streams | path | chunks/s | req/s | chunks/msg | TTFC p50 | p90 | p99 ms "
    "| inter-chunk p50 | p90 | p99 ms | ratio chunks/s | added TTFC p50 / p99 ms |"
)
HEADER_RULE = "|" + "---|" * (HEADER.count("|") - 1)


def _row(cell: Cell, path: str, r: StreamResult, ratio: str, added: str) -> str:
    model, rpc, streams = cell
    p = StreamResult.percentile
    per_msg = r.chunks / r.messages if r.messages else float("nan")
    star = "" if r.ttfc_steady else "*"
    return (
        f"| {model} | {rpc} | {streams} | {path} | {r.chunks_per_s:.0f} | {r.requests_per_s:.1f} | {per_msg:.2f} "
        f"| {p(r.ttfc, 50):.2f}{star} | {p(r.ttfc, 90):.2f}{star} | {p(r.ttfc, 99):.2f}{star} "
        f"| {p(r.gaps_ms, 50):.2f} | {p(r.gaps_ms, 90):.2f} | {p(r.gaps_ms, 99):.2f} | {ratio} | {added} |"
    )


def table(results: dict[Cell, dict[str, StreamResult]]) -> tuple[str, list[str]]:
    lines = [HEADER, HEADER_RULE]
    summary = []
    p = StreamResult.percentile
    for cell, paths in results.items():
        direct, adapter = paths["triton"], paths["adapter"]
        ratio = adapter.chunks_per_s / direct.chunks_per_s if direct.chunks_per_s else float("nan")
        added50 = p(adapter.ttfc, 50) - p(direct.ttfc, 50)
        added99 = p(adapter.ttfc, 99) - p(direct.ttfc, 99)
        lines.append(_row(cell, "Triton direct", direct, "", ""))
        lines.append(_row(cell, "adapter", adapter, f"{ratio:.2f}x", f"{added50:+.2f} / {added99:+.2f}"))
        model, rpc, streams = cell
        summary.append(
            f"{model:13s} {rpc:8s} {streams:3d} streams: chunks/s {ratio:.2f}x direct, "
            f"TTFC p50 {p(adapter.ttfc, 50) / p(direct.ttfc, 50):.2f}x ({added50:+.2f} ms), "
            f"p99 {p(adapter.ttfc, 99) / p(direct.ttfc, 99):.2f}x ({added99:+.2f} ms)"
        )
    return "\n".join(lines), summary


def plot(results: dict[Cell, dict[str, StreamResult]], path: Path) -> None:
    try:
        import matplotlib
    except ImportError as err:
        raise SystemExit(f"no plot: matplotlib is not installed; the tables are in {RESULTS}") from err

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p = StreamResult.percentile
    cells = list(results)
    labels = [f"{m}\n{r} x{s}" for m, r, s in cells]
    ratios = [results[c]["adapter"].chunks_per_s / results[c]["triton"].chunks_per_s for c in cells]
    added50 = [p(results[c]["adapter"].ttfc, 50) - p(results[c]["triton"].ttfc, 50) for c in cells]
    added99 = [p(results[c]["adapter"].ttfc, 99) - p(results[c]["triton"].ttfc, 99) for c in cells]
    x = np.arange(len(cells))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(8, len(cells) * 0.9), 7), sharex=True)
    top.bar(x, ratios, color="tab:blue")
    top.axhline(1.0, color="black", linewidth=0.8)
    top.axhline(0.95, color="tab:red", linestyle="--", linewidth=0.8, label="target 0.95x")
    top.set_ylabel("adapter / direct\n(text chunks/s)")
    top.legend(loc="lower right")
    width = 0.4
    bottom.bar(x - width / 2, added50, width, label="added TTFC p50")
    bottom.bar(x + width / 2, added99, width, label="added TTFC p99")
    bottom.axhline(0, color="black", linewidth=0.8)
    bottom.axhline(1.0, color="tab:red", linestyle="--", linewidth=0.8, label="target p50 1 ms")
    bottom.set_yscale("symlog", linthresh=1.0)  # 1 ms targets and 100 ms queues on one axis
    bottom.set_ylabel("adapter - direct (ms)")
    bottom.legend(loc="upper left")
    bottom.set_xticks(x, labels, fontsize=7)
    fig.suptitle("Streaming through the adapter vs Triton direct (same run, alternating rounds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=6.0, help="per cell and path, split in rounds")
    parser.add_argument("--streams", default="1,16,64")
    parser.add_argument("--models", default="chunk_counter,llm")
    parser.add_argument("--rpcs", default="chat,generate")
    parser.add_argument("--out", default="streaming", help="file name stem under benchmarks/results/")
    parser.add_argument("--note", default="", help="a line for the header (what else ran)")
    args = parser.parse_args()
    levels = [int(s) for s in args.streams.split(",")]
    models = args.models.split(",")
    rpcs = args.rpcs.split(",")

    # A SIGTERM (timeout, Ctrl-C of make) still stops the adapter this started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    build_small_models()
    workdir = Path(tempfile.mkdtemp())
    adapter = start_adapter(
        workdir / "adapter.log",
        env={"PRELOAD_MODELS": ",".join(models), "LOG_LEVEL": "WARNING", "MODEL_KEEP_ALIVE_SECONDS": "-1"},
        test_models=True,
    )
    print(f"adapter pid {adapter.process.pid} at {adapter.address}; Triton at {adapter.triton_grpc_url}", flush=True)
    results: dict[Cell, dict[str, StreamResult]] = {}
    started = time.monotonic()
    try:
        for model in models:
            for rpc in rpcs:
                for streams in levels:
                    cell = (model, rpc, streams)
                    results[cell] = asyncio.run(
                        _measure(adapter.address, adapter.triton_grpc_url, model, rpc, streams, args.seconds)
                    )
                    r = results[cell]
                    print(
                        f"{model} {rpc} x{streams}: direct {r['triton'].chunks_per_s:.0f} chunks/s, "
                        f"adapter {r['adapter'].chunks_per_s:.0f} chunks/s",
                        flush=True,
                    )
    finally:
        stop_adapter(adapter)
    elapsed = time.monotonic() - started

    lines, summary = table(results)
    RESULTS.mkdir(exist_ok=True)
    header = (
        f"Streaming, {args.seconds:g} s per cell and path (llm: {args.seconds * TIME_SCALE['llm']:g} s) in"
        f" {ROUNDS} alternating rounds, each after a warm-up (0.5 s, llm 1.25 s), {elapsed:.0f} s in all;"
        f" {os.cpu_count()} cores shared by load generator, adapter and Triton."
        f" Requests: chunk_counter {WORKLOADS['chunk_counter']} chunks, llm max_tokens"
        f" {WORKLOADS['llm']}. chunks/s counts text chunks (model responses) that arrived, not gRPC"
        " messages (chunks/msg > 1 when the adapter merged responses that were ready together);"
        " inter-chunk latency is per text chunk (0 for a chunk that came in the same message as the one"
        " before). TTFC leaves out each loop's first request of a round (all sent at once) except where"
        " marked *: no later request started and got its first chunk inside the window (long llm"
        " requests at 64 streams), so those are the first requests'."
        " Ratios: adapter / direct in the same run." + (f" {args.note}" if args.note else "") + "\n\n"
    )
    (RESULTS / f"{args.out}.md").write_text(header + lines + "\n")
    plot(results, RESULTS / f"{args.out}.png")
    print(lines)
    print()
    print("\n".join(summary))


if __name__ == "__main__":
    main()
