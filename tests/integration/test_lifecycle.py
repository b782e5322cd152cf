"""The adapter's own process life: start-up errors, Triton unreachable, clean shutdown."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from adapter.gen.inference.v1 import inference_pb2 as pb
from adapter.gen.inference.v1 import inference_pb2_grpc as pb_grpc
from tests.harness import REPO, free_port, start_adapter, stop_adapter


def test_bad_configuration_stops_start_up_naming_the_variable() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "adapter"],
        cwd=REPO,
        env={**os.environ, "GRPC_PORT": "not-a-port"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "GRPC_PORT" in result.stderr


def test_unreachable_triton_gives_unavailable(tmp_path: Path) -> None:
    dead = f"127.0.0.1:{free_port()}"
    running = start_adapter(
        tmp_path / "adapter.log", env={"TRITON_URL": dead, "PRELOAD_MODELS": ""}, wait_s=60, serving=False
    )
    try:
        with grpc.insecure_channel(running.address) as channel:  # health says what it knows
            check = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert check.status == health_pb2.HealthCheckResponse.NOT_SERVING
        with grpc.insecure_channel(running.address) as channel:
            stub = pb_grpc.InferenceServiceStub(channel)
            request = pb.ChatStreamRequest(model="llm", messages=[pb.ChatMessage(role="user", content="hi")])
            with pytest.raises(grpc.RpcError) as caught:
                list(stub.ChatStream(request, timeout=30))
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "Triton is unavailable" in caught.value.details()
    finally:
        stop_adapter(running)


def test_sigterm_stops_the_adapter_and_every_triton_process(small_models: None, tmp_path: Path) -> None:
    running = start_adapter(tmp_path / "adapter.log")
    children = running.child_pids()
    assert children, "the embedded tritonserver should be a child of the adapter"
    shm_before = {p.name for p in Path("/dev/shm").glob(f"inference_adapter_{running.process.pid}_*")}
    assert shm_before, "the python backend's shared memory should carry the adapter's prefix"

    assert stop_adapter(running) == 0, running.log_tail()
    alive = [pid for pid in children if Path(f"/proc/{pid}").exists()]
    assert not alive, f"orphans after shutdown: {alive}"
    assert not list(Path("/dev/shm").glob(f"inference_adapter_{running.process.pid}_*"))
    assert "adapter stopped" in running.log_tail()
