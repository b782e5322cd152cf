"""Starts the real adapter (`python -m adapter`, embedded Triton) as users run it, for the tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from adapter.triton import procfs

REPO = Path(__file__).resolve().parent.parent
TEST_MODELS = REPO / "tests" / "model_repository"


def compose_model_repository(dest: Path) -> Path:
    """A model repository with the served models plus the test-only ones (symlinked, not copied)."""
    dest.mkdir(parents=True, exist_ok=True)
    for source in (REPO / "model_repository", TEST_MODELS):
        for model in source.iterdir():
            if (model / "config.pbtxt").is_file() and not (dest / model.name).exists():
                (dest / model.name).symlink_to(model)
    return dest


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def build_small_models() -> None:
    subprocess.run([sys.executable, str(REPO / "scripts" / "build_small_models.py")], check=True)


def model_cache_dir() -> Path:
    return Path(os.environ.get("MODEL_CACHE_DIR", Path.home() / ".cache" / "inference-platform" / "models"))


# The tests serve the tiny random-weight LLM where speed is what matters (every adapter they start,
# unless told otherwise); the trained chat model (make run's default) where meaning matters.
TINY_LLM = model_cache_dir() / "tiny-chat-llm"
CHAT_LLM = model_cache_dir() / "smollm2-135m-instruct"


@dataclass
class RunningAdapter:
    process: subprocess.Popen[bytes]
    address: str
    triton_grpc_url: str
    triton_metrics_url: str
    log_path: Path
    metrics_url: str = ""
    credentials: grpc.ChannelCredentials | None = None  # TLS adapters: how clients connect
    http_url: str = ""  # the OpenAI-compatible front: "http://127.0.0.1:PORT" ("" when turned off)

    def channel(self) -> grpc.Channel:
        if self.credentials is None:
            return grpc.insecure_channel(self.address)
        return grpc.secure_channel(self.address, self.credentials)

    def triton_pid(self) -> int:
        """The embedded tritonserver process."""
        for pid in self.child_pids():
            if procfs.comm(pid) == "tritonserver":
                return pid
        raise LookupError("no tritonserver process under the adapter")

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def child_pids(self) -> set[int]:
        """tritonserver and its stubs: every descendant of the adapter process."""
        return procfs.descendants(self.process.pid)


def start_adapter(
    log_path: Path,
    env: dict[str, str] | None = None,
    wait_s: float = 240,
    test_models: bool = False,
    credentials: grpc.ChannelCredentials | None = None,
    serving: bool = True,
) -> RunningAdapter:
    """`test_models`: serve tests/model_repository's models too (a composed repository next to the log).
    `credentials`: the adapter serves TLS; clients (and the readiness wait) connect with these.
    `serving=False`: return once health answers at all (NOT_SERVING too: a Triton that is down)."""
    port, triton_port, metrics_port, adapter_metrics_port = free_port(), free_port(), free_port(), free_port()
    http_port = free_port()
    repository = {}
    if test_models:
        repository["MODEL_REPOSITORY"] = str(compose_model_repository(log_path.parent / "model_repository"))
    full_env = {
        **os.environ,
        **repository,
        "GRPC_HOST": "127.0.0.1",
        "GRPC_PORT": str(port),
        "EMBEDDED_TRITON_GRPC_PORT": str(triton_port),
        "EMBEDDED_TRITON_METRICS_PORT": str(metrics_port),
        "METRICS_PORT": str(adapter_metrics_port),
        "OPENAI_HTTP_PORT": str(http_port),
        "LLM_MODEL_ID": str(TINY_LLM),
        **(env or {}),
    }
    http_port = int(full_env["OPENAI_HTTP_PORT"])
    scheme = "https" if full_env.get("GRPC_USE_TLS", "").lower() in ("1", "true", "yes", "on") else "http"
    log_file = log_path.open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "adapter"], cwd=REPO, env=full_env, stdout=log_file, stderr=subprocess.STDOUT
    )
    adapter = RunningAdapter(
        process=process,
        address=f"127.0.0.1:{port}",
        triton_grpc_url=f"127.0.0.1:{triton_port}",
        triton_metrics_url=f"http://127.0.0.1:{metrics_port}/metrics",
        log_path=log_path,
        metrics_url=f"http://127.0.0.1:{adapter_metrics_port}/metrics",
        credentials=credentials,
        http_url=f"{scheme}://127.0.0.1:{http_port}" if http_port else "",
    )
    wait_until_serving(adapter, wait_s, serving)
    return adapter


def wait_until_serving(adapter: RunningAdapter, wait_s: float, serving: bool = True) -> None:
    deadline = time.monotonic() + wait_s
    with adapter.channel() as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if adapter.process.poll() is not None:
                raise RuntimeError(f"adapter exited with {adapter.process.returncode}:\n{adapter.log_tail()}")
            try:
                status = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1).status
                if status == health_pb2.HealthCheckResponse.SERVING or not serving:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    stop_adapter(adapter)
    raise RuntimeError(f"adapter not serving after {wait_s}s:\n{adapter.log_tail()}")


def stop_adapter(adapter: RunningAdapter, timeout_s: float = 40) -> int:
    if adapter.process.poll() is None:
        adapter.process.send_signal(signal.SIGTERM)
        try:
            adapter.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            adapter.process.kill()
            adapter.process.wait()
    return adapter.process.returncode


def stub_pids(adapter: RunningAdapter, model: str) -> set[int]:
    """The python-backend stub processes serving `model` (their command line names its model.py)."""
    return procfs.stub_pids(adapter.child_pids(), f"/{model}/1/model.py")


def alive(pid: int) -> bool:
    """Running (an exited process its parent has not reaped yet is a zombie: gone)."""
    return procfs.alive(pid)


def rss_bytes(pids: set[int]) -> int:
    return procfs.rss_bytes(pids)
