"""A bounded soak: mixed load against the adapter as `make run` starts it (embedded Triton, the
served models), on loopback only, for --minutes (default 20); it stops by itself.

Load, all at once: chat streams, generate streams cancelled after a few chunks, embeddings, image
jobs (submit, poll), ManageVRAM sessions opened (subscribe, get_status) and closed, and a ClearMemory
now and then. Every --sample-seconds (10) it samples the adapter's and the model stubs' resident
memory, open file descriptors and threads (from /proc) and the adapter's asyncio tasks (its
`adapter_asyncio_tasks` metric).

Reports, per quantity, the value at the end of the warm-up (--warmup-minutes, default 2) and at the
end, and a least-squares slope over the samples after the warm-up, against the noise (the residuals'
spread): "grows" when the fitted growth over the run passes three times the noise and 5 % of the
start. Failed requests are counted by status code; only the RESOURCE_EXHAUSTED that the limits
promise (a full image queue) is expected. Writes results/soak.md and results/soak.json.

    python -m benchmarks.soak [--minutes 20] [--warmup-minutes 2] [--out soak]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from google.protobuf.duration_pb2 import Duration

from adapter.gen.inference.v1 import inference_pb2 as pb
from adapter.gen.inference.v1 import inference_pb2_grpc as pb_grpc
from tests.harness import RunningAdapter, build_small_models, start_adapter, stop_adapter, stub_pids

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = ("llm", "embedding", "image")
EXPECTED_FAILURES = {"RESOURCE_EXHAUSTED"}


@dataclass
class Tally:
    ok: Counter[str] = field(default_factory=Counter)
    failed: Counter[tuple[str, str]] = field(default_factory=Counter)  # (kind, code)
    examples: dict[tuple[str, str], str] = field(default_factory=dict)

    def fail(self, kind: str, err: grpc.aio.AioRpcError) -> None:
        key = (kind, err.code().name)
        self.failed[key] += 1
        self.examples.setdefault(key, (err.details() or "")[:200])


# ---- load ------------------------------------------------------------------------------------------


async def chats(stub: pb_grpc.InferenceServiceStub, tally: Tally, stop: float, n: int) -> None:
    while time.monotonic() < stop:
        request = pb.ChatStreamRequest(
            model="llm",
            messages=[pb.ChatMessage(role="user", content=f"Tell me about the number {n}.")],
            options=pb.GenerationOptions(max_tokens=24, temperature=0.7),
        )
        try:
            async for _ in stub.ChatStream(request, timeout=120):
                pass
            tally.ok["chat"] += 1
        except grpc.aio.AioRpcError as err:
            tally.fail("chat", err)
        n += 1


async def cancelled_generates(stub: pb_grpc.InferenceServiceStub, tally: Tally, stop: float) -> None:
    while time.monotonic() < stop:
        call = stub.GenerateStream(
            pb.GenerateStreamRequest(
                model="llm", prompt="Once upon a time", options=pb.GenerationOptions(max_tokens=64)
            ),
            timeout=120,
        )
        chunks = 0
        try:
            async for _ in call:
                chunks += 1
                if chunks == 3:
                    call.cancel()
                    break
            tally.ok["generate_cancelled"] += 1
        except asyncio.CancelledError:
            tally.ok["generate_cancelled"] += 1
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.CANCELLED:
                tally.ok["generate_cancelled"] += 1
            else:
                tally.fail("generate", err)


async def embeddings(stub: pb_grpc.InferenceServiceStub, tally: Tally, stop: float) -> None:
    n = 0
    while time.monotonic() < stop:
        request = pb.GetEmbeddingRequest(
            model="embedding", inputs=[f"soak sentence {n}", "another one"], normalize=True
        )
        try:
            await stub.GetEmbedding(request, timeout=120)
            tally.ok["embedding"] += 1
        except grpc.aio.AioRpcError as err:
            tally.fail("embedding", err)
        n += 1
        await asyncio.sleep(0.05)


async def images(stub: pb_grpc.InferenceServiceStub, tally: Tally, stop: float) -> None:
    n = 0
    while time.monotonic() < stop:
        request = pb.GenerateImageRequest(
            model="image",
            prompt=f"a red square {n}",
            options=pb.ImageOptions(width=32, height=32, steps=2, seed=n),
            request_id=f"soak-{time.time_ns()}",
        )
        n += 1
        try:
            job = (await stub.GenerateImage(request, timeout=60)).job_id
            while True:
                status = await stub.CheckImageStatus(pb.CheckImageStatusRequest(job_id=job), timeout=60)
                if status.state in (pb.JOB_STATE_SUCCEEDED, pb.JOB_STATE_FAILED):
                    break
                await asyncio.sleep(0.1)
            if status.state == pb.JOB_STATE_SUCCEEDED:
                tally.ok["image"] += 1
            else:
                tally.failed[("image job", "FAILED")] += 1
                tally.examples.setdefault(("image job", "FAILED"), status.error_message[:200])
        except grpc.aio.AioRpcError as err:
            tally.fail("image", err)
            await asyncio.sleep(0.5)


async def vram_sessions(stub: pb_grpc.InferenceServiceStub, tally: Tally, stop: float) -> None:
    n = 0
    while time.monotonic() < stop:
        n += 1
        done = asyncio.Event()

        async def commands(session: int = n, done: asyncio.Event = done) -> object:
            yield pb.ManageVRAMRequest(
                command_id=f"{session}-sub",
                subscribe=pb.SubscribeCommand(snapshot_interval=Duration(nanos=300_000_000)),
            )
            yield pb.ManageVRAMRequest(command_id=f"{session}-status", get_status=pb.GetStatusCommand())
            await done.wait()

        call = stub.ManageVRAM(commands(), timeout=60)
        opened = time.monotonic()
        try:
            async for _ in call:
                if time.monotonic() - opened > 2.0:
                    break
            call.cancel()  # the client goes away mid-session
            tally.ok["manage_vram"] += 1
        except grpc.aio.AioRpcError as err:
            if err.code() != grpc.StatusCode.CANCELLED:
                tally.fail("manage_vram", err)
        finally:
            done.set()
        await asyncio.sleep(0.5)


async def clear_memory(stub: pb_grpc.InferenceServiceStub, tally: Tally, stop: float, every_s: float) -> None:
    while True:
        await asyncio.sleep(every_s)
        if time.monotonic() >= stop:
            return
        try:
            await stub.ClearMemory(pb.ClearMemoryRequest(), timeout=120)
            tally.ok["clear_memory"] += 1
        except grpc.aio.AioRpcError as err:
            tally.fail("clear_memory", err)


# ---- samples ---------------------------------------------------------------------------------------


def proc_stats(pids: set[int]) -> tuple[int, int, int]:
    """Resident bytes, open file descriptors and threads of these processes together."""
    rss = fds = threads = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss += int(line.split()[1]) * 1024
                elif line.startswith("Threads:"):
                    threads += int(line.split()[1])
            fds += len(list(Path(f"/proc/{pid}/fd").iterdir()))
        except OSError:
            continue
    return rss, fds, threads


def metric(url: str, name: str) -> float:
    with urllib.request.urlopen(url, timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
    return float("nan")


def sample(adapter: RunningAdapter, started: float) -> dict[str, float]:
    rss, fds, threads = proc_stats({adapter.process.pid})
    stubs = set().union(*(stub_pids(adapter, model) for model in MODELS))
    stub_rss, stub_fds, stub_threads = proc_stats(stubs)
    return {
        "minute": (time.monotonic() - started) / 60,
        "adapter_rss_mb": rss / 2**20,
        "adapter_fds": fds,
        "adapter_threads": threads,
        "adapter_asyncio_tasks": metric(adapter.metrics_url, "adapter_asyncio_tasks"),
        "stubs": len(stubs),
        "stubs_rss_mb": stub_rss / 2**20,
        "stubs_fds": stub_fds,
        "stubs_threads": stub_threads,
    }


async def sampler(adapter: RunningAdapter, samples: list[dict[str, float]], stop: float, every_s: float) -> None:
    started = time.monotonic()
    while time.monotonic() < stop:
        samples.append(await asyncio.to_thread(sample, adapter, started))
        await asyncio.sleep(every_s)
    samples.append(await asyncio.to_thread(sample, adapter, started))


# ---- analysis --------------------------------------------------------------------------------------


def fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares slope (per x unit) and the residuals' standard deviation."""
    if len(xs) < 3:
        return float("nan"), float("nan")
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    var_x = sum((x - mean_x) ** 2 for x in xs)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / var_x if var_x else 0.0
    residuals = [y - (mean_y + slope * (x - mean_x)) for x, y in zip(xs, ys, strict=True)]
    return slope, statistics.pstdev(residuals)


