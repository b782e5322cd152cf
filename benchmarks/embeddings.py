"""Embeddings: throughput and latency through the adapter vs Triton direct, and with Triton's
dynamic batching on vs off, in one run on the same model. Writes benchmarks/results/embeddings.md.

    .venv/bin/python -m benchmarks.embeddings [--seconds 5] [--clients 1,8,32]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import struct
import tempfile
from pathlib import Path
from typing import Any

import grpc
import tritonclient.grpc as triton_sync
from tritonclient.grpc import service_pb2, service_pb2_grpc

from adapter.gen.inference.v1 import inference_pb2 as pb
from adapter.gen.inference.v1 import inference_pb2_grpc as pb_grpc
from benchmarks.loadgen import LoadResult, closed_loop, merge
from tests.harness import build_small_models, start_adapter, stop_adapter

RESULTS = Path(__file__).parent / "results"
MODEL = "embedding"
SENTENCES = [
    "a cat sits on the mat",
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Triton's dynamic batcher groups concurrent requests into one forward pass.",
    "quarterly tax filing deadline",
]


def _reload(triton_url: str, config: dict[str, Any]) -> None:
    """Reloads the model with this config. Always an explicit config: once a model was loaded with an
    override, a plain load keeps that override."""
    client = triton_sync.InferenceServerClient(triton_url)
    client.load_model(MODEL, config=json.dumps(config))
    loaded = client.get_model_config(MODEL, as_json=True)["config"]
    assert ("dynamic_batching" in loaded) == ("dynamic_batching" in config), "reload did not take"
    client.close()


def _configs(triton_url: str) -> dict[bool, dict[str, Any]]:
    """The repository config (batching on) and the same without dynamic batching."""
    client = triton_sync.InferenceServerClient(triton_url)
    batched = client.get_model_config(MODEL, as_json=True)["config"]
    client.close()
    assert "dynamic_batching" in batched
    unbatched = {key: value for key, value in batched.items() if key != "dynamic_batching"}
    return {True: batched, False: unbatched}


def _direct_request(text: str) -> service_pb2.ModelInferRequest:
    """A prebuilt Triton request: the cheapest client possible, so "direct" is Triton's own cost."""
    request = service_pb2.ModelInferRequest(model_name=MODEL)
    for name, datatype in (("text_input", "BYTES"), ("normalize", "BOOL")):
        tensor = request.inputs.add()
        tensor.name, tensor.datatype = name, datatype
        tensor.shape.extend([1, 1])
    encoded = text.encode()
    request.raw_input_contents.append(struct.pack("<I", len(encoded)) + encoded)
    request.raw_input_contents.append(b"\x01")
    return request


async def _measure(adapter_address: str, triton_url: str, clients: int, seconds: float) -> dict[str, LoadResult]:
    adapter_channel = grpc.aio.insecure_channel(adapter_address)
    triton_channel = grpc.aio.insecure_channel(triton_url)
    stub = pb_grpc.InferenceServiceStub(adapter_channel)
    triton = service_pb2_grpc.GRPCInferenceServiceStub(triton_channel)
    direct_requests = [_direct_request(text) for text in SENTENCES]

    async def via_adapter(client: int) -> int:
        text = SENTENCES[client % len(SENTENCES)]
        response = await stub.GetEmbedding(pb.GetEmbeddingRequest(model=MODEL, inputs=[text], normalize=True))
        return len(response.embeddings)

    async def via_triton(client: int) -> int:
        response = await triton.ModelInfer(direct_requests[client % len(SENTENCES)])
        return int(response.outputs[0].shape[0])

    try:
        # Alternate the two paths in short rounds so drift of the machine affects both alike.
        rounds = 4
        runs: dict[str, list[LoadResult]] = {"triton": [], "adapter": []}
        for _ in range(rounds):
            runs["triton"].append(await closed_loop(via_triton, clients, seconds / rounds, warmup_s=0.5))
            runs["adapter"].append(await closed_loop(via_adapter, clients, seconds / rounds, warmup_s=0.5))
        return {path: merge(results) for path, results in runs.items()}
    finally:
        await adapter_channel.close()
        await triton_channel.close()


def _row(path: str, batching: str, r: LoadResult, ratio: str) -> str:
    return (
        f"| {path} | {batching} | {r.clients} | {r.items_per_s:.0f} | {r.p50:.1f} | {r.percentile(99):.1f} | {ratio} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", default="1,8,32")
    args = parser.parse_args()
    levels = [int(c) for c in args.clients.split(",")]

    build_small_models()
    log = Path(tempfile.mkdtemp()) / "adapter.log"
    adapter = start_adapter(log, env={"PRELOAD_MODELS": MODEL, "LOG_LEVEL": "WARNING"})
    results: dict[tuple[bool, int], dict[str, LoadResult]] = {}
    try:
        configs = _configs(adapter.triton_grpc_url)
        for batching in (True, False):
            _reload(adapter.triton_grpc_url, configs[batching])
            for clients in levels:
                results[(batching, clients)] = asyncio.run(
                    _measure(adapter.address, adapter.triton_grpc_url, clients, args.seconds)
                )
        _reload(adapter.triton_grpc_url, configs[True])
    finally:
        stop_adapter(adapter)

    lines = [
        "| path | dynamic batching | clients | embeddings/s | p50 ms | p99 ms | ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for batching in (True, False):
        for clients in levels:
            cell = results[(batching, clients)]
            on = "on" if batching else "off"
            ratio = cell["adapter"].items_per_s / cell["triton"].items_per_s
            lines.append(_row("Triton direct", on, cell["triton"], ""))
            lines.append(_row("adapter", on, cell["adapter"], f"{ratio:.2f}x direct"))
    lines.append("")
    lines.append("| clients | batching on / off (direct) | batching on / off (adapter) |")
    lines.append("|---|---|---|")
    for clients in levels:
        on, off = results[(True, clients)], results[(False, clients)]
        lines.append(
            f"| {clients} | {on['triton'].items_per_s / off['triton'].items_per_s:.2f}x | "
            f"{on['adapter'].items_per_s / off['adapter'].items_per_s:.2f}x |"
        )
    table = "\n".join(lines)
    RESULTS.mkdir(exist_ok=True)
    header = (
        f"Embeddings, one text per request, {args.seconds:.0f} s per cell and path, in 4 alternating rounds"
        " (each after 0.5 s warm-up). Same machine for load generator, adapter and Triton.\n\n"
    )
    (RESULTS / "embeddings.md").write_text(header + table + "\n")
    print(table)


if __name__ == "__main__":
    main()
