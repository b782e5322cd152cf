"""Property-based fuzzing of every RPC with hypothesis, against a real adapter and embedded Triton.

Every request message is drawn from its protobuf descriptor (any value in any field, unknown fields
appended) and from hand-aimed values near the limits. The properties:
- the status is never INTERNAL, UNKNOWN or DATA_LOSS, and every status comes from the adapter (not
  from the transport, as when an error message is too long for gRPC's trailers);
- a stream that ends OK ends with its final (`done`) message; ManageVRAM answers every command,
  never with an INTERNAL/UNKNOWN error code;
- after each RPC's batch the adapter process is alive and grpc.health.v1 says SERVING.

The module has its own adapter with tight limits, so that the requests that are valid stay cheap
(small images, few tokens, small embedding batches); every served model is pinned, so fuzzed
keep-alives do not unload them under the next example. ClearMemory runs last (it unloads everything).

CI runs FUZZ_EXAMPLES=1000 examples per RPC, derandomized (the same examples every run). For a
longer, random local run (failing examples are kept in .pytest_cache/hypothesis-fuzz and replayed):

    FUZZ_EXAMPLES=20000 .venv/bin/python -m pytest tests/integration/test_fuzz.py -q -x

(FUZZ_PROFILE=fuzz-ci or fuzz-long picks the profile explicitly; the per-test timeout grows with
FUZZ_EXAMPLES.)
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis.database import DirectoryBasedExampleDatabase

from adapter.gen.inference.v1 import inference_pb2 as pb
from adapter.gen.inference.v1 import inference_pb2_grpc as pb_grpc
from tests import fuzz_strategies as fs
from tests.harness import REPO, RunningAdapter, start_adapter, stop_adapter

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "1000"))
_COMMON: dict[str, Any] = {
    "max_examples": EXAMPLES,
    "deadline": None,
    "suppress_health_check": list(HealthCheck),
    "print_blob": True,
}
settings.register_profile("fuzz-ci", derandomize=True, database=None, **_COMMON)
settings.register_profile(
    "fuzz-long", database=DirectoryBasedExampleDatabase(str(REPO / ".pytest_cache" / "hypothesis-fuzz")), **_COMMON
)
FUZZ = settings.get_profile(os.environ.get("FUZZ_PROFILE", "fuzz-long" if "FUZZ_EXAMPLES" in os.environ else "fuzz-ci"))

# Generous: the CI run of all RPCs takes a few minutes; a long run scales with FUZZ_EXAMPLES.
pytestmark = pytest.mark.timeout(max(600, EXAMPLES // 2))

EMBEDDING_MAX_INPUTS = 8
EMBEDDING_MAX_TOTAL_CHARS = 4096
SERVED = ("chunk_counter", "llm", "embedding", "image", "vllm_dialect")
RPC_TIMEOUT_S = 60
SERVICE = "/inference.v1.InferenceService/"
# Statuses that mean the adapter failed (a bug), not the request.
BAD_CODES = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS}
# A status the transport made up (the adapter's message did not fit gRPC's trailers, ...).
TRANSPORT_DETAILS = ("Stream removed", "metadata size exceeds", "Exception deserializing", "Exception iterating")

JOB_IDS: list[str] = []  # image jobs the fuzz run created, for CheckImageStatus


class FuzzClient:
    """Sends raw (already serialized) requests, so that unknown fields reach the server too."""

    def __init__(self, channel: grpc.Channel, adapter: RunningAdapter) -> None:
        self.channel = channel
        self.adapter = adapter
        self.health = health_pb2_grpc.HealthStub(channel)

    def _fail(self, method: str, request: bytes, err: grpc.RpcError) -> None:
        code, details = err.code(), err.details() or ""
        problem = ""
        if code in BAD_CODES:
            problem = f"{method} answered {code.name}"
        elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
            problem = f"{method} did not answer within {RPC_TIMEOUT_S}s"
        elif any(marker in details for marker in TRANSPORT_DETAILS):
            problem = f"{method} ended with a transport status {code.name}"
        if problem:
            raise AssertionError(
                f"{problem}: {details[:2000]}\nrequest ({len(request)} bytes)\n"
                f"adapter log tail:\n{self.adapter.log_tail(30)}"
            )

    def unary(self, method: str, request: bytes, response_type: Any) -> Any:
        call = self.channel.unary_unary(SERVICE + method, response_deserializer=response_type.FromString)
        try:
            return call(request, timeout=RPC_TIMEOUT_S)
        except grpc.RpcError as err:
            self._fail(method, request, err)
            return None

    def stream(self, method: str, request: bytes, response_type: Any) -> list[Any] | None:
        call = self.channel.unary_stream(SERVICE + method, response_deserializer=response_type.FromString)
        try:
            responses = list(call(request, timeout=RPC_TIMEOUT_S))
        except grpc.RpcError as err:
            self._fail(method, request, err)
            return None
        assert responses and responses[-1].done, f"{method} ended OK without a final done message: {responses[-3:]}"
        assert not any(r.done for r in responses[:-1]), f"{method} sent a done message before its last one"
        return responses

    def manage(self, commands: list[pb.ManageVRAMRequest]) -> list[pb.ManageVRAMResponse] | None:
        call = self.channel.stream_stream(
            SERVICE + "ManageVRAM",
            request_serializer=pb.ManageVRAMRequest.SerializeToString,
            response_deserializer=pb.ManageVRAMResponse.FromString,
        )
        request = b"".join(c.SerializeToString() for c in commands)
        try:
            responses = list(call(iter(commands), timeout=RPC_TIMEOUT_S))
        except grpc.RpcError as err:
            self._fail("ManageVRAM", request, err)
            return None
        return responses

    def assert_healthy(self) -> None:
        assert self.adapter.process.poll() is None, f"the adapter exited:\n{self.adapter.log_tail()}"
        status = self.health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10).status
        assert status == health_pb2.HealthCheckResponse.SERVING, f"health is {status}:\n{self.adapter.log_tail()}"


@pytest.fixture(scope="module")
def fuzz(small_models: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzClient]:
    workdir = tmp_path_factory.mktemp("fuzz-adapter")
    running = start_adapter(
        workdir / "adapter.log",
        env={
            "IMAGE_DIR": str(workdir / "images"),
            "PRELOAD_MODELS": ",".join(SERVED),
            "MODEL_KEEP_ALIVE_SECONDS": "-1",
            "IMAGE_MAX_WIDTH": "64",
            "IMAGE_MAX_HEIGHT": "64",
            "IMAGE_MAX_STEPS": "2",
            "IMAGE_MAX_NUM_IMAGES": "2",
            "IMAGE_MAX_INPUT_BYTES": "65536",
            "IMAGE_MAX_CONCURRENT_JOBS": "1",
            "IMAGE_MAX_QUEUED_JOBS": "2",
            "EMBEDDING_MAX_INPUTS": str(EMBEDDING_MAX_INPUTS),
            "EMBEDDING_MAX_TOTAL_CHARS": str(EMBEDDING_MAX_TOTAL_CHARS),
            "GRPC_MAX_CONCURRENT_RPCS": "1000",
        },
        test_models=True,
    )
    try:
        with grpc.insecure_channel(running.address) as channel:
            client = FuzzClient(channel, running)
            # Pinned: a fuzzed keep_alive of 0 must not unload a model the next example needs.
            pins = [pb.ManageVRAMRequest(command_id=name, pin=pb.PinModelCommand(model=name)) for name in SERVED]
            answers = pb_grpc.InferenceServiceStub(channel).ManageVRAM(iter(pins), timeout=120)
            results = [a.result for a in answers if a.HasField("result")]
            assert all(r.ok for r in results) and len(results) == len(pins), results
            yield client
    finally:
        stop_adapter(running)


@pytest.fixture(autouse=True)
def healthy_after_batch(fuzz: FuzzClient) -> Iterator[None]:
    yield
    fuzz.assert_healthy()


@FUZZ
@given(request=fs.serialized(fs.chat_requests()))
def test_fuzz_chat_stream(fuzz: FuzzClient, request: bytes) -> None:
    fuzz.stream("ChatStream", request, pb.ChatStreamResponse)


@FUZZ
@given(request=fs.serialized(fs.generate_requests()))
def test_fuzz_generate_stream(fuzz: FuzzClient, request: bytes) -> None:
    fuzz.stream("GenerateStream", request, pb.GenerateStreamResponse)


@FUZZ
@given(request=fs.serialized(fs.embedding_requests(EMBEDDING_MAX_INPUTS, EMBEDDING_MAX_TOTAL_CHARS)))
def test_fuzz_get_embedding(fuzz: FuzzClient, request: bytes) -> None:
    response = fuzz.unary("GetEmbedding", request, pb.GetEmbeddingResponse)
    if response is not None:
        sent = pb.GetEmbeddingRequest.FromString(request)
        assert len(response.embeddings) == len(sent.inputs)
        assert all(len(e.values) == response.dimension for e in response.embeddings)


@FUZZ
@given(request=fs.serialized(fs.generate_image_requests()))
def test_fuzz_generate_image(fuzz: FuzzClient, request: bytes) -> None:
    response = fuzz.unary("GenerateImage", request, pb.GenerateImageResponse)
    if response is not None:
        assert response.job_id
        JOB_IDS.append(response.job_id)


@FUZZ
@given(request=fs.serialized(fs.edit_image_requests()))
def test_fuzz_edit_image(fuzz: FuzzClient, request: bytes) -> None:
    response = fuzz.unary("EditImage", request, pb.EditImageResponse)
    if response is not None:
        assert response.job_id
        JOB_IDS.append(response.job_id)


@FUZZ
@given(request=fs.serialized(fs.check_status_requests(JOB_IDS)))
def test_fuzz_check_image_status(fuzz: FuzzClient, request: bytes) -> None:
    response = fuzz.unary("CheckImageStatus", request, pb.CheckImageStatusResponse)
    if response is not None:
        assert response.state != pb.JOB_STATE_UNSPECIFIED
        if response.state == pb.JOB_STATE_SUCCEEDED:
            assert response.images and all(image.png for image in response.images)
        if response.state == pb.JOB_STATE_FAILED:
            assert response.error_message


@FUZZ
@given(request=fs.serialized(fs.memory_stats_requests()))
def test_fuzz_get_memory_stats(fuzz: FuzzClient, request: bytes) -> None:
    response = fuzz.unary("GetMemoryStats", request, pb.GetMemoryStatsResponse)
    assert response is not None, "GetMemoryStats takes no arguments: it must always answer"


@FUZZ
@given(commands=fs.manage_vram_commands(list(SERVED), real_weight=1, unknown_weight=19))
def test_fuzz_manage_vram(fuzz: FuzzClient, commands: list[pb.ManageVRAMRequest]) -> None:
    responses = fuzz.manage(commands)
    if responses is None:
        return
    results = [r.result for r in responses if r.HasField("result")]
    assert sorted(r.command_id for r in results) == sorted(c.command_id for c in commands), "a command went unanswered"
    for result in results:
        if not result.ok:
            assert result.error_code not in {c.name for c in BAD_CODES}, f"{result.error_code}: {result.error_message}"
            assert result.error_code in grpc.StatusCode.__members__, result.error_code


@pytest.fixture
def unpinned(fuzz: FuzzClient) -> None:
    """ClearMemory runs last: it may unload every model (include_pinned is fuzzed too)."""
    unpins = [pb.ManageVRAMRequest(command_id=n, unpin=pb.UnpinModelCommand(model=n)) for n in SERVED]
    assert fuzz.manage(unpins) is not None


@FUZZ
@given(request=fs.serialized(fs.clear_memory_requests()))
def test_fuzz_clear_memory(fuzz: FuzzClient, unpinned: None, request: bytes) -> None:
    fuzz.unary("ClearMemory", request, pb.ClearMemoryResponse)


def test_image_jobs_were_created() -> None:
    """The image fuzzing reached the job queue (not only validation errors)."""
    assert JOB_IDS or os.environ.get("FUZZ_EXAMPLES") == "0"
