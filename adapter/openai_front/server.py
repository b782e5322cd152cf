"""The HTTP front's server: uvicorn inside the adapter's event loop, on OPENAI_HTTP_PORT, with the
gRPC front's TLS files. Started after the gRPC server; stopped in the adapter's graceful shutdown
(running requests get SHUTDOWN_GRACE_SECONDS, then they are cancelled, Triton requests with them)."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl

import uvicorn

from adapter.config import Settings
from adapter.core.access import ApiKeys
from adapter.core.services import CoreServices
from adapter.metrics import AdapterMetrics
from adapter.openai_front.app import build_app

log = logging.getLogger(__name__)


class OpenAIFront:
    def __init__(self, settings: Settings, services: CoreServices, metrics: AdapterMetrics) -> None:
        s = settings
        self._settings = settings
        self.serving = False
        keys = ApiKeys(s.grpc_api_key, s.grpc_admin_api_key, s.grpc_require_api_key)
        app = build_app(
            services,
            keys,
            metrics,
            lambda: self.serving,
            s.openai_http_max_body_bytes,
            s.openai_http_max_concurrent_requests,
        )
        client_ca = s.grpc_client_ca_file
        self._config = uvicorn.Config(
            app,
            lifespan="off",
            http="httptools",  # the C parser: h11 (pure Python) costs a stream a tenth of its chunks/s
            log_config=None,  # the adapter's logging
            access_log=False,  # metrics count requests; a line per request would cost more than a chunk
            timeout_graceful_shutdown=int(s.shutdown_grace_s),
            ssl_certfile=str(s.grpc_cert_file) if s.grpc_use_tls else None,
            ssl_keyfile=str(s.grpc_key_file) if s.grpc_use_tls else None,
            ssl_ca_certs=str(client_ca) if client_ca else None,
            ssl_cert_reqs=ssl.CERT_REQUIRED if client_ca else ssl.CERT_NONE,
            server_header=False,
        )
        self.scheme = "https" if s.grpc_use_tls else "http"
        self.address = f"{s.grpc_host}:{s.openai_http_port}"
        self._server: uvicorn.Server | None = None
        self._main: asyncio.Task[None] | None = None
        self._socket: socket.socket | None = None

    async def start(self) -> None:
        s = self._settings
        # Bound here, so that a taken port is an OSError naming the setting (uvicorn would exit).
        family = socket.AF_INET6 if ":" in s.grpc_host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Inherited by every accepted connection: without it a response's head and its first event
        # (two writes) meet Nagle's algorithm and the client's delayed ACK, 40 ms per request.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            sock.bind((s.grpc_host, s.openai_http_port))
        except OSError as err:
            sock.close()
            raise OSError(f"cannot listen on {self.address} (GRPC_HOST/OPENAI_HTTP_PORT): {err.strerror}") from None
        sock.listen(2048)
        sock.setblocking(False)
        self._socket = sock
        self._config.load()
        server = uvicorn.Server(self._config)
        server.lifespan = self._config.lifespan_class(self._config)
        # startup/main_loop/shutdown rather than serve(): serve() installs its own signal handlers,
        # and SIGTERM is the adapter's to handle.
        await server.startup(sockets=[sock])
        self._server = server
        self._main = asyncio.get_running_loop().create_task(server.main_loop())

    async def stop(self) -> None:
        """Refuses new connections; lets running requests finish within the grace period."""
        server = self._server
        if server is None:
            return
        self._server = None
        server.should_exit = True
        if self._main is not None:
            await self._main
        await server.shutdown(sockets=[self._socket] if self._socket else None)