def analyse(samples: list[dict[str, float]], warmup_min: float) -> list[dict[str, object]]:
    after = [s for s in samples if s["minute"] >= warmup_min] or samples
    rows = []
    for key in samples[0]:
        if key == "minute":
            continue
        xs, ys = [s["minute"] for s in after], [s[key] for s in after]
        slope, noise = fit(xs, ys)
        span = xs[-1] - xs[0] if len(xs) > 1 else 0.0
        growth = slope * span
        # Counts move in steps (a thread pool growing to its bound): one step is not a trend.
        grows = growth > 3 * noise and growth > 0.05 * max(abs(ys[0]), 1.0) and growth > 1.0
        rows.append(
            {
                "quantity": key,
                "start": ys[0],
                "end": ys[-1],
                "slope_per_min": slope,
                "noise": noise,
                "verdict": "GROWS" if grows else "flat",
            }
        )
    return rows


def report(rows: list[dict[str, object]], tally: Tally, minutes: float, warmup_min: float, samples: int) -> str:
    lines = [
        f"# Soak: {minutes:g} minutes of mixed load (`python -m benchmarks.soak --minutes {minutes:g}`)",
        "",
        f"{samples} samples; start = the first sample after the {warmup_min:g}-minute warm-up; slope fitted "
        "over the samples after it; GROWS = fitted growth above 3x the residual noise, 5 % of start and 1 unit.",
        "",
        "| quantity | start | end | slope / min | noise (sd) | verdict |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['quantity']} | {row['start']:.1f} | {row['end']:.1f} | {row['slope_per_min']:+.3f} "
            f"| {row['noise']:.2f} | {row['verdict']} |"
        )
    lines += ["", "| requests | ok |", "|---|---:|"]
    lines += [f"| {kind} | {count} |" for kind, count in sorted(tally.ok.items())]
    lines += ["", "| failed | code | count | example |", "|---|---|---:|---|"]
    for (kind, code), count in sorted(tally.failed.items()):
        example = tally.examples.get((kind, code), "").replace("|", "/")
        lines.append(f"| {kind} | {code} | {count} | {example} |")
    if not tally.failed:
        lines.append("| none | | 0 | |")
    unexpected = sum(c for (_, code), c in tally.failed.items() if code not in EXPECTED_FAILURES)
    lines += ["", f"Unexpected failures: {unexpected}."]
    return "\n".join(lines) + "\n"


