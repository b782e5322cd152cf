"""Image jobs across an adapter restart, and retention: two adapters on one IMAGE_DIR."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest

from adapter.gen.inference.v1 import inference_pb2 as pb
from adapter.gen.inference.v1 import inference_pb2_grpc as pb_grpc
from tests.harness import start_adapter, stop_adapter
from tests.integration.images_helpers import generate, wait_for_job

RETENTION_S = 30.0


def _status(stub: pb_grpc.InferenceServiceStub, job_id: str) -> pb.CheckImageStatusResponse:
    return stub.CheckImageStatus(pb.CheckImageStatusRequest(job_id=job_id), timeout=10)


def test_restart_keeps_finished_jobs_fails_interrupted_ones_and_retention_removes_only_expired(
    small_models: None, tmp_path: Path
) -> None:
    image_dir = tmp_path / "images"
    env = {
        "IMAGE_DIR": str(image_dir),
        "PRELOAD_MODELS": "image",
        "IMAGE_RETENTION_HOURS": str(RETENTION_S / 3600),
    }
    first = start_adapter(tmp_path / "first.log", env=env)
    try:
        with grpc.insecure_channel(first.address) as channel:
            stub = pb_grpc.InferenceServiceStub(channel)
            done_id = generate(stub, width=64, height=64, steps=2, seed=1)
            done, _ = wait_for_job(stub, done_id)
            assert done.state == pb.JOB_STATE_SUCCEEDED, done.error_message
            # A long job that will be running, and one queued behind it, when the adapter stops.
            running_id = generate(stub, width=256, height=256, steps=150)
            queued_id = generate(stub, width=64, height=64, steps=2)
            deadline = time.monotonic() + 60
            while _status(stub, running_id).state != pb.JOB_STATE_RUNNING:
                assert time.monotonic() < deadline, "the long job never started"
                time.sleep(0.05)
    finally:
        stop_adapter(first)
    assert (image_dir / done_id / "0.png").is_file()

    second = start_adapter(tmp_path / "second.log", env=env)
    restarted_at = time.time()
    try:
        with grpc.insecure_channel(second.address) as channel:
            stub = pb_grpc.InferenceServiceStub(channel)
            kept = _status(stub, done_id)
            assert kept.state == pb.JOB_STATE_SUCCEEDED
            assert [image.png for image in kept.images] == [image.png for image in done.images]
            for job_id in (running_id, queued_id):
                interrupted = _status(stub, job_id)
                assert interrupted.state == pb.JOB_STATE_FAILED
                assert interrupted.error_message == "interrupted by restart"

            # The finished job expires RETENTION_S after it finished; the interrupted ones only
            # RETENTION_S after this restart, which is later.
            done_finished = done.finished_at.ToNanoseconds() / 1e9
            assert done_finished + RETENTION_S > restarted_at, "restart too slow for this test's retention"
            deadline = done_finished + RETENTION_S + 15
            while True:
                try:
                    _status(stub, done_id)
                except grpc.RpcError as err:
                    assert err.code() == grpc.StatusCode.NOT_FOUND
                    break
                assert time.time() < deadline, "the expired job was not removed"
                time.sleep(0.25)
            if time.time() >= restarted_at + RETENTION_S:
                pytest.fail("the sweep came too late to tell expired from unexpired jobs")
            assert not (image_dir / done_id).exists()
            for job_id in (running_id, queued_id):
                assert _status(stub, job_id).state == pb.JOB_STATE_FAILED
    finally:
        stop_adapter(second)
