"""Hostile input on the real adapter: bytes that are not a request message, on every kind of RPC.

Each call ends INVALID_ARGUMENT with a short message, the adapter logs one WARNING line for it and
no traceback, and a request stream (ManageVRAM) that carries such bytes ends at once instead of
going silent while it holds a call slot.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import grpc
import pytest

from adapter.gen.inference.v1 import inference_pb2 as pb
from adapter.gen.inference.v1 import inference_pb2_grpc as pb_grpc
from tests.harness import RunningAdapter

SERVICE = "/inference.v1.InferenceService/"
# Field 1 (a string in every request here) holding bytes that are not UTF-8.
INVALID_UTF8 = bytes.fromhex("0a03fffefd")
# Field 1 announcing 5 bytes, then only 2: a truncated message.
TRUNCATED = b"\x0a\x05ab"

UNARY = ["GetEmbedding", "GenerateImage", "EditImage", "CheckImageStatus"]
# Their field 1 is not a string: INVALID_UTF8 is a valid message with an unknown field for them.
UNARY_WITHOUT_STRINGS = ["ClearMemory", "GetMemoryStats"]
SERVER_STREAMING = ["ChatStream", "GenerateStream"]


def _log_counts(adapter: RunningAdapter) -> tuple[int, int]:
    text = adapter.log_path.read_text(errors="replace")
    return text.count("Traceback"), text.count("refused an undecodable")


def _check_refusal(err: grpc.RpcError) -> None:
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (err.code(), err.details())
    details = err.details() or ""
    assert "could not be decoded" in details and len(details) < 400
    assert "DecodeError" not in details and "class" not in details


@pytest.mark.parametrize("payload", [INVALID_UTF8, TRUNCATED], ids=["invalid-utf8", "truncated"])
def test_undecodable_requests_are_invalid_argument_with_one_warning_and_no_traceback(
    adapter: RunningAdapter, channel: grpc.Channel, payload: bytes
) -> None:
    tracebacks, warnings = _log_counts(adapter)
    calls = 0
    for method in UNARY + (UNARY_WITHOUT_STRINGS if payload == TRUNCATED else []):
        with pytest.raises(grpc.RpcError) as refused:
            channel.unary_unary(SERVICE + method)(payload, timeout=10)
        _check_refusal(refused.value)
        calls += 1
    for method in SERVER_STREAMING:
        with pytest.raises(grpc.RpcError) as refused:
            list(channel.unary_stream(SERVICE + method)(payload, timeout=10))
        _check_refusal(refused.value)
        calls += 1
    with pytest.raises(grpc.RpcError) as refused:  # health too
        channel.unary_unary("/grpc.health.v1.Health/Check")(payload, timeout=10)
    _check_refusal(refused.value)
    calls += 1
    time.sleep(0.5)  # the log is written by the adapter process
    after_tracebacks, after_warnings = _log_counts(adapter)
    assert after_tracebacks == tracebacks, adapter.log_tail()
    assert after_warnings - warnings == calls


def test_manage_vram_ends_invalid_argument_at_the_first_undecodable_command(
    adapter: RunningAdapter, channel: grpc.Channel
) -> None:
    tracebacks, warnings = _log_counts(adapter)
    release = threading.Event()

    def commands() -> Iterator[bytes]:
        yield pb.ManageVRAMRequest(command_id="first", get_status=pb.GetStatusCommand()).SerializeToString()
        yield INVALID_UTF8
        yield pb.ManageVRAMRequest(command_id="after", get_status=pb.GetStatusCommand()).SerializeToString()
        release.wait(30)  # the client keeps its side open: the server must end the call itself

    call = channel.stream_stream(SERVICE + "ManageVRAM", response_deserializer=pb.ManageVRAMResponse.FromString)
    answered = []
    started = time.monotonic()
    try:
        with pytest.raises(grpc.RpcError) as refused:
            for response in call(commands(), timeout=30):
                if response.HasField("result"):
                    answered.append(response.result.command_id)
    finally:
        release.set()
    _check_refusal(refused.value)
    assert time.monotonic() - started < 5, "the stream stayed open after the undecodable command"
    assert "after" not in answered
    time.sleep(0.5)
    after_tracebacks, after_warnings = _log_counts(adapter)
    assert after_tracebacks == tracebacks, adapter.log_tail()
    assert after_warnings - warnings == 1
    # The call slot is free again and the service answers.
    stats = pb.GetMemoryStatsResponse.FromString(
        channel.unary_unary(SERVICE + "GetMemoryStats")(pb.GetMemoryStatsRequest().SerializeToString(), timeout=10)
    )
    assert stats.snapshot.budget_bytes > 0


def test_a_repetition_penalty_that_broke_sampling_is_invalid_argument(stub: pb_grpc.InferenceServiceStub) -> None:
    request = pb.ChatStreamRequest(
        model="llm",
        messages=[pb.ChatMessage(role="user", content="hi")],
        options=pb.GenerationOptions(max_tokens=4, repetition_penalty=1e-38),
    )
    with pytest.raises(grpc.RpcError) as refused:
        list(stub.ChatStream(request, timeout=60))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "options.repetition_penalty must be in [0.01, 100]" in (refused.value.details() or "")
    # Both ends of the range generate (finite probabilities: no INTERNAL).
    for penalty in (0.01, 100.0):
        request.options.repetition_penalty = penalty
        assert list(stub.ChatStream(request, timeout=60))[-1].done


def test_a_chat_is_answered_promptly_while_oversized_prompts_are_refused(stub: pb_grpc.InferenceServiceStub) -> None:
    """Three 5 MB prompts at once used to be tokenized inside the model before its context check
    (about 4.5 s each) while a 14-token chat waited behind them: now the adapter refuses them by
    size (LLM_MAX_PROMPT_CHARS) before anything tokenizes them."""
    huge = "lorem ipsum " * (5_000_000 // 12)
    outcomes: dict[str, tuple[float, grpc.StatusCode | None, str]] = {}

    def big(name: str, chat: bool) -> None:
        started = time.monotonic()
        try:
            if chat:
                request = pb.ChatStreamRequest(model="llm", messages=[pb.ChatMessage(role="user", content=huge)])
                list(stub.ChatStream(request, timeout=60))
            else:
                list(stub.GenerateStream(pb.GenerateStreamRequest(model="llm", prompt=huge), timeout=60))
            outcomes[name] = (time.monotonic() - started, None, "")
        except grpc.RpcError as err:
            outcomes[name] = (time.monotonic() - started, err.code(), err.details() or "")

    threads = [threading.Thread(target=big, args=(f"big-{i}", i % 2 == 0)) for i in range(3)]
    for thread in threads:
        thread.start()
    started = time.monotonic()
    small = pb.ChatStreamRequest(
        model="llm",
        messages=[pb.ChatMessage(role="user", content="Say hello in one short sentence, please.")],
        options=pb.GenerationOptions(max_tokens=8),
    )
    assert list(stub.ChatStream(small, timeout=60))[-1].done
    small_seconds = time.monotonic() - started
    for thread in threads:
        thread.join(60)
    for name, (seconds, code, details) in outcomes.items():
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (name, code, details)
        assert "LLM_MAX_PROMPT_CHARS" in details and seconds < 3.0, (name, seconds, details)
    assert small_seconds < 3.0, f"the small chat took {small_seconds:.1f}s behind the oversized prompts"


def test_a_whitespace_only_prompt_is_invalid_argument(stub: pb_grpc.InferenceServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        list(stub.GenerateStream(pb.GenerateStreamRequest(model="llm", prompt=" \n\t "), timeout=30))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "prompt" in (refused.value.details() or "")


@pytest.mark.parametrize("model", ["llm", "embedding"])
def test_an_image_job_for_a_model_that_makes_no_images_is_refused_at_submit(
    stub: pb_grpc.InferenceServiceStub, model: str
) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        stub.GenerateImage(pb.GenerateImageRequest(model=model, prompt="a red square"), timeout=30)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not an image model" in (refused.value.details() or "")


def test_an_edit_whose_strength_leaves_no_denoising_step_is_refused_at_submit(
    stub: pb_grpc.InferenceServiceStub,
) -> None:
    from tests.integration.images_helpers import picture

    for options in (pb.ImageOptions(width=32, height=32), pb.ImageOptions(width=32, height=32, steps=4)):
        request = pb.EditImageRequest(model="image", prompt="x", image=picture(32, 32), strength=1e-9, options=options)
        with pytest.raises(grpc.RpcError) as refused:
            stub.EditImage(request, timeout=30)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "steps * strength" in (refused.value.details() or "")


def test_an_unreadable_image_is_refused_without_python_reprs(stub: pb_grpc.InferenceServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        stub.EditImage(pb.EditImageRequest(model="image", prompt="x", image=b"not a picture"), timeout=30)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = refused.value.details() or ""
    assert "not a readable" in details and "object at 0x" not in details and "BytesIO" not in details


def test_a_duration_with_mixed_signs_is_invalid_argument(stub: pb_grpc.InferenceServiceStub) -> None:
    from google.protobuf.duration_pb2 import Duration

    request = pb.GetEmbeddingRequest(model="embedding", inputs=["x"], keep_alive=Duration(seconds=5, nanos=-1))
    with pytest.raises(grpc.RpcError) as refused:
        stub.GetEmbedding(request, timeout=30)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "same sign" in (refused.value.details() or "")