# ---- main ------------------------------------------------------------------------------------------


async def soak(adapter: RunningAdapter, minutes: float, sample_s: float, clear_every_s: float) -> tuple[Tally, list]:
    tally = Tally()
    samples: list[dict[str, float]] = []
    stop = time.monotonic() + minutes * 60
    async with grpc.aio.insecure_channel(adapter.address) as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        await asyncio.gather(
            sampler(adapter, samples, stop, sample_s),
            *(chats(stub, tally, stop, i * 1000) for i in range(3)),
            cancelled_generates(stub, tally, stop),
            *(embeddings(stub, tally, stop) for _ in range(2)),
            images(stub, tally, stop),
            vram_sessions(stub, tally, stop),
            clear_memory(stub, tally, stop, clear_every_s),
        )
    return tally, samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--warmup-minutes", type=float, default=None, help="default: 2, or a quarter of a short run")
    parser.add_argument("--sample-seconds", type=float, default=10.0)
    parser.add_argument("--clear-every-seconds", type=float, default=90.0)
    parser.add_argument("--out", default="soak", help="results/<out>.md and .json")
    args = parser.parse_args()
    warmup = args.warmup_minutes if args.warmup_minutes is not None else min(2.0, args.minutes / 4)
    build_small_models()
    with tempfile.TemporaryDirectory(prefix="soak-") as workdir:
        adapter = start_adapter(
            Path(workdir) / "adapter.log",
            env={"IMAGE_DIR": str(Path(workdir) / "images"), "LOG_LEVEL": "WARNING"},
        )
        try:
            tally, samples = asyncio.run(soak(adapter, args.minutes, args.sample_seconds, args.clear_every_seconds))
        finally:
            log_tail = adapter.log_tail(20)
            stop_adapter(adapter)
    rows = analyse(samples, warmup)
    text = report(rows, tally, args.minutes, warmup, len(samples))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.out}.md").write_text(text)
    (RESULTS / f"{args.out}.json").write_text(
        json.dumps(
            {
                "rows": rows,
                "samples": samples,
                "ok": dict(tally.ok),
                "failed": {f"{k} {c}": n for (k, c), n in tally.failed.items()},
            },
            indent=1,
        )
    )
    print(text)
    if tally.failed:
        print("adapter log tail:\n" + log_tail)


if __name__ == "__main__":
    main()
