"""The HTTP front behind the same API keys and TLS files as gRPC: `Authorization: Bearer` keys
surfacing as the SDK's typed errors, mutual TLS, /health open to probes, and the body size limit."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx2
import openai
import pytest
from openai import OpenAI

from tests.certificates import Pki, make_pki
from tests.harness import RunningAdapter, start_adapter, stop_adapter

USER_KEY = "http-user-key-0123456789"
ADMIN_KEY = "http-admin-key-9876543210"
BODY_LIMIT = 64 * 1024


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    pki = make_pki(tmp_path_factory.mktemp("http-pki"))
    (pki.folder / "client.crt").write_bytes(pki.client.cert)
    (pki.folder / "client.key").write_bytes(pki.client.key)
    return pki


def _tls(pki: Pki, with_certificate: bool = True) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=pki.file("ca.crt"))
    if with_certificate:
        context.load_cert_chain(pki.file("client.crt"), pki.file("client.key"))
    return context


@pytest.fixture(scope="module")
def secured(small_models: None, pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningAdapter]:
    import grpc

    workdir = tmp_path_factory.mktemp("http-secured")
    running = start_adapter(
        workdir / "adapter.log",
        env={
            "PRELOAD_MODELS": "embedding",
            "IMAGE_DIR": str(workdir / "images"),
            "GRPC_USE_TLS": "true",
            "GRPC_CERT_FILE": pki.file("server.crt"),
            "GRPC_KEY_FILE": pki.file("server.key"),
            "GRPC_CLIENT_CA_FILE": pki.file("ca.crt"),
            "GRPC_REQUIRE_API_KEY": "true",
            "GRPC_API_KEY": USER_KEY,
            "GRPC_ADMIN_API_KEY": ADMIN_KEY,
            "OPENAI_HTTP_MAX_BODY_BYTES": str(BODY_LIMIT),
        },
        credentials=grpc.ssl_channel_credentials(pki.ca.cert, pki.client.key, pki.client.cert),
    )
    # The certificate names localhost.
    running.http_url = running.http_url.replace("127.0.0.1", "localhost")
    try:
        yield running
    finally:
        stop_adapter(running)


def _client(adapter: RunningAdapter, pki: Pki, key: str) -> OpenAI:
    return OpenAI(
        base_url=f"{adapter.http_url}/v1",
        api_key=key,
        max_retries=0,
        http_client=httpx2.Client(verify=_tls(pki)),
    )


def test_the_front_serves_https_with_the_grpc_certificate(secured: RunningAdapter) -> None:
    assert secured.http_url.startswith("https://")


@pytest.mark.parametrize("key", ["not-the-key", USER_KEY + "x"])  # no key at all: below, without the SDK
def test_a_wrong_key_is_the_sdks_authentication_error(secured: RunningAdapter, pki: Pki, key: str) -> None:
    with _client(secured, pki, key) as client, pytest.raises(openai.AuthenticationError) as raised:
        client.models.list()
    assert raised.value.status_code == 401
    assert raised.value.body["type"] == "authentication_error"  # type: ignore[index]
    with _client(secured, pki, key) as client, pytest.raises(openai.AuthenticationError):
        client.embeddings.create(model="embedding", input="hello")


@pytest.mark.parametrize("key", [USER_KEY, ADMIN_KEY])
def test_the_user_and_admin_keys_pass(secured: RunningAdapter, pki: Pki, key: str) -> None:
    with _client(secured, pki, key) as client:
        assert "embedding" in {m.id for m in client.models.list()}
        assert len(client.embeddings.create(model="embedding", input="hello").data[0].embedding) == 384


def test_x_api_key_works_too_and_only_health_is_open(secured: RunningAdapter, pki: Pki) -> None:
    with httpx2.Client(verify=_tls(pki)) as http:
        assert http.get(f"{secured.http_url}/v1/models", headers={"x-api-key": USER_KEY}).status_code == 200
        assert http.get(f"{secured.http_url}/health").json() == {"status": "serving"}
        for path in ("/openapi.json", "/v1/models/embedding", "/v1/nowhere"):
            refused = http.get(f"{secured.http_url}{path}")
            assert refused.status_code == 401, path
            assert "Authorization: Bearer" in refused.json()["error"]["message"]
            assert refused.headers["www-authenticate"].startswith("Bearer")


def test_mutual_tls_refuses_a_client_without_a_trusted_certificate(secured: RunningAdapter, pki: Pki) -> None:
    with httpx2.Client(verify=_tls(pki, with_certificate=False)) as http, pytest.raises(httpx2.TransportError):
        http.get(f"{secured.http_url}/health")
    with httpx2.Client(verify=False) as http, pytest.raises(httpx2.TransportError):
        http.get(secured.http_url.replace("https://", "http://") + "/health")  # plaintext on a TLS port


def test_a_body_over_the_limit_is_413_with_or_without_its_length(secured: RunningAdapter, pki: Pki) -> None:
    big = "word " * (BODY_LIMIT // 5 + 10)
    with _client(secured, pki, USER_KEY) as client, pytest.raises(openai.APIStatusError) as raised:
        client.embeddings.create(model="embedding", input=big)
    assert raised.value.status_code == 413
    assert "OPENAI_HTTP_MAX_BODY_BYTES" in raised.value.message

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        yield b'{"model": "embedding", "input": "'
        for _ in range(BODY_LIMIT // 1024 + 2):
            yield b"x" * 1024
        yield b'"}'

    with httpx2.Client(verify=_tls(pki)) as http:
        response = http.post(
            f"{secured.http_url}/v1/embeddings",
            content=chunks(),
            headers={"authorization": f"Bearer {USER_KEY}", "content-type": "application/json"},
        )
    assert response.status_code == 413, response.text
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_keys_never_reach_the_log(secured: RunningAdapter, pki: Pki) -> None:
    with _client(secured, pki, "wrong-" + USER_KEY) as client, pytest.raises(openai.AuthenticationError):
        client.models.list()
    log = Path(secured.log_path).read_text(errors="replace")
    assert USER_KEY not in log and ADMIN_KEY not in log
