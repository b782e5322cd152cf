"""Auth, TLS, mutual TLS and reflection on the real adapter (embedded Triton, test models).

One adapter serves mutual TLS with a user key and an admin key; every RPC is called without a
key, with a wrong key, with the right key in each header form, and the admin RPCs with the user key.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from adapter.gen.inference.v1 import inference_pb2 as pb
from adapter.gen.inference.v1 import inference_pb2_grpc as pb_grpc
from tests.certificates import Pki, make_pki
from tests.harness import RunningAdapter, start_adapter, stop_adapter

USER_KEY = "user-key-0123456789"
ADMIN_KEY = "admin-key-9876543210"
Metadata = tuple[tuple[str, str], ...]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _client_credentials(pki: Pki, with_certificate: bool = True) -> grpc.ChannelCredentials:
    if with_certificate:
        return grpc.ssl_channel_credentials(pki.ca.cert, pki.client.key, pki.client.cert)
    return grpc.ssl_channel_credentials(pki.ca.cert)


@pytest.fixture(scope="module")
def mtls_adapter(small_models: None, pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningAdapter]:
    workdir = tmp_path_factory.mktemp("mtls")
    running = start_adapter(
        workdir / "adapter.log",
        env={
            "PRELOAD_MODELS": "chunk_counter",
            "IMAGE_DIR": str(workdir / "images"),
            "GRPC_USE_TLS": "true",
            "GRPC_CERT_FILE": pki.file("server.crt"),
            "GRPC_KEY_FILE": pki.file("server.key"),
            "GRPC_CLIENT_CA_FILE": pki.file("ca.crt"),
            "GRPC_REQUIRE_API_KEY": "true",
            "GRPC_API_KEY": USER_KEY,
            "GRPC_ADMIN_API_KEY": ADMIN_KEY,
        },
        test_models=True,
        credentials=_client_credentials(pki),
    )
    try:
        yield running
    finally:
        stop_adapter(running)


@pytest.fixture(scope="module")
def mtls_stub(mtls_adapter: RunningAdapter) -> Iterator[pb_grpc.InferenceServiceStub]:
    with mtls_adapter.channel() as channel:
        yield pb_grpc.InferenceServiceStub(channel)


def _code(call: Callable[[], object]) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as err:
        return err.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def _calls(stub: pb_grpc.InferenceServiceStub, metadata: Metadata) -> dict[str, Callable[[], object]]:
    """One cheap call per RPC, each of which passes with the right key."""
    chat = pb.ChatStreamRequest(
        model="chunk_counter",
        messages=[pb.ChatMessage(role="user", content="hi")],
        options=pb.GenerationOptions(max_tokens=2),
    )
    generate = pb.GenerateStreamRequest(model="chunk_counter", prompt="hi", options=pb.GenerationOptions(max_tokens=2))
    vram = [pb.ManageVRAMRequest(command_id="s", get_status=pb.GetStatusCommand())]
    return {
        "ChatStream": lambda: list(stub.ChatStream(chat, metadata=metadata, timeout=60)),
        "GenerateStream": lambda: list(stub.GenerateStream(generate, metadata=metadata, timeout=60)),
        "GetEmbedding": lambda: stub.GetEmbedding(
            pb.GetEmbeddingRequest(model="no-such-model", inputs=["x"]), metadata=metadata, timeout=30
        ),
        "GenerateImage": lambda: stub.GenerateImage(
            pb.GenerateImageRequest(model="no-such-model", prompt="x"), metadata=metadata, timeout=30
        ),
        "EditImage": lambda: stub.EditImage(
            pb.EditImageRequest(model="no-such-model", prompt="x"), metadata=metadata, timeout=30
        ),
        "CheckImageStatus": lambda: stub.CheckImageStatus(
            pb.CheckImageStatusRequest(job_id="no-such-job"), metadata=metadata, timeout=30
        ),
        "ManageVRAM": lambda: list(stub.ManageVRAM(iter(vram), metadata=metadata, timeout=30)),
        "ClearMemory": lambda: stub.ClearMemory(pb.ClearMemoryRequest(), metadata=metadata, timeout=60),
        "GetMemoryStats": lambda: stub.GetMemoryStats(pb.GetMemoryStatsRequest(), metadata=metadata, timeout=30),
    }


# What each RPC answers once past auth (the probes use unknown models and jobs where that is cheaper).
PASSED = {
    "ChatStream": {grpc.StatusCode.OK},
    "GenerateStream": {grpc.StatusCode.OK},
    "GetEmbedding": {grpc.StatusCode.NOT_FOUND},
    "GenerateImage": {grpc.StatusCode.NOT_FOUND},
    "EditImage": {grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT},
    "CheckImageStatus": {grpc.StatusCode.NOT_FOUND},
    "ManageVRAM": {grpc.StatusCode.OK},
    "ClearMemory": {grpc.StatusCode.OK},
    "GetMemoryStats": {grpc.StatusCode.OK},
}
ADMIN_ONLY = {"ManageVRAM", "ClearMemory"}


def test_every_rpc_covers_the_whole_service() -> None:
    assert set(PASSED) == set(pb.DESCRIPTOR.services_by_name["InferenceService"].methods_by_name)


@pytest.mark.parametrize(
    "metadata",
    [(), (("x-api-key", "wrong"),), (("authorization", "Bearer wrong"),), (("authorization", f"Basic {USER_KEY}"),)],
    ids=["no key", "wrong x-api-key", "wrong bearer", "not bearer"],
)
def test_every_rpc_refuses_a_missing_or_wrong_key(mtls_stub: pb_grpc.InferenceServiceStub, metadata: Metadata) -> None:
    codes = {name: _code(call) for name, call in _calls(mtls_stub, metadata).items()}
    assert codes == dict.fromkeys(PASSED, grpc.StatusCode.UNAUTHENTICATED)


@pytest.mark.parametrize(
    "metadata",
    [(("x-api-key", USER_KEY),), (("authorization", f"Bearer {USER_KEY}"),)],
    ids=["x-api-key", "bearer"],
)
def test_the_user_key_in_either_header_passes_except_admin_rpcs(
    mtls_stub: pb_grpc.InferenceServiceStub, metadata: Metadata
) -> None:
    for name, call in _calls(mtls_stub, metadata).items():
        code = _code(call)
        if name in ADMIN_ONLY:
            assert code == grpc.StatusCode.PERMISSION_DENIED, name
        else:
            assert code in PASSED[name], (name, code)


@pytest.mark.parametrize(
    "metadata", [(("x-api-key", ADMIN_KEY),), (("authorization", f"Bearer {ADMIN_KEY}"),)], ids=["x-api-key", "bearer"]
)
def test_the_admin_key_passes_everywhere(mtls_stub: pb_grpc.InferenceServiceStub, metadata: Metadata) -> None:
    for name, call in _calls(mtls_stub, metadata).items():
        assert _code(call) in PASSED[name], name


def test_health_stays_open_without_a_key(mtls_adapter: RunningAdapter) -> None:
    with mtls_adapter.channel() as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.v1.InferenceService"):
            response = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_keys_never_reach_the_log(mtls_adapter: RunningAdapter, mtls_stub: pb_grpc.InferenceServiceStub) -> None:
    _code(lambda: mtls_stub.GetMemoryStats(pb.GetMemoryStatsRequest(), metadata=(("x-api-key", "wrong-guess"),)))
    text = mtls_adapter.log_path.read_text(errors="replace")
    assert USER_KEY not in text and ADMIN_KEY not in text and "wrong-guess" not in text


@pytest.mark.parametrize("client", ["no certificate", "stranger certificate", "plaintext"])
def test_mutual_tls_refuses_clients_without_a_trusted_certificate(
    mtls_adapter: RunningAdapter, pki: Pki, client: str
) -> None:
    if client == "plaintext":
        channel = grpc.insecure_channel(mtls_adapter.address)
    elif client == "no certificate":
        channel = grpc.secure_channel(mtls_adapter.address, _client_credentials(pki, with_certificate=False))
    else:
        credentials = grpc.ssl_channel_credentials(pki.ca.cert, pki.stranger_client.key, pki.stranger_client.cert)
        channel = grpc.secure_channel(mtls_adapter.address, credentials)
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_reflection_lists_the_service_and_a_call_built_from_it_alone_works(mtls_adapter: RunningAdapter) -> None:
    metadata = (("x-api-key", USER_KEY),)
    with mtls_adapter.channel() as channel:
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)

        def ask(request: reflection_pb2.ServerReflectionRequest) -> reflection_pb2.ServerReflectionResponse:
            return next(iter(reflection.ServerReflectionInfo(iter([request]), metadata=metadata, timeout=10)))

        services = ask(reflection_pb2.ServerReflectionRequest(list_services=""))
        names = {s.name for s in services.list_services_response.service}
        assert {"inference.v1.InferenceService", "grpc.health.v1.Health"} <= names

        # Rebuild the messages from the descriptors the server sends (no generated code).
        files = ask(reflection_pb2.ServerReflectionRequest(file_containing_symbol="inference.v1.InferenceService"))
        pool = descriptor_pool.DescriptorPool()
        pending = [
            descriptor_pb2.FileDescriptorProto.FromString(b)
            for b in files.file_descriptor_response.file_descriptor_proto
        ]
        while pending:  # dependencies first
            for proto in list(pending):
                try:
                    pool.Add(proto)
                    pending.remove(proto)
                except TypeError:
                    continue
        method = pool.FindServiceByName("inference.v1.InferenceService").methods_by_name["GetMemoryStats"]
        request_class = message_factory.GetMessageClass(method.input_type)
        response_class = message_factory.GetMessageClass(method.output_type)
        call = channel.unary_unary(
            "/inference.v1.InferenceService/GetMemoryStats",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=response_class.FromString,
        )
        response = call(request_class(), metadata=metadata, timeout=30)
        assert response.snapshot.budget_bytes > 0
        assert any(m.model == "chunk_counter" for m in response.snapshot.models)


def test_plain_tls_with_a_bearer_key_and_reflection_off(small_models: None, pki: Pki, tmp_path: Path) -> None:
    running = start_adapter(
        tmp_path / "adapter.log",
        env={
            "PRELOAD_MODELS": "",
            "IMAGE_DIR": str(tmp_path / "images"),
            "GRPC_USE_TLS": "true",
            "GRPC_CERT_FILE": pki.file("server.crt"),
            "GRPC_KEY_FILE": pki.file("server.key"),
            "GRPC_REQUIRE_API_KEY": "true",
            "GRPC_API_KEY": USER_KEY,
            "GRPC_ENABLE_REFLECTION": "false",
        },
        credentials=grpc.ssl_channel_credentials(pki.ca.cert),
    )
    try:
        with running.channel() as channel:
            stub = pb_grpc.InferenceServiceStub(channel)
            stats = stub.GetMemoryStats(
                pb.GetMemoryStatsRequest(), metadata=(("authorization", f"Bearer {USER_KEY}"),), timeout=30
            )
            assert stats.snapshot.budget_bytes > 0
            # No admin key configured: the user key may clear memory.
            stub.ClearMemory(pb.ClearMemoryRequest(), metadata=(("x-api-key", USER_KEY),), timeout=60)
            with pytest.raises(grpc.RpcError) as refused:
                stub.GetMemoryStats(pb.GetMemoryStatsRequest(), timeout=30)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            # Reflection switched off: the service is not there, key or not.
            listing = reflection_pb2.ServerReflectionRequest(list_services="")
            with pytest.raises(grpc.RpcError) as refused:
                reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
                next(iter(reflection.ServerReflectionInfo(iter([listing]), metadata=(("x-api-key", USER_KEY),))))
            assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED
        with grpc.insecure_channel(running.address) as plaintext:
            with pytest.raises(grpc.RpcError) as refused:
                health_pb2_grpc.HealthStub(plaintext).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        stop_adapter(running)


def test_keepalive_pings_with_no_call_open_keep_the_connection(mtls_adapter: RunningAdapter, pki: Pki) -> None:
    # Like maistro (10 s there; 6 s here to keep the test short): the server must accept pings
    # every 5 s or more with no call open, not answer them with GOAWAY (too_many_pings).
    options = [
        ("grpc.keepalive_time_ms", 6000),
        ("grpc.keepalive_timeout_ms", 2000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]
    states: list[grpc.ChannelConnectivity] = []
    with grpc.secure_channel(mtls_adapter.address, _client_credentials(pki), options=options) as channel:
        channel.subscribe(states.append, try_to_connect=True)
        health = health_pb2_grpc.HealthStub(channel)
        health.Check(health_pb2.HealthCheckRequest(), timeout=10)
        time.sleep(14)  # two pings, no call open
        health.Check(health_pb2.HealthCheckRequest(), timeout=10)
        channel.unsubscribe(states.append)
    after_ready = states[states.index(grpc.ChannelConnectivity.READY) :]
    assert after_ready == [grpc.ChannelConnectivity.READY], f"the connection dropped: {states}"
