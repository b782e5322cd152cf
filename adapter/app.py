"""Builds the gRPC server and runs the adapter's life cycle: Triton up, serve, shut down in order."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from concurrent import futures

from prometheus_client import Gauge

from adapter.config import Settings
from adapter.core import errors
from adapter.core.embedding import EmbeddingService
from adapter.core.images import ImageService
from adapter.core.memory import MemoryService
from adapter.core.models import ModelService
from adapter.core.services import CoreServices
from adapter.core.text_generation import TextGenerationService
from adapter.grpc_front.server import SERVICE_NAME, GrpcFront
from adapter.metrics import AdapterMetrics
from adapter.openai_front.server import OpenAIFront
from adapter.scheduling.image_jobs import ImageJobService
from adapter.scheduling.job_store import JobStore
from adapter.scheduling.scheduler import ModelSlot, NoGpuMetrics, Scheduler
from adapter.triton.chat_templates import ChatTemplates
from adapter.triton.embedded import EmbeddedTriton, EmbeddedTritonOptions
from adapter.triton.gateway import TritonGateway
from adapter.triton.health import TritonHealthWatcher
from adapter.triton.memory_readings import TritonMemoryProbe

log = logging.getLogger(__name__)


class Adapter:
    """The running adapter: its Triton (embedded or external), gateway and gRPC server."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.triton: EmbeddedTriton | None = None
        self.gateway: TritonGateway | None = None
        self.grpc: GrpcFront | None = None
        self.http: OpenAIFront | None = None  # None when OPENAI_HTTP_PORT is 0
        self.services: CoreServices | None = None
        self.serving = False
        self.image_jobs: ImageJobService | None = None
        self.scheduler: Scheduler | None = None
        self._background: list[asyncio.Task[None]] = []
        self.metrics = AdapterMetrics()
        self.watcher: TritonHealthWatcher | None = None
        self._triton_generation = 0  # counts Triton's outages: a recovery from an older one is stale
        self._recovery: asyncio.Task[None] | None = None
        self._reactions: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        s = self.settings
        # GRPC_MAX_WORKERS threads run the blocking work, before anything uses the loop's default
        # executor (asyncio.to_thread: input images, PNG sizes, Triton's metrics). SQLite keeps its
        # own single thread (job_store.py).
        asyncio.get_running_loop().set_default_executor(
            futures.ThreadPoolExecutor(max_workers=s.grpc_max_workers, thread_name_prefix="blocking")
        )
        if s.embedded:
            self.triton = EmbeddedTriton(
                EmbeddedTritonOptions(
                    model_repository=s.model_repository,
                    grpc_port=s.embedded_triton_grpc_port,
                    metrics_port=s.embedded_triton_metrics_port,
                    startup_timeout_s=s.triton_startup_timeout_s,
                    extra_env=tuple(s.model_environment().items()),
                )
            )
            await self.triton.start()
            triton_url, metrics_url = self.triton.grpc_url, self.triton.metrics_url
        else:
            host = s.triton_url.rsplit(":", 1)[0]
            triton_url, metrics_url = s.triton_url, s.triton_metrics_url or f"http://{host}:8002/metrics"
        self.gateway = TritonGateway(
            triton_url,
            s.model_load_timeout_s,
            stub_pids=self.triton.stub_pids if self.triton else None,
            chat_templates=ChatTemplates(s.model_repository, s.tokenizer_cache_dir, s.hf_token),
        )
        probe = TritonMemoryProbe(metrics_url)
        self.scheduler = Scheduler(
            self.gateway,
            probe,
            budget_bytes=s.vram_budget_bytes or None,
            budget_fraction=s.vram_budget_fraction,
            declared_memory=s.declared_memory,
            default_keep_alive_s=s.keep_alive_s,
            load_timeout_s=s.model_load_timeout_s,
            max_waiting=s.max_load_waiters,
            gpu_expected=s.gpu_host(),
        )
        self.scheduler.slot_observer = self._observe_slot
        self.scheduler.add_listener(self.metrics.model_event)
        self.gateway.on_model_missing = self.scheduler.model_missing
        try:
            log.info("memory budget: %d bytes (%s)", await self.scheduler.refresh_budget(), self.scheduler.budgets)
            self.metrics.set_budget(self.scheduler.budget_bytes)
        except NoGpuMetrics:
            raise  # a GPU host whose GPUs Triton cannot see: refuse to start (the message says what to set)
        except Exception as err:  # noqa: BLE001 - Triton unreachable: serve, and report per request
            log.error("no memory budget yet (%s); retrying when models are loaded", err)
        reachable = await self._preload(self.scheduler)
        self._background.append(asyncio.get_running_loop().create_task(self.scheduler.run_keep_alive()))
        self.image_jobs = ImageJobService(self.gateway, self.scheduler, JobStore(s.image_dir), s)
        await self.image_jobs.start()
        memory = MemoryService(self.scheduler, probe)

        self.services = CoreServices(
            text=TextGenerationService(self.gateway, self.scheduler, s.prompt_char_limit()),
            embedding=EmbeddingService(self.gateway, self.scheduler, s),
            images=ImageService(self.image_jobs, s),
            memory=memory,
            models=ModelService(self.scheduler),
        )
        self.grpc = GrpcFront(s, self.services, self.metrics)
        await self.grpc.start()
        if s.openai_http_port:
            self.http = OpenAIFront(s, self.services, self.metrics)
            await self.http.start()
        loop = asyncio.get_running_loop()
        # For leak hunting (benchmarks/soak.py): read at scrape time, from the HTTP server's thread.
        Gauge(
            "adapter_asyncio_tasks", "asyncio tasks alive in the adapter's event loop", registry=self.metrics.registry
        ).set_function(lambda: len(asyncio.all_tasks(loop)))
        metrics_port = await self.metrics.start_http(s.grpc_host, s.metrics_port)
        log.info("adapter metrics on http://%s:%d/metrics (Triton's: %s)", s.grpc_host, metrics_port, metrics_url)
        # One failed probe is enough: a load balancer must not send traffic to a replica whose Triton
        # is gone, however short the outage (an embedded one restarts within about a second).
        self.watcher = TritonHealthWatcher(
            self.gateway.is_ready,
            self._triton_readiness_changed,
            interval_s=s.triton_health_interval_s,
            failures_to_flip=1,
        )
        if reachable and await self.watcher.probe():
            await self._set_health(True)
        else:
            # An external Triton not up yet: NOT_SERVING until it answers and PRELOAD_MODELS are
            # loaded (the watcher's first good probe starts that, as after an outage).
            log.warning("Triton is not reachable yet: health NOT_SERVING until it is and its models are loaded")
            await self._set_health(False)
            self.watcher.recheck()
        self._background.append(asyncio.get_running_loop().create_task(self.watcher.run()))
        if self.triton is not None:
            self.triton.on_exit = self._embedded_triton_exited
        log.info(
            "adapter serving %s on %s (%s%s; Triton at %s)",
            SERVICE_NAME,
            self.grpc.address,
            "mutual TLS" if s.grpc_client_ca_file else "TLS" if s.grpc_use_tls else "plaintext",
            ", API key required" if s.grpc_require_api_key else "",
            triton_url,
        )
        if self.http is not None:
            log.info("OpenAI-compatible API on %s://%s/v1", self.http.scheme, self.http.address)

    async def _set_health(self, serving: bool) -> None:
        """Every front's health (gRPC's grpc.health.v1, HTTP's /health) follows Triton's."""
        self.serving = serving
        if self.grpc is not None:
            await self.grpc.set_serving(serving)
        if self.http is not None:
            self.http.serving = serving  # /health

    def _embedded_triton_exited(self, code: int | None) -> None:
        """The supervisor saw the embedded Triton exit: NOT_SERVING at once, before any probe."""
        if self.watcher is not None:
            task = asyncio.get_running_loop().create_task(
                self.watcher.mark_down(f"gone (the embedded tritonserver exited with code {code})")
            )
            self._reactions.add(task)
            task.add_done_callback(self._reactions.discard)

    async def _triton_readiness_changed(self, ready: bool) -> None:
        """Down: NOT_SERVING at once. Back: SERVING only once the scheduler knows what Triton lost
        and PRELOAD_MODELS are loaded again, as at start-up (in the background)."""
        if not ready:
            self._triton_generation += 1
            if self._recovery is not None:
                self._recovery.cancel()
            await self._set_health(False)
            return
        if self._recovery is None or self._recovery.done():
            self._recovery = asyncio.get_running_loop().create_task(self._recover(self._triton_generation))

    async def _recover(self, generation: int) -> None:
        assert self.scheduler is not None and self.gateway is not None
        try:
            lost = await self.scheduler.resync()
            for model in lost:
                self.gateway.forget(model)
            if lost:
                log.warning("Triton came back without %s; loading the preloaded ones again", ", ".join(lost))
            if not await self._preload(self.scheduler) or not await self.gateway.is_ready():
                raise errors.Unavailable("Triton went away again while the preloaded models were loading")
        except asyncio.CancelledError:
            raise
        except Exception as err:  # noqa: BLE001 - retried on the next successful probe
            log.warning("Triton answers but cannot serve yet (%s); trying again", err)
            if generation == self._triton_generation and self.watcher is not None:
                self.watcher.recheck()
            return
        if generation == self._triton_generation:
            await self._set_health(True)
            log.info("Triton is back and PRELOAD_MODELS are loaded: health SERVING")

    def _observe_slot(self, slot: ModelSlot) -> None:
        self.metrics.set_in_flight(slot.name, slot.in_flight)
        self.metrics.set_queue_depth(slot.name, slot.waiting)

    async def _preload(self, scheduler: Scheduler) -> bool:
        """Loads PRELOAD_MODELS. False when Triton was unreachable for one (a model that fails to
        load is logged and served anyway: its requests report the reason)."""
        reachable = True
        for model in self.settings.preload_models:
            try:
                seconds = await scheduler.load(model)
                log.info("preloaded %s (%.1fs)", model, seconds)
            except Exception as err:  # noqa: BLE001 - serve anyway; requests will report the reason
                log.error("could not preload model %s: %s", model, err)
                reachable = reachable and not isinstance(err, errors.Unavailable)
        return reachable

    async def stop(self) -> None:
        """NOT_SERVING; refuse new calls; let running ones finish within the grace period, end the
        rest with UNAVAILABLE (their Triton requests cancelled); then stop Triton."""
        if self.grpc is not None:
            await self.grpc.enter_graceful_shutdown()
        if self.http is not None:
            self.http.serving = False
        for task in [*self._background, *self._reactions, *([self._recovery] if self._recovery else [])]:
            task.cancel()
        # Both fronts drain at once, within the same grace period.
        await asyncio.gather(
            *([self.grpc.stop(self.settings.shutdown_grace_s)] if self.grpc is not None else []),
            *([self.http.stop()] if self.http is not None else []),
        )
        self.metrics.stop_http()
        if self.image_jobs is not None:
            await self.image_jobs.stop()
        if self.gateway is not None:
            await self.gateway.close()
        if self.triton is not None:
            await self.triton.stop()
        log.info("adapter stopped")


async def serve(settings: Settings) -> None:
    adapter = Adapter(settings)
    stop_requested = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop_requested.set)
    try:
        await adapter.start()
        await stop_requested.wait()
        log.info("shutdown requested")
    finally:
        with contextlib.suppress(Exception):
            await adapter.stop()
