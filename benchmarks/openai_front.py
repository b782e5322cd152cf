"""Streamed chat through the OpenAI-compatible HTTP front (`POST /v1/chat/completions`, `stream:
true`, server-sent events) vs ChatStream through the gRPC front, on the same adapter, model and
concurrency (1, 16, 64 streams), in one run, alternating in rounds. Two models:

- `chunk_counter` (test-only, no compute): numbered chunks as fast as it can, so the figures are
  the cost of each front alone;
- `llm`: the tiny random-weight Llama-style model the tests serve (tests/harness.py TINY_LLM).

Both clients are lean, so that the load generator (which shares the CPU) costs each path alike:
gRPC through grpc.aio stubs (C core); HTTP through a minimal HTTP/1.1 client on asyncio streams
(kept-alive connections, chunked SSE, each event's JSON decoded), not httpx or the SDK's models.

Writes benchmarks/results/openai_front.md and .json (or --out).

    .venv/bin/python -m benchmarks.openai_front [--seconds 6] [--streams 1,16,64]

chunks/s counts text chunks (model responses) as benchmarks/streaming.py does: chunk_counter's
numbered items in each delta, llm's deltas with text. TTFC: request sent -> first text.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from urllib.parse import urlsplit

import grpc

from adapter.gen.inference.v1 import inference_pb2 as pb
from adapter.gen.inference.v1 import inference_pb2_grpc as pb_grpc
from benchmarks.loadgen import StreamResult, closed_loop_streams, merge_streams
from benchmarks.streaming import MESSAGES, ROUNDS, TIME_SCALE, WORKLOADS, _count_chunk_counter, _count_one
from tests.harness import TINY_LLM, build_small_models, start_adapter, stop_adapter

RESULTS = Path(__file__).parent / "results"


class Fronts:
    """Opens one streamed chat per call through each front; yields (text chunks, final) per message
    (per SSE event over HTTP, per ChatStreamResponse over gRPC)."""

    def __init__(self, grpc_address: str, http_url: str, model: str, max_tokens: int, streams: int) -> None:
        self.count: Callable[[bytes], int] = _count_chunk_counter if model == "chunk_counter" else _count_one
        self._channel = grpc.aio.insecure_channel(grpc_address)
        self._stub = pb_grpc.InferenceServiceStub(self._channel)
        self._request = pb.ChatStreamRequest(
            model=model,
            messages=[pb.ChatMessage(**m) for m in MESSAGES],
            options=pb.GenerationOptions(max_tokens=max_tokens),
        )
        # One kept-alive connection per concurrent stream, as an SDK's pool keeps, spoken by a
        # minimal HTTP/1.1 client: httpx (pure Python, h11) would cost the shared CPU several times
        # what grpc.aio's C core costs the gRPC path, and the figures are to compare the fronts.
        address = urlsplit(http_url)
        self._host, self._port = address.hostname or "127.0.0.1", address.port or 80
        body = json.dumps({"model": model, "messages": MESSAGES, "max_tokens": max_tokens, "stream": True}).encode()
        self._post = (
            f"POST /v1/chat/completions HTTP/1.1\r\nhost: {self._host}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n\r\n"
        ).encode() + body
        self._connections: dict[int, tuple[asyncio.StreamReader, asyncio.StreamWriter]] = {}

    async def close(self) -> None:
        await self._channel.close()
        for _, writer in self._connections.values():
            writer.close()

    async def grpc(self, client: int) -> AsyncIterator[tuple[int, bool]]:
        call = self._stub.ChatStream(self._request, timeout=300)
        done = False
        try:
            async for response in call:
                done = response.done
                yield self.count(response.delta.encode()), done
                if done:
                    return
        finally:
            if not done:
                call.cancel()

    async def _connection(self, client: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        connection = self._connections.get(client)
        if connection is None:
            connection = self._connections[client] = await asyncio.open_connection(self._host, self._port)
            # As httpx and curl do: no Nagle delay on the request.
            connection[1].get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return connection

    async def http(self, client: int) -> AsyncIterator[tuple[int, bool]]:
        reader, writer = await self._connection(client)
        writer.write(self._post)
        done = False
        try:
            status = await reader.readline()
            if not status:  # the server closed the idle connection (keep-alive timeout): a new one
                writer.close()
                self._connections.pop(client, None)
                reader, writer = await self._connection(client)
                writer.write(self._post)
                status = await reader.readline()
            if not status.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"HTTP answered {status!r}")
            while await reader.readline() != b"\r\n":  # headers; the body is chunked
                pass
            pending = b""
            while not done:
                size = int(await reader.readline(), 16)
                data = await reader.readexactly(size + 2)
                if size == 0:
                    break
                pending += data[:-2]
                *events, pending = pending.split(b"\n\n")
                for event in events:
                    if event == b"data: [DONE]":
                        done = True
                        yield 0, True
                        break
                    choices = json.loads(event[6:]).get("choices") or [{}]
                    text = choices[0].get("delta", {}).get("content") or ""
                    yield self.count(text.encode()), False
            if done:  # the empty last chunk, so the connection is ready for the next request
                await reader.readexactly(5)
        finally:
            if not done:  # abandoned (the round's end): this connection's response is cut short
                writer.close()
                self._connections.pop(client, None)


async def _measure(
    grpc_address: str, http_url: str, model: str, streams: int, seconds: float
) -> dict[str, StreamResult]:
    fronts = Fronts(grpc_address, http_url, model, WORKLOADS[model], streams)
    try:
        for warm in (fronts.grpc, fronts.http):
            async for _ in warm(0):
                pass
        runs: dict[str, list[StreamResult]] = {"grpc": [], "http": []}
        scale = TIME_SCALE[model]
        for _ in range(ROUNDS):
            for path, opener in (("grpc", fronts.grpc), ("http", fronts.http)):
                runs[path].append(
                    await closed_loop_streams(opener, streams, seconds * scale / ROUNDS, warmup_s=0.5 * scale)
                )
        return {path: merge_streams(results) for path, results in runs.items()}
    finally:
        await fronts.close()


Cell = tuple[str, int]  # model, streams
HEADER = (
    "| model | streams | front | chunks/s | req/s | chunks/event | TTFC p50 | p90 | p99 ms "
    "| inter-chunk p50 | p99 ms | HTTP / gRPC chunks/s | added TTFC p50 / p99 ms |"
)


def table(results: dict[Cell, dict[str, StreamResult]]) -> tuple[str, list[str], list[dict[str, object]]]:
    p = StreamResult.percentile
    lines = [HEADER, "|" + "---|" * (HEADER.count("|") - 1)]
    summary, rows = [], []
    for (model, streams), paths in results.items():
        g, h = paths["grpc"], paths["http"]
        ratio = h.chunks_per_s / g.chunks_per_s if g.chunks_per_s else float("nan")
        added50, added99 = p(h.ttfc, 50) - p(g.ttfc, 50), p(h.ttfc, 99) - p(g.ttfc, 99)
        for name, r in (("gRPC ChatStream", g), ("HTTP /v1/chat/completions", h)):
            star = "" if r.ttfc_steady else "*"
            per = r.chunks / r.messages if r.messages else float("nan")
            last = (f"{ratio:.2f}x", f"{added50:+.2f} / {added99:+.2f}") if r is h else ("", "")
            lines.append(
                f"| {model} | {streams} | {name} | {r.chunks_per_s:.0f} | {r.requests_per_s:.1f} | {per:.2f} "
                f"| {p(r.ttfc, 50):.2f}{star} | {p(r.ttfc, 90):.2f}{star} | {p(r.ttfc, 99):.2f}{star} "
                f"| {p(r.gaps_ms, 50):.2f} | {p(r.gaps_ms, 99):.2f} | {last[0]} | {last[1]} |"
            )
        summary.append(
            f"{model:13s} {streams:3d} streams: HTTP chunks/s {ratio:.2f}x gRPC, "
            f"added TTFC p50 {added50:+.2f} ms, p99 {added99:+.2f} ms"
        )
        rows.append(
            {
                "model": model,
                "streams": streams,
                "grpc_chunks_per_s": g.chunks_per_s,
                "http_chunks_per_s": h.chunks_per_s,
                "ratio": ratio,
                "grpc_ttfc_ms": {"p50": p(g.ttfc, 50), "p90": p(g.ttfc, 90), "p99": p(g.ttfc, 99)},
                "http_ttfc_ms": {"p50": p(h.ttfc, 50), "p90": p(h.ttfc, 90), "p99": p(h.ttfc, 99)},
                "added_ttfc_ms": {"p50": added50, "p99": added99},
            }
        )
    return "\n".join(lines), summary, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=6.0, help="per cell and front, split in rounds")
    parser.add_argument("--streams", default="1,16,64")
    parser.add_argument("--models", default="chunk_counter,llm")
    parser.add_argument("--out", default="openai_front", help="file name stem under benchmarks/results/")
    args = parser.parse_args()
    levels = [int(s) for s in args.streams.split(",")]
    models = args.models.split(",")

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a timeout still stops the adapter
    build_small_models()
    workdir = Path(tempfile.mkdtemp())
    adapter = start_adapter(
        workdir / "adapter.log",
        env={
            "PRELOAD_MODELS": ",".join(models),
            "LOG_LEVEL": "WARNING",
            "MODEL_KEEP_ALIVE_SECONDS": "-1",
            "OPENAI_HTTP_MAX_CONCURRENT_REQUESTS": "256",
        },
        test_models=True,
    )
    print(f"adapter pid {adapter.process.pid}: gRPC {adapter.address}, HTTP {adapter.http_url}", flush=True)
    results: dict[Cell, dict[str, StreamResult]] = {}
    started = time.monotonic()
    try:
        for model in models:
            for streams in levels:
                results[(model, streams)] = asyncio.run(
                    _measure(adapter.address, adapter.http_url, model, streams, args.seconds)
                )
                r = results[(model, streams)]
                print(
                    f"{model} x{streams}: gRPC {r['grpc'].chunks_per_s:.0f} chunks/s, "
                    f"HTTP {r['http'].chunks_per_s:.0f} chunks/s",
                    flush=True,
                )
    finally:
        stop_adapter(adapter)
    elapsed = time.monotonic() - started
    lines, summary, rows = table(results)
    RESULTS.mkdir(exist_ok=True)
    header = (
        f"Streamed chat, HTTP front (SSE) vs gRPC front (ChatStream) on one adapter: {args.seconds:g} s per cell"
        f" and front (llm: {args.seconds * TIME_SCALE['llm']:g} s) in {ROUNDS} alternating rounds after a warm-up,"
        f" {elapsed:.0f} s in all; {os.cpu_count()} cores shared by load generator, adapter and Triton. llm is"
        f" the tiny random-weight model ({TINY_LLM.name}); max_tokens chunk_counter {WORKLOADS['chunk_counter']},"
        f" llm {WORKLOADS['llm']}. chunks/event: text chunks per SSE event or gRPC message. TTFC leaves out each"
        " loop's first request of a round except where marked *. Ratios: HTTP / gRPC in the same run.\n\n"
    )
    (RESULTS / f"{args.out}.md").write_text(header + lines + "\n")
    (RESULTS / f"{args.out}.json").write_text(json.dumps({"seconds": args.seconds, "cells": rows}, indent=2) + "\n")
    print(lines)
    print()
    print("\n".join(summary))


if __name__ == "__main__":
    main()
