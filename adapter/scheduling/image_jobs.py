"""Image jobs: accepted at once, run in the background with bounded concurrency and a bounded
queue, kept in the job store, expired after IMAGE_RETENTION_HOURS."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from dataclasses import dataclass

from adapter.config import Settings
from adapter.core import errors
from adapter.core.image_inputs import ImageSpec, png_size
from adapter.scheduling.job_store import JobRecord, JobStore
from adapter.scheduling.scheduler import LOADED, Scheduler
from adapter.triton.gateway import TritonGateway
from adapter.triton.model_files import ModelFile, read_model_file

log = logging.getLogger(__name__)


@dataclass
class _LiveJob:
    """A queued or running job, with the progress only memory knows."""

    spec: ImageSpec
    record: JobRecord
    state: str = "queued"
    step: int = 0
    total_steps: int = 0
    started: bool = False  # reached the model: no longer counted as queued work for it
    cancelled: str = ""  # why it was cancelled (the worker skips or stops it); "" while wanted
    task: asyncio.Task[None] | None = None  # while running


@dataclass(frozen=True)
class JobView:
    record: JobRecord
    images: list[bytes]


class ImageJobService:
    def __init__(self, gateway: TritonGateway, scheduler: Scheduler, store: JobStore, settings: Settings) -> None:
        self._gateway = gateway
        self._scheduler = scheduler
        self._store = store
        self._settings = settings
        self._queue: asyncio.Queue[_LiveJob] = asyncio.Queue()
        self._queued = 0  # reserved queue places, counted before any await so the bound holds
        self._live: dict[str, _LiveJob] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._request_ids = asyncio.Lock()

    async def start(self) -> None:
        interrupted = await self._store.open()
        if interrupted:
            log.warning("%d image jobs were interrupted by the last shutdown; marked failed", interrupted)
        await self._remove_expired()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._worker()) for _ in range(self._settings.image_max_concurrent_jobs)]
        self._tasks.append(loop.create_task(self._retention_loop()))

    async def stop(self) -> None:
        """Stops the workers (their Triton requests are cancelled); unfinished jobs stay queued or
        running in the store, and the next start marks them interrupted."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._store.close()

    async def submit(self, spec: ImageSpec, fingerprint: str = "") -> str:
        """Queues the job; returns its id. With spec.request_id, a job already submitted under that
        id (and still kept) is returned instead, if `fingerprint` (what was asked) matches; else
        AlreadyExists."""
        if not spec.request_id:
            return await self._submit(spec, fingerprint)
        async with self._request_ids:  # one check-then-create at a time: concurrent retries get one job
            found = await self._store.find_request(spec.request_id)
            if found is not None:
                job_id, known = found
                if known != fingerprint:
                    raise errors.AlreadyExists(
                        f"request_id {spec.request_id!r} was already used by a different request (job {job_id}); "
                        "choose a new request_id for a new request"
                    )
                log.info("image job %s: request_id %r submitted again; same job", job_id, spec.request_id)
                return job_id
            return await self._submit(spec, fingerprint)

    async def _submit(self, spec: ImageSpec, fingerprint: str) -> str:
        await self._scheduler.slot(spec.model)  # an unknown model fails now, not as a job
        await self._check_model(spec)  # so does a model of another kind, or a job it would refuse
        if self._queued >= self._settings.image_max_queued_jobs:
            raise errors.ResourceExhausted(
                f"the image job queue is full ({self._queued} jobs waiting, IMAGE_MAX_QUEUED_JOBS="
                f"{self._settings.image_max_queued_jobs}); retry later"
            )
        self._queued += 1
        try:
            job_id = uuid.uuid4().hex
            created = time.time()
            await self._store.create(job_id, spec.kind, spec.model, created, spec.request_id or None, fingerprint)
        except BaseException:
            self._queued -= 1
            raise
        record = JobRecord(job_id, spec.kind, spec.model, "queued", 0, 0, "", [], created, None)
        job = _LiveJob(spec=spec, record=record)
        self._live[job_id] = job
        self._scheduler.add_queued(spec.model, 1)  # queued jobs keep their model from eviction
        self._queue.put_nowait(job)
        return job_id

    async def _model_file(self, model: str) -> ModelFile | None:
        """The model's outputs and parameters: Triton's config when it is loaded, else its config.pbtxt."""
        slot = await self._scheduler.slot(model)
        if slot.state == LOADED:
            try:
                info = await self._gateway.model_info(model)
                return ModelFile(info.outputs, dict(info.parameters))
            except errors.AdapterError:
                pass
        return read_model_file(self._settings.model_repository, model)

    async def _check_model(self, spec: ImageSpec) -> None:
        """Refuses now what the model would fail as a job: a model that makes no images, or an edit
        whose strength leaves no denoising step. Unknown configs are let through (the job reports)."""
        model = await self._model_file(spec.model)
        if model is None:
            return
        if model.outputs and "images" not in model.outputs:
            raise errors.InvalidArgument(
                f"model {spec.model!r} is not an image model (it has no `images` output); "
                "image jobs need one, such as 'image'"
            )
        strength = spec.parameters.get("strength")
        if strength is None:
            return
        steps = spec.parameters.get("steps")
        if steps is None:
            try:
                steps = int(model.parameters.get("default_steps", ""))
            except ValueError:
                return
        if int(steps * strength) < 1:
            raise errors.InvalidArgument(
                f"strength {strength:g} with {steps} steps runs no denoising step (steps * strength must be >= 1); "
                f"raise strength to at least {1 / steps:.4g} or options.steps to at least {math.ceil(1 / strength)}"
            )

    async def status(self, job_id: str) -> JobView:
        live = self._live.get(job_id)
        if live is not None:
            r = live.record
            return JobView(
                JobRecord(r.id, r.kind, r.model, live.state, live.step, live.total_steps, "", [], r.created_at, None),
                [],
            )
        record = await self._store.get(job_id)
        if record is None:
            raise errors.NotFound(f"no image job {job_id!r} (unknown, or removed after IMAGE_RETENTION_HOURS)")
        images = await self._store.images(record) if record.state == "succeeded" else []
        return JobView(record, images)

    async def cancel(self, job_id: str, reason: str) -> bool:
        """Stops a queued or running job (its Triton request is cancelled); it ends FAILED with
        `reason` and its request_id is freed. False when the job is not queued or running."""
        job = self._live.get(job_id)
        if job is None or job.cancelled or (job.task is not None and job.task.done()):
            return False
        job.cancelled = reason
        if job.task is not None:
            job.task.cancel()  # _run records the cancellation
        else:  # still queued: the worker that takes it skips it
            self._live.pop(job_id, None)
            await self._store.cancel(job_id, reason, 0, 0)
        log.info("image job %s cancelled: %s", job_id, reason)
        return True

    async def _worker(self) -> None:
        while True:
            job = await self._queue.get()
            self._queued -= 1
            try:
                if not job.cancelled:
                    # Its own task, so that cancelling the job leaves the worker running.
                    job.task = asyncio.get_running_loop().create_task(self._run(job))
                    try:
                        await asyncio.wait([job.task])
                    except asyncio.CancelledError:
                        job.task.cancel()  # shutting down: the job's Triton request goes too
                        await asyncio.wait([job.task])
                        raise
                    if job.cancelled:  # however the job ended once cancelled, it ends with the reason
                        await self._store.cancel(job.record.id, job.cancelled, job.step, job.total_steps)
            finally:
                if not job.started:  # failed or cancelled before it reached the model
                    self._scheduler.add_queued(job.spec.model, -1)
                self._live.pop(job.record.id, None)

    async def _run(self, job: _LiveJob) -> None:
        job_id, spec = job.record.id, job.spec
        job.state = "running"
        await self._store.mark_running(job_id)
        try:
            pngs: list[bytes] | None = None
            # No await between these two: a loaded model is claimed before anything can evict it.
            job.started = True
            self._scheduler.add_queued(spec.model, -1)
            async with self._scheduler.use(spec.model, spec.keep_alive):
                async for progress in self._gateway.stream_image(
                    spec.model, spec.prompt, spec.negative_prompt, spec.parameters, spec.image, spec.mask
                ):
                    job.step, job.total_steps = progress.step, progress.total_steps
                    if progress.images is not None:
                        pngs = progress.images
            if not pngs:
                raise errors.Internal(f"model {spec.model!r} ended the job without images")
            sizes = await asyncio.to_thread(lambda: [png_size(png) for png in pngs])
            await self._store.succeed(job_id, pngs, sizes, job.total_steps)
            log.info("image job %s succeeded (%d images)", job_id, len(pngs))
        except errors.AdapterError as err:
            err = errors.with_incident(err, f"image job {job_id}")
            await self._store.fail(job_id, err.message, job.step, job.total_steps)
            log.info("image job %s failed: %s", job_id, err.message)
        except asyncio.CancelledError:
            raise  # shutting down (the next start marks the job interrupted), or cancelled: the worker records it
        except Exception as err:  # noqa: BLE001 - the job fails; the worker lives on
            incident = uuid.uuid4().hex[:12]
            log.error("image job %s failed unexpectedly (incident %s)", job_id, incident, exc_info=err)
            await self._store.fail(
                job_id, f"internal error; incident {incident} is in the adapter's log", job.step, job.total_steps
            )

    def _retention_seconds(self) -> float:
        return self._settings.image_retention_hours * 3600

    async def _remove_expired(self) -> None:
        removed = await self._store.remove_expired(time.time() - self._retention_seconds())
        if removed:
            log.info("removed %d expired image jobs", len(removed))

    async def _retention_loop(self) -> None:
        # Sweep often enough that a job outlives its retention by at most a tenth of it (<= 10 min).
        interval = min(600.0, max(1.0, self._retention_seconds() / 10))
        while True:
            await asyncio.sleep(interval)
            try:
                await self._remove_expired()
            except Exception as err:  # noqa: BLE001 - try again next round
                log.error("image retention sweep failed: %s", err)
