#!/usr/bin/env python3
"""Container health check for the adapter: one grpc.health.v1 Check on its own port.

Exit 0 when the adapter answers SERVING, 1 otherwise (Docker's HEALTHCHECK contract). It reads the
adapter's own variables, so it follows GRPC_PORT and GRPC_USE_TLS without extra configuration:
- plaintext by default;
- with GRPC_USE_TLS true it trusts HEALTHCHECK_CA_FILE (default: GRPC_CERT_FILE, which works for a
  self-signed server certificate) and checks the name HEALTHCHECK_TLS_NAME (default: localhost);
  when the server requires client certificates (GRPC_CLIENT_CA_FILE), HEALTHCHECK_CLIENT_CERT_FILE
  and HEALTHCHECK_CLIENT_KEY_FILE name the pair to present.
Health checks need no API key (the adapter leaves grpc.health.v1 open).
"""

from __future__ import annotations

import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

TRUE = {"1", "true", "yes", "on"}


def _read(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


def _channel() -> grpc.Channel:
    port = os.environ.get("GRPC_PORT", "").strip() or "50051"
    target = f"127.0.0.1:{port}"
    if os.environ.get("GRPC_USE_TLS", "").strip().lower() not in TRUE:
        return grpc.insecure_channel(target)
    ca_file = os.environ.get("HEALTHCHECK_CA_FILE") or os.environ.get(
        "GRPC_CERT_FILE", "/etc/inference/certs/server.crt"
    )
    cert_file = os.environ.get("HEALTHCHECK_CLIENT_CERT_FILE", "")
    key_file = os.environ.get("HEALTHCHECK_CLIENT_KEY_FILE", "")
    credentials = grpc.ssl_channel_credentials(
        root_certificates=_read(ca_file),
        private_key=_read(key_file) if key_file else None,
        certificate_chain=_read(cert_file) if cert_file else None,
    )
    name = os.environ.get("HEALTHCHECK_TLS_NAME", "localhost")
    return grpc.secure_channel(target, credentials, options=[("grpc.ssl_target_name_override", name)])


def main() -> int:
    try:
        with _channel() as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=4)
    except (grpc.RpcError, OSError) as err:
        print(f"unhealthy: {err}", file=sys.stderr)
        return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(status)
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    sys.exit(main())
