"""Builds the gRPC server and runs the adapter's life cycle: Triton up, serve, shut down in order."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from adapter.config import Settings
from adapter.embedded_triton import EmbeddedTriton, EmbeddedTritonOptions
from adapter.gen.inference.v1 import inference_pb2 as pb
from adapter.gen.inference.v1 import inference_pb2_grpc as pb_grpc
from adapter.image_jobs import ImageJobService
from adapter.job_store import JobStore
from adapter.servicer import InferenceServicer
from adapter.services.embedding import EmbeddingService
from adapter.services.images import ImageService
from adapter.services.text_generation import TextGenerationService
from adapter.triton_gateway import TritonGateway

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["InferenceService"].full_name
SHUTDOWN_GRACE_S = 10.0


def server_options(settings: Settings) -> list[tuple[str, int]]:
    return [
        ("grpc.max_send_message_length", settings.grpc_max_message_size),
        ("grpc.max_receive_message_length", settings.grpc_max_message_size),
        # Accept the Go client's keepalive pings (every 10 s), also while no call is open.
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 5_000),
        ("grpc.http2.max_pings_without_data", 0),
    ]


class Adapter:
    """The running adapter: its Triton (embedded or external), gateway and gRPC server."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.triton: EmbeddedTriton | None = None
        self.gateway: TritonGateway | None = None
        self.server: grpc.aio.Server | None = None
        self.image_jobs: ImageJobService | None = None
        self.health = health.aio.HealthServicer()

    async def start(self) -> None:
        s = self.settings
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
            triton_url = self.triton.grpc_url
        else:
            triton_url = s.triton_url
        self.gateway = TritonGateway(triton_url, s.model_load_timeout_s)
        await self._preload(self.gateway)
        self.image_jobs = ImageJobService(self.gateway, JobStore(s.image_dir), s)
        await self.image_jobs.start()

        # The pool runs any synchronous handler work off the event loop (GRPC_MAX_WORKERS threads).
        self.server = grpc.aio.server(
            futures.ThreadPoolExecutor(max_workers=s.grpc_max_workers), options=server_options(s)
        )
        pb_grpc.add_InferenceServiceServicer_to_server(
            InferenceServicer(
                TextGenerationService(self.gateway),
                EmbeddingService(self.gateway, s),
                ImageService(self.image_jobs, s),
            ),
            self.server,
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        if s.grpc_enable_reflection:
            reflection.enable_server_reflection(
                (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
                self.server,
            )
        address = f"{s.grpc_host}:{s.grpc_port}"
        if self.server.add_insecure_port(address) == 0:
            raise OSError(f"cannot listen on {address} (GRPC_HOST/GRPC_PORT)")
        await self.server.start()
        for service in ("", SERVICE_NAME):
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        log.info("adapter serving %s on %s (Triton at %s)", SERVICE_NAME, address, triton_url)

    async def _preload(self, gateway: TritonGateway) -> None:
        for model in self.settings.preload_models:
            try:
                seconds = await gateway.ensure_loaded(model)
                log.info("preloaded %s (%.1fs)", model, seconds)
            except Exception as err:  # noqa: BLE001 - serve anyway; requests will report the reason
                log.error("could not preload model %s: %s", model, err)

    async def stop(self) -> None:
        """NOT_SERVING, drain calls within the grace period, then stop Triton."""
        await self.health.enter_graceful_shutdown()
        if self.server is not None:
            await self.server.stop(SHUTDOWN_GRACE_S)
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
