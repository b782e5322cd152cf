"""The image job queue's bookkeeping (adapter.scheduling.image_jobs): queue places, the work it counts against
its model, live progress, failures, idempotent submission. A fake Triton (model control and image
stream), the real scheduler and a real job store on a temporary directory."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from adapter.config import Settings
from adapter.core import errors
from adapter.core.image_inputs import ImageSpec
from adapter.scheduling.image_jobs import ImageJobService, JobView
from adapter.scheduling.job_store import JobStore
from adapter.scheduling.scheduler import Scheduler
from adapter.triton.memory_readings import DeviceReading, MemoryReading
from adapter.triton.types import ImageProgress, ModelInfo


def _png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height)).save(out, "PNG")
    return out.getvalue()


PNG = _png(8, 4)
OUTPUTS = {"image": frozenset({"images"}), "embedding": frozenset({"embedding"})}


class FakeTriton:
    """Model control for the scheduler and the image stream for the jobs. A job's prompt says how
    it goes: it reports step 1 of 2, waits for its gate, then ends with one PNG ("fail...": a model
    error; "crash...": an unexpected exception)."""

    def __init__(self) -> None:
        self.gates: dict[str, asyncio.Event] = {}
        self.streams: list[str] = []

    def gate(self, prompt: str) -> asyncio.Event:
        return self.gates.setdefault(prompt, asyncio.Event())

    # ModelControl
    async def model_names(self) -> list[str]:
        return sorted(OUTPUTS)

    async def repository_index(self) -> dict[str, tuple[str, str]]:
        return {}

    async def load(self, model: str) -> None:
        pass

    async def unload(self, model: str) -> None:
        pass

    # MemoryProbe
    async def read(self) -> MemoryReading:
        return MemoryReading([DeviceReading("cpu", 10_000, 0)])

    # The gateway
    async def model_info(self, model: str) -> ModelInfo:
        return ModelInfo(outputs=OUTPUTS[model])

    async def stream_image(
        self,
        model: str,
        prompt: str,
        negative_prompt: str,
        parameters: dict[str, Any],
        image: bytes = b"",
        mask: bytes = b"",
    ) -> AsyncIterator[ImageProgress]:
        self.streams.append(prompt)
        yield ImageProgress(1, 2)
        await self.gate(prompt).wait()
        if prompt.startswith("fail"):
            raise errors.Internal("the model ran out of memory")
        if prompt.startswith("crash"):
            raise RuntimeError("a bug")
        yield ImageProgress(2, 2, [PNG])


class FlakyStore(JobStore):
    """A store whose next `create` fails (a full disk)."""

    fail_next = False

    async def create(self, *args: Any, **kwargs: Any) -> None:
        if self.fail_next:
            self.fail_next = False
            raise sqlite3.OperationalError("database or disk is full")
        await super().create(*args, **kwargs)


@dataclasses.dataclass
class Jobs:
    service: ImageJobService
    scheduler: Scheduler
    triton: FakeTriton
    store: FlakyStore

    async def submit(self, prompt: str, request_id: str = "", fingerprint: str = "", **kwargs: Any) -> str:
        spec = ImageSpec(
            kind="generate",
            model=kwargs.pop("model", "image"),
            prompt=prompt,
            negative_prompt="",
            parameters=kwargs,
            request_id=request_id,
        )
        return await self.service.submit(spec, fingerprint)

    async def view(self, job_id: str) -> JobView:
        return await self.service.status(job_id)

    async def until(self, job_id: str, state: str, step: int = 0) -> JobView:
        async with asyncio.timeout(10):
            while True:
                view = await self.view(job_id)
                if view.record.state == state and view.record.step >= step:
                    return view
                await asyncio.sleep(0.005)

    async def queued_for(self, model: str = "image") -> int:
        return (await self.scheduler.slot(model)).queued


Start = Callable[..., Awaitable[Jobs]]


@pytest.fixture
async def start(tmp_path: Path) -> AsyncIterator[Start]:
    started: list[Jobs] = []

    async def _start(**settings: Any) -> Jobs:
        triton = FakeTriton()
        scheduler = Scheduler(triton, triton, budget_bytes=1000, budget_fraction=0.9, declared_memory=lambda _: 1)
        store = FlakyStore(tmp_path / "images")
        config = dataclasses.replace(Settings(), model_repository=tmp_path / "models", **settings)
        service = ImageJobService(triton, scheduler, store, config)  # type: ignore[arg-type]
        await service.start()
        jobs = Jobs(service, scheduler, triton, store)
        started.append(jobs)
        return jobs

    yield _start
    for jobs in started:
        for gate in jobs.triton.gates.values():
            gate.set()
        await jobs.service.stop()


async def test_a_job_reports_its_progress_then_keeps_its_images(start: Start) -> None:
    jobs = await start()
    job_id = await jobs.submit("a cat")
    running = await jobs.until(job_id, "running", step=1)
    assert (running.record.step, running.record.total_steps, running.images) == (1, 2, [])
    slot = await jobs.scheduler.slot("image")
    assert (slot.in_flight, slot.queued) == (1, 0), "a running job holds its model as a request does"
    jobs.triton.gate("a cat").set()
    done = await jobs.until(job_id, "succeeded")
    assert done.images == [PNG]
    assert (done.record.step, done.record.total_steps, done.record.image_sizes) == (2, 2, [(8, 4)])
    assert (slot.in_flight, slot.queued) == (0, 0)


async def test_queued_jobs_count_against_their_model_until_they_start(start: Start) -> None:
    jobs = await start(image_max_concurrent_jobs=1)
    first = await jobs.submit("first")
    await jobs.until(first, "running", step=1)
    second, third = await jobs.submit("second"), await jobs.submit("third")
    assert (await jobs.view(second)).record.state == "queued"
    assert (await jobs.view(third)).record.state == "queued"
    assert await jobs.queued_for("image") == 2
    assert (await jobs.scheduler.slot("image")).busy  # so neither eviction nor keep-alive takes it
    jobs.triton.gate("first").set()
    await jobs.until(second, "running", step=1)
    assert await jobs.queued_for("image") == 1
    jobs.triton.gate("second").set()
    jobs.triton.gate("third").set()
    await jobs.until(third, "succeeded")
    assert await jobs.queued_for("image") == 0
    assert jobs.triton.streams == ["first", "second", "third"], "jobs run in the order they came"


async def test_the_queue_bound_counts_waiting_jobs_not_running_ones(start: Start) -> None:
    jobs = await start(image_max_concurrent_jobs=1, image_max_queued_jobs=2)
    running = await jobs.submit("running")
    await jobs.until(running, "running", step=1)
    await jobs.submit("waiting-1")
    await jobs.submit("waiting-2")
    with pytest.raises(errors.ResourceExhausted, match=r"2 jobs waiting, IMAGE_MAX_QUEUED_JOBS=2"):
        await jobs.submit("refused")
    assert await jobs.queued_for("image") == 2, "a refused job counts for nothing"
    jobs.triton.gate("running").set()  # the worker takes waiting-1: a place frees up
    async with asyncio.timeout(10):
        while True:
            try:
                accepted = await jobs.submit("accepted")
                break
            except errors.ResourceExhausted:
                await asyncio.sleep(0.005)
    assert (await jobs.view(accepted)).record.state == "queued"
    assert "refused" not in jobs.triton.streams


async def test_failed_jobs_give_back_their_place_and_the_worker_lives_on(start: Start) -> None:
    jobs = await start(image_max_concurrent_jobs=1)
    failing, crashing, fine = await jobs.submit("fail"), await jobs.submit("crash"), await jobs.submit("fine")
    for prompt in ("fail", "crash", "fine"):
        jobs.triton.gate(prompt).set()
    failed = await jobs.until(failing, "failed")
    assert "ran out of memory" in failed.record.error
    assert (failed.record.step, failed.record.total_steps) == (1, 2)
    crashed = await jobs.until(crashing, "failed")
    assert "internal error; incident" in crashed.record.error and "a bug" not in crashed.record.error
    assert (await jobs.until(fine, "succeeded")).images == [PNG]
    slot = await jobs.scheduler.slot("image")
    assert (slot.in_flight, slot.queued) == (0, 0)


async def test_refused_submissions_take_no_queue_place(start: Start) -> None:
    jobs = await start(image_max_concurrent_jobs=1, image_max_queued_jobs=1)
    running = await jobs.submit("running")
    await jobs.until(running, "running", step=1)
    with pytest.raises(errors.NotFound, match="not in Triton's model repository"):
        await jobs.submit("x", model="nonexistent")
    await jobs.scheduler.load("embedding")  # loaded: its declared outputs come from Triton
    with pytest.raises(errors.InvalidArgument, match="not an image model"):
        await jobs.submit("x", model="embedding")
    with pytest.raises(errors.InvalidArgument, match="runs no denoising step"):
        await jobs.submit("x", steps=10, strength=0.05)
    jobs.store.fail_next = True
    with pytest.raises(sqlite3.OperationalError):
        await jobs.submit("x")
    assert await jobs.queued_for("image") == 0
    assert await jobs.queued_for("embedding") == 0
    waiting = await jobs.submit("waiting")  # the one place is still free
    assert (await jobs.view(waiting)).record.state == "queued"
    with pytest.raises(errors.ResourceExhausted):
        await jobs.submit("one too many")


async def test_one_request_id_is_one_job(start: Start) -> None:
    jobs = await start(image_max_concurrent_jobs=1)
    blocker = await jobs.submit("blocker")
    await jobs.until(blocker, "running", step=1)
    ids = await asyncio.gather(*(jobs.submit("retried", request_id="r-1", fingerprint="f") for _ in range(5)))
    assert len(set(ids)) == 1, "concurrent retries got one job"
    assert await jobs.queued_for("image") == 1
    with pytest.raises(errors.AlreadyExists, match="r-1"):
        await jobs.submit("something else", request_id="r-1", fingerprint="g")
    assert await jobs.submit("retried", request_id="r-1", fingerprint="f") == ids[0]
    assert await jobs.queued_for("image") == 1
    jobs.triton.gate("blocker").set()
    jobs.triton.gate("retried").set()
    await jobs.until(ids[0], "succeeded")
    assert jobs.triton.streams == ["blocker", "retried"]
    assert await jobs.submit("retried", request_id="r-1", fingerprint="f") == ids[0], "kept: still the same job"
    assert await jobs.queued_for("image") == 0


async def test_unknown_jobs_are_not_found(start: Start) -> None:
    jobs = await start()
    with pytest.raises(errors.NotFound, match="no image job"):
        await jobs.view("0" * 32)
