"""Model loads through the adapter vs Triton's raw load, and what ClearMemory gives back.

In one run, on one adapter with its embedded Triton, alternating which path goes first:
- load: ManageVRAM `load` (scheduler: budget check, Triton load, memory readings) vs Triton's
  `RepositoryModelLoad` straight from tritonclient;
- cold request: the first request on an unloaded model through the adapter (on-demand load, then
  the request) vs Triton's raw load followed by the same request sent straight to Triton.
Between samples the model is unloaded and its stub process has exited, so every load starts cold.
Then all models are loaded and used, and ClearMemory's reported `freed_bytes` is compared with the
resident memory the models' processes held (process table). Writes benchmarks/results/model_loads.md.

    .venv/bin/python -m benchmarks.model_loads [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import numpy as np
import tritonclient.grpc.aio as triton_aio

from adapter.gen.inference.v1 import inference_pb2 as pb
from adapter.gen.inference.v1 import inference_pb2_grpc as pb_grpc
from tests.harness import (
    RunningAdapter,
    alive,
    build_small_models,
    rss_bytes,
    start_adapter,
    stop_adapter,
    stub_pids,
)

RESULTS = Path(__file__).parent / "results"
MODELS = ("llm", "embedding", "image")


def _stub_pids(adapter: RunningAdapter, model: str) -> set[int]:
    return {pid for pid in stub_pids(adapter, model) if alive(pid)}


class Session:
    """A ManageVRAM stream: send a command, wait for its result (events pass by)."""

    def __init__(self, stub: pb_grpc.InferenceServiceStub) -> None:
        self._call = stub.ManageVRAM()
        self._ids = 0

    async def command(self, **command: object) -> pb.CommandResult:
        self._ids += 1
        command_id = str(self._ids)
        await self._call.write(pb.ManageVRAMRequest(command_id=command_id, **command))  # type: ignore[arg-type]
        while True:
            response = await self._call.read()
            if response.HasField("result") and response.result.command_id == command_id:
                assert response.result.ok, response.result.error_message
                return response.result

    async def close(self) -> None:
        await self._call.done_writing()


async def _adapter_request(stub: pb_grpc.InferenceServiceStub, model: str) -> None:
    if model == "llm":
        request = pb.GenerateStreamRequest(model=model, prompt="hi", options=pb.GenerationOptions(max_tokens=1))
        async for _ in stub.GenerateStream(request):
            pass
    else:
        await stub.GetEmbedding(pb.GetEmbeddingRequest(model=model, inputs=["hi"]))


async def _direct_request(triton: triton_aio.InferenceServerClient, model: str) -> None:
    def text(name: str, value: str) -> triton_aio.InferInput:
        tensor = triton_aio.InferInput(name, [1], "BYTES")
        tensor.set_data_from_numpy(np.array([value.encode()], dtype=np.object_))
        return tensor

    if model == "llm":

        async def one() -> object:
            yield {
                "model_name": model,
                "inputs": [text("text_input", "hi"), text("sampling_parameters", '{"max_tokens": 1}')],
            }

        # Not streamed (the dialect's default): one response, the whole answer.
        async for _, error in triton.stream_infer(one()):
            assert error is None, error
            return
    else:
        texts = triton_aio.InferInput("text_input", [1, 1], "BYTES")
        texts.set_data_from_numpy(np.array([[b"hi"]], dtype=np.object_))
        flags = triton_aio.InferInput("normalize", [1, 1], "BOOL")
        flags.set_data_from_numpy(np.array([[True]]))
        await triton.infer(model, [texts, flags])


async def _wait_gone(adapter: RunningAdapter, triton: triton_aio.InferenceServerClient, model: str) -> None:
    deadline = time.monotonic() + 120
    while _stub_pids(adapter, model) or await triton.is_model_ready(model):
        assert time.monotonic() < deadline, f"{model} did not unload"
        await asyncio.sleep(0.1)


async def _timed(step: Callable[[], Awaitable[object]]) -> float:
    started = time.perf_counter()
    await step()
    return time.perf_counter() - started


async def measure(
    adapter: RunningAdapter, rounds: int
) -> tuple[dict[tuple[str, str, str], list[float]], dict[str, int]]:
    samples: dict[tuple[str, str, str], list[float]] = {}
    async with grpc.aio.insecure_channel(adapter.address) as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        triton = triton_aio.InferenceServerClient(adapter.triton_grpc_url)
        session = Session(stub)
        try:

            async def adapter_load(model: str) -> float:
                seconds = await _timed(lambda: session.command(load=pb.LoadModelCommand(model=model)))
                await session.command(unload=pb.UnloadModelCommand(model=model))
                return seconds

            async def adapter_cold(model: str) -> float:
                seconds = await _timed(lambda: _adapter_request(stub, model))
                await session.command(unload=pb.UnloadModelCommand(model=model))
                return seconds

            async def direct_load(model: str) -> float:
                seconds = await _timed(lambda: triton.load_model(model))
                await triton.unload_model(model)
                await _wait_gone(adapter, triton, model)
                return seconds

            async def direct_cold(model: str) -> float:
                async def load_then_request() -> None:
                    await triton.load_model(model)
                    await _direct_request(triton, model)

                seconds = await _timed(load_then_request)
                await triton.unload_model(model)
                await _wait_gone(adapter, triton, model)
                return seconds

            for round_index in range(rounds):
                for model in MODELS:
                    kinds = [("load", adapter_load, direct_load)]
                    if model != "image":  # image requests are jobs; its load row covers it
                        kinds.append(("cold request", adapter_cold, direct_cold))
                    for kind, through_adapter, direct in kinds:
                        paths = [("adapter", through_adapter), ("direct", direct)]
                        for path, run in paths if round_index % 2 == 0 else reversed(paths):
                            seconds = await run(model)
                            samples.setdefault((model, kind, path), []).append(seconds)
                            print(f"round {round_index + 1} {model} {kind} {path}: {seconds:.3f}s", flush=True)

            # ClearMemory: load and use everything, then compare with the processes' resident memory.
            for model in MODELS:
                await session.command(load=pb.LoadModelCommand(model=model))
            for model in ("llm", "embedding"):
                await _adapter_request(stub, model)
            pids = {model: _stub_pids(adapter, model) for model in MODELS}
            held = rss_bytes(set().union(*pids.values()))
            result = await stub.ClearMemory(pb.ClearMemoryRequest())
            assert sorted(result.unloaded_models) == sorted(MODELS), result
            assert not any(_stub_pids(adapter, model) for model in MODELS), "a stub outlived ClearMemory"
            clear = {"held": held, "reported": result.freed_bytes}
        finally:
            await session.close()
            await triton.close()
    return samples, clear


def report(samples: dict[tuple[str, str, str], list[float]], clear: dict[str, int], rounds: int) -> str:
    lines = [
        f"Model loads, {rounds} rounds alternating which path goes first; medians in seconds. "
        "Same machine for client, adapter and Triton. Every load starts cold (stub process gone).",
        "",
        "| model | what | Triton direct | adapter | ratio adapter/direct |",
        "|---|---|---|---|---|",
    ]
    for model in MODELS:
        for kind in ("load", "cold request"):
            if (model, kind, "adapter") not in samples:
                continue
            direct = statistics.median(samples[(model, kind, "direct")])
            through = statistics.median(samples[(model, kind, "adapter")])
            lines.append(f"| {model} | {kind} | {direct:.3f} | {through:.3f} | {through / direct:.3f}x |")
    share = clear["reported"] / clear["held"] if clear["held"] else 0.0
    lines += [
        "",
        "ClearMemory after loading and using all three models:",
        "",
        "| resident memory of the models' processes | ClearMemory freed_bytes | share |",
        "|---|---|---|",
        f"| {clear['held'] / 1e6:.0f} MB | {clear['reported'] / 1e6:.0f} MB | {share:.2f} |",
        "",
        "Every stub process had exited when ClearMemory answered (checked in the process table).",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    build_small_models()
    workdir = Path(tempfile.mkdtemp(prefix="bench-loads-"))
    adapter = start_adapter(
        workdir / "adapter.log",
        env={"PRELOAD_MODELS": "", "MODEL_KEEP_ALIVE_SECONDS": "-1", "IMAGE_DIR": str(workdir / "images")},
    )
    try:
        samples, clear = asyncio.run(measure(adapter, args.rounds))
    finally:
        stop_adapter(adapter)
    text = report(samples, clear, args.rounds)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "model_loads.md").write_text(text)
    print(text)
    print(json.dumps({f"{m}/{k}/{p}": v for (m, k, p), v in samples.items()}))


if __name__ == "__main__":
    main()
