"""Image jobs end to end: adapter job system -> embedded Triton -> small diffusers pipeline."""

from __future__ import annotations

import time

import grpc
import pytest

from adapter.gen.inference.v1 import inference_pb2 as pb
from adapter.gen.inference.v1 import inference_pb2_grpc as pb_grpc
from tests.integration.images_helpers import decoded_size, generate, mask, picture, wait_for_job

SMALL = {"width": 64, "height": 64, "steps": 3, "seed": 1}


def test_generate_returns_a_job_id_before_the_work_is_done_and_ends_with_pngs(
    stub: pb_grpc.InferenceServiceStub,
) -> None:
    started = time.monotonic()
    job_id = generate(stub, width=64, height=64, steps=40, seed=3, num_images=2)
    answered = time.monotonic() - started
    first = stub.CheckImageStatus(pb.CheckImageStatusRequest(job_id=job_id), timeout=10)
    assert first.state in (pb.JOB_STATE_QUEUED, pb.JOB_STATE_RUNNING)

    final, seen = wait_for_job(stub, job_id)
    assert final.state == pb.JOB_STATE_SUCCEEDED, final.error_message
    assert answered < (final.finished_at.ToNanoseconds() - final.created_at.ToNanoseconds()) / 1e9
    assert len(final.images) == 2
    for image in final.images:
        assert (image.width, image.height) == (64, 64)
        assert decoded_size(image.png) == (64, 64)
    assert final.images[0].png != final.images[1].png

    steps = [s.step for s in seen]
    assert steps == sorted(steps), "progress went backwards"
    assert final.step == final.total_steps == 40
    assert any(0 < s.step < 40 for s in seen if s.state == pb.JOB_STATE_RUNNING), "no progress seen mid-way"


def test_the_same_seed_gives_the_same_image(stub: pb_grpc.InferenceServiceStub) -> None:
    first, _ = wait_for_job(stub, generate(stub, **SMALL))
    second, _ = wait_for_job(stub, generate(stub, **SMALL))
    other, _ = wait_for_job(stub, generate(stub, **{**SMALL, "seed": 2}))
    assert first.images[0].png == second.images[0].png
    assert first.images[0].png != other.images[0].png


@pytest.mark.parametrize("with_mask", [False, True], ids=["image-to-image", "inpainting"])
def test_edit_returns_an_image_of_the_input_size(stub: pb_grpc.InferenceServiceStub, with_mask: bool) -> None:
    request = pb.EditImageRequest(
        model="image",
        prompt="make it blue",
        image=picture(64, 48),
        mask=mask(64, 48) if with_mask else b"",
        strength=0.5,
        options=pb.ImageOptions(steps=6, seed=4),
    )
    final, seen = wait_for_job(stub, stub.EditImage(request, timeout=30).job_id)
    assert final.state == pb.JOB_STATE_SUCCEEDED, final.error_message
    assert decoded_size(final.images[0].png) == (64, 48)
    assert final.total_steps == 3  # strength 0.5 of 6 steps
    assert [s.step for s in seen] == sorted(s.step for s in seen)


def test_edit_resizes_to_the_requested_size(stub: pb_grpc.InferenceServiceStub) -> None:
    request = pb.EditImageRequest(
        model="image",
        prompt="smaller",
        image=picture(100, 60, "JPEG"),
        options=pb.ImageOptions(width=32, height=32, steps=2),
    )
    final, _ = wait_for_job(stub, stub.EditImage(request, timeout=30).job_id)
    assert final.state == pb.JOB_STATE_SUCCEEDED, final.error_message
    assert decoded_size(final.images[0].png) == (32, 32)


def test_a_failure_inside_the_model_ends_the_job_failed_with_its_message(stub: pb_grpc.InferenceServiceStub) -> None:
    job_id = generate(stub, width=1032, height=64, steps=2)  # the adapter allows 2048, the model 1024
    final, _ = wait_for_job(stub, job_id)
    assert final.state == pb.JOB_STATE_FAILED
    assert "width" in final.error_message
    assert not final.images


