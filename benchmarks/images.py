"""Image jobs: how fast GenerateImage answers with a job id while other jobs run, and a whole job
through the adapter vs the same request straight to Triton, in one run. Writes
benchmarks/results/images.md.

    .venv/bin/python -m benchmarks.images [--submits 200] [--jobs 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np
import tritonclient.grpc.aio as triton_aio

from adapter.gen.inference.v1 import inference_pb2 as pb
from adapter.gen.inference.v1 import inference_pb2_grpc as pb_grpc
from tests.harness import build_small_models, start_adapter, stop_adapter

RESULTS = Path(__file__).parent / "results"
MODEL = "image"
JOB = {"width": 64, "height": 64, "steps": 10, "seed": 1}
POLL_S = 0.05  # like a patient client; 5 ms polls take CPU from the model on 2 cores


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


async def _wait(stub: pb_grpc.InferenceServiceStub, job_id: str) -> pb.CheckImageStatusResponse:
    while True:
        status = await stub.CheckImageStatus(pb.CheckImageStatusRequest(job_id=job_id))
        if status.state in (pb.JOB_STATE_SUCCEEDED, pb.JOB_STATE_FAILED):
            assert status.state == pb.JOB_STATE_SUCCEEDED, status.error_message
            return status
        await asyncio.sleep(POLL_S)


async def _submit_latency(stub: pb_grpc.InferenceServiceStub, submits: int) -> tuple[list[float], int]:
    """Submits tiny jobs one after another while the queue is busy; returns ms per submit."""
    request = pb.GenerateImageRequest(model=MODEL, prompt="busy", options=pb.ImageOptions(width=64, height=64, steps=1))
    background = [
        (
            await stub.GenerateImage(
                pb.GenerateImageRequest(model=MODEL, prompt="long", options=pb.ImageOptions(**JOB))
            )
        ).job_id
        for _ in range(3)
    ]
    latencies, job_ids = [], []
    for _ in range(submits):
        started = time.perf_counter()
        job_ids.append((await stub.GenerateImage(request)).job_id)
        latencies.append((time.perf_counter() - started) * 1000)
        await asyncio.sleep(0.005)
    running = 0
    for job_id in background + job_ids:
        status = await stub.CheckImageStatus(pb.CheckImageStatusRequest(job_id=job_id))
        running += status.state in (pb.JOB_STATE_QUEUED, pb.JOB_STATE_RUNNING)
    for job_id in background + job_ids:
        await _wait(stub, job_id)
    return latencies, running


async def _direct_job(client: triton_aio.InferenceServerClient) -> float:
    inputs = []
    for name, value in (("prompt", "a red square"), ("parameters", json.dumps(JOB))):
        tensor = triton_aio.InferInput(name, [1], "BYTES")
        tensor.set_data_from_numpy(np.array([value.encode()], dtype=np.object_))
        inputs.append(tensor)

    async def one() -> object:
        yield {"model_name": MODEL, "inputs": inputs}

    started = time.perf_counter()
    async for result, error in client.stream_infer(one(), headers={"triton_grpc_error": "true"}):
        assert error is None, error
        if result.as_numpy("images") is not None:
            break
    return time.perf_counter() - started


async def _adapter_job(stub: pb_grpc.InferenceServiceStub) -> float:
    started = time.perf_counter()
    request = pb.GenerateImageRequest(model=MODEL, prompt="a red square", options=pb.ImageOptions(**JOB))
    await _wait(stub, (await stub.GenerateImage(request)).job_id)
    return time.perf_counter() - started


async def _run(address: str, triton_url: str, submits: int, jobs: int) -> str:
    channel = grpc.aio.insecure_channel(address)
    stub = pb_grpc.InferenceServiceStub(channel)
    client = triton_aio.InferenceServerClient(triton_url)
    try:
        await _adapter_job(stub)  # warm-up
        await _direct_job(client)
        direct, adapter = [], []
        for _ in range(jobs):  # alternate, so drift hits both alike
            direct.append(await _direct_job(client))
            adapter.append(await _adapter_job(stub))
        submit_ms, busy = await _submit_latency(stub, submits)
    finally:
        await channel.close()
        await client.close()
    d, a = statistics.median(direct) * 1000, statistics.median(adapter) * 1000
    return "\n".join(
        [
            "| measure | value |",
            "|---|---|",
            f"| GenerateImage to job id, p50 (while {busy} jobs were queued or running) | "
            f"{statistics.median(submit_ms):.2f} ms |",
            f"| GenerateImage to job id, p99 | {_percentile(submit_ms, 99):.2f} ms |",
            f"| whole job, Triton direct (median of {jobs}) | {d:.0f} ms |",
            f"| whole job, adapter: submit + poll every {POLL_S * 1000:.0f} ms (median of {jobs}) | {a:.0f} ms |",
            f"| adapter / direct | {a / d:.2f}x |",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--submits", type=int, default=200)
    parser.add_argument("--jobs", type=int, default=10)
    args = parser.parse_args()
    build_small_models()
    workdir = Path(tempfile.mkdtemp())
    adapter = start_adapter(
        workdir / "adapter.log",
        env={
            "PRELOAD_MODELS": MODEL,
            "LOG_LEVEL": "WARNING",
            "IMAGE_DIR": str(workdir / "images"),
            "IMAGE_MAX_QUEUED_JOBS": str(args.submits + 10),
        },
    )
    try:
        table = asyncio.run(_run(adapter.address, adapter.triton_grpc_url, args.submits, args.jobs))
    finally:
        stop_adapter(adapter)
    header = f"Image jobs on the small local diffusion model, {JOB['width']}x{JOB['height']}, {JOB['steps']} steps.\n\n"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "images.md").write_text(header + table + "\n")
    print(table)


if __name__ == "__main__":
    main()
