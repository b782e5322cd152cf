"""Idempotent image-job submission on the real adapter: a retry with the same request_id gets the
same job (however many arrive at once), a different request under a used id is ALREADY_EXISTS."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from adapter.gen.inference.v1 import inference_pb2 as pb
from adapter.gen.inference.v1 import inference_pb2_grpc as pb_grpc
from tests.integration.images_helpers import picture, wait_for_job

OPTIONS = pb.ImageOptions(width=32, height=32, steps=1)


def generate_request(request_id: str, prompt: str = "a red square") -> pb.GenerateImageRequest:
    return pb.GenerateImageRequest(model="image", prompt=prompt, options=OPTIONS, request_id=request_id)


def test_the_same_request_id_returns_the_same_job_and_runs_it_once(stub: pb_grpc.InferenceServiceStub) -> None:
    request = generate_request(str(uuid.uuid4()))
    with ThreadPoolExecutor(8) as pool:  # retries racing each other
        ids = set(pool.map(lambda _: stub.GenerateImage(request, timeout=30).job_id, range(8)))
    assert len(ids) == 1
    (job_id,) = ids
    status, _ = wait_for_job(stub, job_id)
    assert status.state == pb.JOB_STATE_SUCCEEDED, status.error_message
    # Also once the job has finished (kept for IMAGE_RETENTION_HOURS).
    assert stub.GenerateImage(request, timeout=30).job_id == job_id
    # Without a request_id every submission is a new job.
    plain = generate_request("")
    assert stub.GenerateImage(plain, timeout=30).job_id != stub.GenerateImage(plain, timeout=30).job_id


def test_a_used_request_id_with_a_different_request_is_already_exists(stub: pb_grpc.InferenceServiceStub) -> None:
    request_id = str(uuid.uuid4())
    first = stub.GenerateImage(generate_request(request_id), timeout=30).job_id
    for other in (
        generate_request(request_id, prompt="a blue square"),
        pb.EditImageRequest(model="image", prompt="a red square", image=picture(32, 32), request_id=request_id),
    ):
        call = stub.GenerateImage if isinstance(other, pb.GenerateImageRequest) else stub.EditImage
        with pytest.raises(grpc.RpcError) as refused:
            call(other, timeout=30)
        assert refused.value.code() == grpc.StatusCode.ALREADY_EXISTS
        assert request_id in (refused.value.details() or "") and first in (refused.value.details() or "")
    wait_for_job(stub, first)


def test_edit_image_is_idempotent_too(stub: pb_grpc.InferenceServiceStub) -> None:
    request = pb.EditImageRequest(
        model="image", prompt="a red square", image=picture(32, 32), options=OPTIONS, request_id=str(uuid.uuid4())
    )
    job_id = stub.EditImage(request, timeout=30).job_id
    assert stub.EditImage(request, timeout=30).job_id == job_id
    changed = pb.EditImageRequest()
    changed.CopyFrom(request)
    changed.image = picture(32, 32, color=(0, 0, 255))  # another picture: another request
    with pytest.raises(grpc.RpcError) as refused:
        stub.EditImage(changed, timeout=30)
    assert refused.value.code() == grpc.StatusCode.ALREADY_EXISTS
    wait_for_job(stub, job_id)


def test_an_overlong_request_id_is_invalid_argument(stub: pb_grpc.InferenceServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        stub.GenerateImage(generate_request("x" * 129), timeout=30)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "request_id" in (refused.value.details() or "")
