"""GenerateImage, EditImage, CheckImageStatus: validate, hand to the job service, report jobs."""

from __future__ import annotations

import asyncio

from google.protobuf.timestamp_pb2 import Timestamp

from adapter.config import Settings
from adapter.core import image_inputs
from adapter.gen.inference.v1 import inference_pb2 as pb
from adapter.scheduling.image_jobs import ImageJobService
from adapter.scheduling.job_store import JobRecord

STATES = {
    "queued": pb.JOB_STATE_QUEUED,
    "running": pb.JOB_STATE_RUNNING,
    "succeeded": pb.JOB_STATE_SUCCEEDED,
    "failed": pb.JOB_STATE_FAILED,
}


def _timestamp(seconds: float | None) -> Timestamp | None:
    if seconds is None:
        return None
    stamp = Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


class ImageService:
    def __init__(self, jobs: ImageJobService, settings: Settings) -> None:
        self._jobs = jobs
        self._settings = settings

    async def generate(self, request: pb.GenerateImageRequest) -> pb.GenerateImageResponse:
        spec = image_inputs.check_generate(request, self._settings)
        digest = image_inputs.fingerprint(spec) if spec.request_id else ""
        return pb.GenerateImageResponse(job_id=await self._jobs.submit(spec, digest))

    async def edit(self, request: pb.EditImageRequest) -> pb.EditImageResponse:
        spec = image_inputs.check_edit_fields(request, self._settings)
        # Decoding (and hashing) the pictures is CPU work: off the event loop.
        await asyncio.to_thread(image_inputs.check_edit_images, spec, self._settings)
        digest = await asyncio.to_thread(image_inputs.fingerprint, spec) if spec.request_id else ""
        return pb.EditImageResponse(job_id=await self._jobs.submit(spec, digest))

    async def status(self, request: pb.CheckImageStatusRequest) -> pb.CheckImageStatusResponse:
        view = await self._jobs.status(request.job_id)
        return self._response(view.record, view.images)

    @staticmethod
    def _response(record: JobRecord, images: list[bytes]) -> pb.CheckImageStatusResponse:
        return pb.CheckImageStatusResponse(
            job_id=record.id,
            state=STATES[record.state],
            step=record.step,
            total_steps=record.total_steps,
            error_message=record.error,
            images=[
                pb.Image(png=png, width=width, height=height)
                for png, (width, height) in zip(images, record.image_sizes, strict=True)
            ],
            created_at=_timestamp(record.created_at),
            finished_at=_timestamp(record.finished_at),
        )
