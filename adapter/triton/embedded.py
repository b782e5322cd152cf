"""Starts and supervises the `tritonserver` binary that ships in the nvidia-pytriton wheel.

Used when TRITON_URL is not set (local runs and tests); in Docker the adapter talks to a separate
Triton container instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import signal
import socket
import sys
import sysconfig
import tempfile
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import tritonclient.grpc.aio as triton_grpc

from adapter.triton import procfs

log = logging.getLogger(__name__)
triton_log = logging.getLogger("triton")

SHM_PREFIX = "inference_adapter_"
# Longer lines of Triton's (and its models') output are cut in the adapter's log.
MAX_LOG_LINE_BYTES = 8192
_SHM_DIR = Path("/dev/shm")


class EmbeddedTritonError(RuntimeError):
    """The embedded Triton could not be found, started or made ready."""


@dataclass(frozen=True)
class EmbeddedTritonOptions:
    model_repository: Path
    grpc_port: int  # 0 picks a free port
    metrics_port: int  # 0 picks a free port
    startup_timeout_s: float
    models_to_load: tuple[str, ...] = ()
    extra_env: tuple[tuple[str, str], ...] = ()
    exit_timeout_s: int = 10


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _pytriton_dir() -> Path:
    try:
        import pytriton
    except ImportError as err:
        raise EmbeddedTritonError("nvidia-pytriton is not installed: it provides the tritonserver binary") from err
    return Path(pytriton.__file__).parent / "tritonserver"


def _stub_python_env() -> dict[str, str]:
    """Environment in which the python backend's stub finds this interpreter and its packages."""
    env = dict(os.environ)
    # The stub embeds the first python3 on PATH: the virtualenv's, so models see its site-packages.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    # The base interpreter's libpython must win over any system one, else models fail with
    # `undefined symbol: _PyModule_Add` (docs/triton-notes.md, "Starting the bundled tritonserver").
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    wheel_libs = Path(sysconfig.get_paths()["purelib"]) / "nvidia_pytriton.libs"
    parts = [libdir, str(wheel_libs), env.get("LD_LIBRARY_PATH", "")]
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in parts if p)
    return env


def _prepare_backend_dir(root: Path) -> Path:
    """A backend directory holding the python backend plus the stub for the running Python."""
    triton_dir = _pytriton_dir()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = triton_dir / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.exists():
        raise EmbeddedTritonError(f"nvidia-pytriton ships no python backend stub for Python {version}")
    python_dir = root / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    for source in [*(triton_dir / "backends" / "python").glob("*.*"), stub]:
        target = python_dir / source.name
        if not target.exists():
            target.symlink_to(source)
    return root


def clean_stale_shared_memory() -> None:
    """Removes python-backend shared memory left by embedded Tritons whose adapter has died."""
    pattern = re.compile(rf"^{SHM_PREFIX}(\d+)_")
    for path in _SHM_DIR.glob(f"{SHM_PREFIX}*"):
        match = pattern.match(path.name)
        if match and not procfs.alive(int(match.group(1))):
            with contextlib.suppress(OSError):
                path.unlink()


