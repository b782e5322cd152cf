"""GenerateImage, EditImage, CheckImageStatus: validate, hand to the job queue, report jobs."""

from __future__ import annotations

import asyncio

from adapter.config import Settings
from adapter.core import image_inputs
from adapter.core import types as t
from adapter.scheduling.image_jobs import ImageJobService


class ImageService:
    def __init__(self, jobs: ImageJobService, settings: Settings) -> None:
        self._jobs = jobs
        self._settings = settings

    async def generate(self, request: t.GenerateImageRequest) -> str:
        """Starts the job (or finds the one its request_id started); returns its id."""
        spec = image_inputs.check_generate(request, self._settings)
        digest = image_inputs.fingerprint(spec) if spec.request_id else ""
        return await self._jobs.submit(spec, digest)

    async def edit(self, request: t.EditImageRequest) -> str:
        spec = image_inputs.check_edit_fields(request, self._settings)
        # Decoding (and hashing) the pictures is CPU work: off the event loop.
        await asyncio.to_thread(image_inputs.check_edit_images, spec, self._settings)
        digest = await asyncio.to_thread(image_inputs.fingerprint, spec) if spec.request_id else ""
        return await self._jobs.submit(spec, digest)

    async def cancel(self, job_id: str, reason: str) -> bool:
        """Stops a queued or running job: it ends FAILED with `reason`, and its request_id is free for
        a new job. False when the job had already finished (or is unknown)."""
        return await self._jobs.cancel(job_id, reason)

    async def status(self, job_id: str) -> t.ImageJobStatus:
        view = await self._jobs.status(job_id)
        record = view.record
        return t.ImageJobStatus(
            job_id=record.id,
            state=t.JobState(record.state),
            step=record.step,
            total_steps=record.total_steps,
            error_message=record.error,
            images=[
                t.GeneratedImage(png=png, width=width, height=height)
                for png, (width, height) in zip(view.images, record.image_sizes, strict=True)
            ],
            created_at=record.created_at,
            finished_at=record.finished_at,
        )
