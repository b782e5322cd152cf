"""Helpers for the image-job tests: pictures made in memory, and a poller for job status."""

from __future__ import annotations

import io
import time

import grpc
from PIL import Image

from adapter.gen.inference.v1 import inference_pb2 as pb
from adapter.gen.inference.v1 import inference_pb2_grpc as pb_grpc

TERMINAL = (pb.JOB_STATE_SUCCEEDED, pb.JOB_STATE_FAILED)


def picture(width: int, height: int, image_format: str = "PNG", color: tuple[int, int, int] = (200, 40, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, format=image_format)
    return buffer.getvalue()


def mask(width: int, height: int) -> bytes:
    """White (repaint) left half, black (keep) right half."""
    image = Image.new("L", (width, height), 0)
    image.paste(255, (0, 0, width // 2, height))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def decoded_size(png: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(png)) as image:
        assert image.format == "PNG"
        image.load()
        return image.size


def wait_for_job(
    stub: pb_grpc.InferenceServiceStub, job_id: str, timeout_s: float = 120
) -> tuple[pb.CheckImageStatusResponse, list[pb.CheckImageStatusResponse]]:
    """Polls until the job ends; returns the last status and every status seen."""
    seen: list[pb.CheckImageStatusResponse] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = stub.CheckImageStatus(pb.CheckImageStatusRequest(job_id=job_id), timeout=30)
        seen.append(status)
        if status.state in TERMINAL:
            return status, seen
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} did not end in {timeout_s}s; last: {seen[-1] if seen else None}")


def generate(stub: pb_grpc.InferenceServiceStub, prompt: str = "a red square", **options: object) -> str:
    request = pb.GenerateImageRequest(model="image", prompt=prompt, options=pb.ImageOptions(**options))
    return str(stub.GenerateImage(request, timeout=30).job_id)


def status_code(call: object) -> grpc.StatusCode:
    try:
        call()  # type: ignore[operator]
    except grpc.RpcError as err:
        return err.code()  # type: ignore[no-any-return]
    raise AssertionError("the call succeeded")