INVALID_GENERATE = [
    ("prompt", pb.GenerateImageRequest(model="image", prompt="  ")),
    ("model", pb.GenerateImageRequest(model="", prompt="x")),
    ("options.width", pb.GenerateImageRequest(model="image", prompt="x", options=pb.ImageOptions(width=65))),
    ("options.width", pb.GenerateImageRequest(model="image", prompt="x", options=pb.ImageOptions(width=4096))),
    ("options.height", pb.GenerateImageRequest(model="image", prompt="x", options=pb.ImageOptions(height=-8))),
    ("options.steps", pb.GenerateImageRequest(model="image", prompt="x", options=pb.ImageOptions(steps=1000))),
    (
        "options.guidance_scale",
        pb.GenerateImageRequest(model="image", prompt="x", options=pb.ImageOptions(guidance_scale=-1)),
    ),
    ("options.num_images", pb.GenerateImageRequest(model="image", prompt="x", options=pb.ImageOptions(num_images=9))),
    ("options.seed", pb.GenerateImageRequest(model="image", prompt="x", options=pb.ImageOptions(seed=2**63))),
]


@pytest.mark.parametrize(
    ("field", "request_"), INVALID_GENERATE, ids=[f"{f}-{i}" for i, (f, _) in enumerate(INVALID_GENERATE)]
)
def test_invalid_generate_is_rejected_naming_the_field(
    stub: pb_grpc.InferenceServiceStub, field: str, request_: pb.GenerateImageRequest
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stub.GenerateImage(request_, timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in caught.value.details()


def _edit(**fields: object) -> pb.EditImageRequest:
    base: dict[str, object] = {"model": "image", "prompt": "x", "image": picture(64, 64)}
    return pb.EditImageRequest(**{**base, **fields})


INVALID_EDIT = [
    ("image is required", _edit(image=b"")),
    ("not a readable", _edit(image=b"\x89PNG\r\n\x1a\n garbage")),
    ("not a readable", _edit(image=b"plain text, not a picture")),
    ("PNG, JPEG or WebP", _edit(image=picture(64, 64, "GIF"))),
    ("IMAGE_MAX_INPUT_BYTES", _edit(image=b"x" * 1_000_001)),
    ("mask is 32x32 but image is 64x64", _edit(mask=mask(32, 32))),
    ("not a readable", _edit(mask=b"junk")),
    ("multiples of 8", _edit(image=picture(60, 60))),
    ("strength", _edit(strength=1.5)),
    ("strength", _edit(strength=0)),
]


@pytest.mark.parametrize(("needle", "request_"), INVALID_EDIT, ids=[n for n, _ in INVALID_EDIT])
def test_invalid_edit_is_rejected_saying_why(
    stub: pb_grpc.InferenceServiceStub, needle: str, request_: pb.EditImageRequest
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stub.EditImage(request_, timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert needle in caught.value.details()


def test_unknown_job_is_not_found(stub: pb_grpc.InferenceServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stub.CheckImageStatus(pb.CheckImageStatusRequest(job_id="no-such-job"), timeout=10)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_unknown_image_model_is_not_found_at_once(stub: pb_grpc.InferenceServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stub.GenerateImage(pb.GenerateImageRequest(model="no-such-painter", prompt="x"), timeout=10)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_a_full_queue_refuses_new_jobs_and_every_accepted_job_still_finishes(
    stub: pb_grpc.InferenceServiceStub,
) -> None:
    accepted, refused = [], 0
    for _ in range(12):  # IMAGE_MAX_QUEUED_JOBS is 6 for the test adapter, one job runs at a time
        try:
            accepted.append(generate(stub, width=64, height=64, steps=8))
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "IMAGE_MAX_QUEUED_JOBS" in err.details()
            refused += 1
    assert refused > 0 and len(accepted) >= 6
    for job_id in accepted:
        final, _ = wait_for_job(stub, job_id)
        assert final.state == pb.JOB_STATE_SUCCEEDED, final.error_message
