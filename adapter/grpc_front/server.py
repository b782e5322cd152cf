"""The gRPC front: inference.v1.InferenceService plus grpc.health.v1 (and reflection), its
interceptors in order, TLS, and its part of a graceful shutdown."""

from __future__ import annotations

import asyncio

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from adapter.config import Settings
from adapter.core.services import CoreServices
from adapter.gen.inference.v1 import inference_pb2 as pb
from adapter.gen.inference.v1 import inference_pb2_grpc as pb_grpc
from adapter.grpc_front.auth import ApiKeyInterceptor, ApiKeyPolicy
from adapter.grpc_front.decoding import DecodeGuard
from adapter.grpc_front.draining import CallTracker
from adapter.grpc_front.servicer import InferenceServicer
from adapter.metrics import AdapterMetrics

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["InferenceService"].full_name


def server_options(settings: Settings) -> list[tuple[str, int]]:
    return [
        ("grpc.max_send_message_length", settings.grpc_max_message_size),
        ("grpc.max_receive_message_length", settings.grpc_max_message_size),
        # Accept the Go client's keepalive pings (every 10 s), also while no call is open.
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 5_000),
        ("grpc.http2.max_pings_without_data", 0),
    ]


def server_credentials(settings: Settings) -> grpc.ServerCredentials:
    """TLS from GRPC_CERT_FILE/GRPC_KEY_FILE; with GRPC_CLIENT_CA_FILE, clients must present a
    certificate that CA signed (mutual TLS)."""
    key, cert = settings.grpc_key_file.read_bytes(), settings.grpc_cert_file.read_bytes()
    client_ca = settings.grpc_client_ca_file.read_bytes() if settings.grpc_client_ca_file else None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


class GrpcFront:
    def __init__(self, settings: Settings, services: CoreServices, metrics: AdapterMetrics) -> None:
        self._settings = settings
        self.health = health.aio.HealthServicer()
        self.calls = CallTracker()
        s = settings
        # Outermost first: metrics see every outcome (refusals included), auth refuses before any
        # work, the call tracker lets shutdown drain and then end calls with UNAVAILABLE.
        interceptors: list[grpc.aio.ServerInterceptor] = [metrics.interceptor()]
        policy = ApiKeyPolicy(s.grpc_api_key, s.grpc_admin_api_key, s.grpc_require_api_key)
        if policy.enabled:
            interceptors.append(ApiKeyInterceptor(policy))
        # Undecodable requests end INVALID_ARGUMENT (one WARNING line), on every method.
        interceptors.append(DecodeGuard())
        interceptors.append(self.calls)
        # Every handler is a coroutine: no thread pool for synchronous handlers. Blocking work runs
        # in the loop's default executor (GRPC_MAX_WORKERS threads, set in adapter/app.py). Past
        # GRPC_MAX_CONCURRENT_RPCS calls at once, gRPC itself answers RESOURCE_EXHAUSTED.
        self.server = grpc.aio.server(
            options=server_options(s),
            interceptors=interceptors,
            maximum_concurrent_rpcs=s.grpc_max_concurrent_rpcs,
        )
        pb_grpc.add_InferenceServiceServicer_to_server(
            InferenceServicer(services.text, services.embedding, services.images, services.memory), self.server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        if s.grpc_enable_reflection:
            reflection.enable_server_reflection(
                (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
                self.server,
            )
        self.address = f"{s.grpc_host}:{s.grpc_port}"

    async def start(self) -> None:
        s = self._settings
        if s.grpc_use_tls:
            bound = self.server.add_secure_port(self.address, server_credentials(s))
        else:
            bound = self.server.add_insecure_port(self.address)
        if bound == 0:
            raise OSError(f"cannot listen on {self.address} (GRPC_HOST/GRPC_PORT)")
        await self.server.start()

    async def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for service in ("", SERVICE_NAME):
            await self.health.set(service, status)

    async def enter_graceful_shutdown(self) -> None:
        await self.health.enter_graceful_shutdown()

    async def stop(self, grace_s: float) -> None:
        """Refuses new calls at once; lets running ones finish within the grace period, then ends
        the rest with UNAVAILABLE (server.stop's own grace is only a backstop for ours)."""
        stopping = asyncio.get_running_loop().create_task(self.server.stop(grace_s + 10))
        await self.calls.drain(grace_s)
        await stopping