class EmbeddedTriton:
    """One tritonserver child process: start, wait until ready, forward its log, restart it (same
    ports) if it dies, stop."""

    def __init__(self, options: EmbeddedTritonOptions) -> None:
        self.options = options
        self.grpc_port = options.grpc_port or _free_port()
        self.metrics_port = options.metrics_port or _free_port()
        self._process: asyncio.subprocess.Process | None = None
        self._workdir: Path | None = None
        self._log_task: asyncio.Task[None] | None = None
        self._recent_log: deque[str] = deque(maxlen=40)
        self._shm_prefix = f"{SHM_PREFIX}{os.getpid()}_{id(self) & 0xFFFF:x}_"
        self._stopping = False
        self._supervisor: asyncio.Task[None] | None = None
        self.restarts = 0
        # Told at once when the server exits unexpectedly (before the restart): no probe needed to
        # know it is gone. Called with the exit code, on the event loop.
        self.on_exit: Callable[[int | None], None] | None = None

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def stub_pids(self, model: str) -> set[int]:
        """The python-backend stub processes now serving `model` (children of our tritonserver
        whose command line names the model's model.py)."""
        if self._process is None:
            return set()
        marker = f"{self.options.model_repository.resolve()}/{model}/"
        return procfs.stub_pids(procfs.children(self._process.pid), marker)

    async def start(self) -> None:
        clean_stale_shared_memory()
        await self._launch()
        self._supervisor = asyncio.get_running_loop().create_task(self._supervise())

    async def _supervise(self) -> None:
        """Restarts a tritonserver that died (killed, crashed) on the same ports, with backoff.
        What it had loaded is gone: the adapter's health watcher tells the scheduler."""
        backoff_s = 1.0
        while not self._stopping:
            process = self._process
            if process is None:
                return
            # Not process.wait(): on Python 3.11 it also waits for the stdout pipe to close, which
            # the stubs of a killed server hold open. The return code is known at once.
            while process.returncode is None:
                await asyncio.sleep(0.2)
            code = process.returncode
            if self._stopping:
                return
            log.error(
                "embedded tritonserver exited unexpectedly (code %s); its last lines:\n%s",
                code,
                "\n".join(self._recent_log),
            )
            if self.on_exit is not None:
                try:
                    self.on_exit(code)
                except Exception:  # noqa: BLE001 - the restart must happen whatever the listener does
                    log.exception("reacting to tritonserver's exit failed")
            await self._reap()
            while not self._stopping:
                await asyncio.sleep(backoff_s)
                try:
                    await self._launch()
                    self.restarts += 1
                    log.info("embedded tritonserver restarted (pid %s)", self.pid)
                    backoff_s = 1.0
                    break
                except EmbeddedTritonError as err:
                    log.error("restarting tritonserver failed: %s", err)
                    backoff_s = min(backoff_s * 2, 30.0)

    async def _launch(self) -> None:
        self._workdir = Path(tempfile.mkdtemp(prefix="embedded-triton-"))
        backend_dir = _prepare_backend_dir(self._workdir / "backends")
        binary = _pytriton_dir() / "bin" / "tritonserver"
        args = [
            str(binary),
            f"--model-repository={self.options.model_repository.resolve()}",
            "--model-control-mode=explicit",
            f"--backend-directory={backend_dir}",
            "--disable-auto-complete-config",  # configs are complete; halves load time
            "--allow-http=false",
            "--grpc-address=127.0.0.1",
            f"--grpc-port={self.grpc_port}",
            "--allow-metrics=true",
            "--metrics-address=127.0.0.1",
            f"--metrics-port={self.metrics_port}",
            f"--exit-timeout-secs={self.options.exit_timeout_s}",
            f"--backend-config=python,shm-region-prefix-name={self._shm_prefix}",
            "--log-info=true",
        ]
        args += [f"--load-model={name}" for name in self.options.models_to_load]
        env = _stub_python_env()
        env.update(dict(self.options.extra_env))
        log.info("starting embedded tritonserver (grpc %s, metrics %s)", self.grpc_url, self.metrics_url)
        self._process = await asyncio.create_subprocess_exec(
            *args,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # its own process group: stubs are stopped with it
        )
        self._log_task = asyncio.create_task(self._forward_log())
        await self._wait_ready()

    async def _forward_log(self) -> None:
        """Forwards tritonserver's output line by line. Reads in chunks, not lines: a model can log
        a line of any length (a tokenizer quoting a huge prompt), and a line reader that gave up on
        it would stop draining the pipe; Triton, blocked writing its log, then hangs whole."""
        assert self._process and self._process.stdout
        stdout = self._process.stdout
        pending = b""
        while chunk := await stdout.read(1 << 16):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for raw in lines:
                self._log_line(raw)
            if len(pending) > MAX_LOG_LINE_BYTES:  # no newline in sight: log what we have
                self._log_line(pending)
                pending = b""
        if pending:
            self._log_line(pending)

    def _log_line(self, raw: bytes) -> None:
        line = raw[:MAX_LOG_LINE_BYTES].decode("utf-8", errors="replace").rstrip()
        if len(raw) > MAX_LOG_LINE_BYTES:
            line += f" [... {len(raw) - MAX_LOG_LINE_BYTES} more bytes]"
        if line:
            self._recent_log.append(line)
            triton_log.info("%s", line)

    async def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.options.startup_timeout_s
        client = triton_grpc.InferenceServerClient(self.grpc_url)
        try:
            while time.monotonic() < deadline:
                if self._process is None or self._process.returncode is not None:
                    raise EmbeddedTritonError(
                        "tritonserver exited during start-up; its last lines:\n" + "\n".join(self._recent_log)
                    )
                with contextlib.suppress(Exception):
                    if await client.is_server_ready():
                        log.info("embedded tritonserver ready (pid %s)", self.pid)
                        return
                await asyncio.sleep(0.1)
        finally:
            await client.close()
        await self._terminate()
        raise EmbeddedTritonError(
            f"tritonserver not ready after {self.options.startup_timeout_s:.0f}s; its last lines:\n"
            + "\n".join(self._recent_log)
        )

    async def stop(self) -> None:
        """Stops supervising, then SIGTERM (Triton drains in-flight requests), then SIGKILL the whole
        group if it lingers."""
        self._stopping = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        await self._terminate()

    async def _terminate(self) -> None:
        process = self._process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), self.options.exit_timeout_s + 5)
            except TimeoutError:
                log.warning("tritonserver did not exit after SIGTERM; killing its process group")
        await self._reap()

    async def _reap(self) -> None:
        """After the server exited: no stub of its group may live on; its files go."""
        process = self._process
        if process is not None:
            # Stubs are in the server's process group; none may outlive it.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                await process.wait()
        if self._log_task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._log_task, 2)
        for path in _SHM_DIR.glob(f"{self._shm_prefix}*"):
            with contextlib.suppress(OSError):
                path.unlink()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
        self._process = None
