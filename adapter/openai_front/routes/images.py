"""POST /v1/images/generations and /v1/images/edits (multipart): each runs as an image job, and the
response waits for it and carries the PNGs as `b64_json`. A client that disconnects cancels its job
(unless another request waits for the same job: an Idempotency-Key retry); the Idempotency-Key
header is the job's request_id, as GenerateImage's over gRPC."""

from __future__ import annotations

import asyncio
from collections import Counter

from fastapi import APIRouter, Depends, File, Form, Header, Request, UploadFile
from fastapi.responses import JSONResponse

from adapter.core import types as t
from adapter.core.images import ImageService
from adapter.core.services import CoreServices
from adapter.openai_front import convert
from adapter.openai_front import schemas as s
from adapter.openai_front.errors import HttpError, unsupported
from adapter.openai_front.routes import ERRORS, OpenAIRoute, services

router = APIRouter(route_class=OpenAIRoute)

POLL_S = 0.1  # jobs report progress from memory: polling costs a dict lookup
DISCONNECTED = "cancelled: its HTTP client disconnected before the job finished"
_waiting: Counter[str] = Counter()  # job id -> requests waiting for it


async def wait_for_job(images: ImageService, job_id: str) -> t.ImageJobStatus:
    _waiting[job_id] += 1
    try:
        while True:
            status = await images.status(job_id)
            if status.state is t.JobState.SUCCEEDED:
                return status
            if status.state is t.JobState.FAILED:
                raise HttpError(500, f"image job {job_id} failed: {status.error_message}", code="image_job_failed")
            await asyncio.sleep(POLL_S)
    except asyncio.CancelledError:
        if _waiting[job_id] == 1:  # the last one waiting for it has gone
            await images.cancel(job_id, DISCONNECTED)
        raise
    finally:
        _waiting[job_id] -= 1
        if not _waiting[job_id]:
            del _waiting[job_id]


IDEMPOTENCY = Header(
    default=None,
    alias="Idempotency-Key",
    description="the same key again (while the job is kept) returns the same job's images; "
    "with a different request it is a 409",
)


@router.post("/v1/images/generations", response_model=None, responses={200: {"model": s.ImagesResponse}, **ERRORS})
async def generations(
    body: s.ImageGenerationRequest,
    idempotency_key: str | None = IDEMPOTENCY,
    core: CoreServices = Depends(services),  # noqa: B008 - FastAPI's idiom
) -> JSONResponse:
    # n is honoured here (num_images), unlike in chat.
    convert.refuse_unsupported({name: getattr(body, name) for name in body.model_fields_set - {"n"}})
    if body.stream:
        raise unsupported("stream", "images come whole, when the job is done")
    convert.check_image_formats(body.response_format, body.output_format)
    options = convert.image_options(body.n, body.size, body.negative_prompt, body.steps, body.guidance_scale, body.seed)
    job_id = await core.images.generate(
        t.GenerateImageRequest(model=body.model, prompt=body.prompt, options=options, request_id=idempotency_key or "")
    )
    return JSONResponse(convert.images_response(await wait_for_job(core.images, job_id)))


@router.post("/v1/images/edits", response_model=None, responses={200: {"model": s.ImagesResponse}, **ERRORS})
async def edits(  # noqa: PLR0913 - OpenAI's form fields
    request: Request,
    image: UploadFile = File(description="PNG, JPEG or WebP"),  # noqa: B008
    prompt: str = Form(),
    model: str = Form(),
    mask: UploadFile | None = File(default=None, description="white repaints, black keeps; the image's size"),  # noqa: B008
    n: int | None = Form(default=None),
    size: str | None = Form(default=None),
    response_format: str | None = Form(default=None),
    output_format: str | None = Form(default=None),
    user: str | None = Form(default=None),
    negative_prompt: str | None = Form(default=None),
    steps: int | None = Form(default=None),
    guidance_scale: float | None = Form(default=None),
    seed: int | None = Form(default=None),
    strength: float | None = Form(default=None),
    quality: str | None = Form(default=None),
    background: str | None = Form(default=None),
    input_fidelity: str | None = Form(default=None),
    output_compression: int | None = Form(default=None),
    partial_images: int | None = Form(default=None),
    stream: bool | None = Form(default=None),
    idempotency_key: str | None = IDEMPOTENCY,
    core: CoreServices = Depends(services),  # noqa: B008
) -> JSONResponse:
    form = await request.form()  # parsed once already: starlette keeps it
    unknown = sorted(set(form.keys()) - s.IMAGE_EDIT_FIELDS)
    if unknown:
        hint = " (one image, as `image`)" if unknown[0].startswith("image") else ""
        raise HttpError(400, f"unrecognized request argument: {unknown[0]}{hint}", param=unknown[0])
    convert.refuse_unsupported(
        {
            "quality": quality,
            "background": background,
            "input_fidelity": input_fidelity,
            "output_compression": output_compression,
            "partial_images": partial_images,
        }
    )
    if stream:
        raise unsupported("stream", "images come whole, when the job is done")
    convert.check_image_formats(response_format, output_format)
    options = convert.image_options(n, size, negative_prompt, steps, guidance_scale, seed)
    job_id = await core.images.edit(
        t.EditImageRequest(
            model=model,
            prompt=prompt,
            image=await image.read(),
            mask=await mask.read() if mask is not None else b"",
            strength=strength,
            options=options,
            request_id=idempotency_key or "",
        )
    )
    return JSONResponse(convert.images_response(await wait_for_job(core.images, job_id)))
