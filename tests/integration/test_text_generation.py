"""ChatStream and GenerateStream end to end: adapter -> embedded Triton -> transformers model."""

from __future__ import annotations

import time

import grpc
import pytest

from adapter.gen.inference.v1 import inference_pb2 as pb
from adapter.gen.inference.v1 import inference_pb2_grpc as pb_grpc
from tests.harness import RunningAdapter
from tests.integration.triton_direct import metric_total, non_streamed_chat

HELLO = [pb.ChatMessage(role="user", content="Hello")]


def chat(stub: pb_grpc.InferenceServiceStub, **options: object) -> list[pb.ChatStreamResponse]:
    request = pb.ChatStreamRequest(model="llm", messages=HELLO, options=pb.GenerationOptions(**options))
    return list(stub.ChatStream(request, timeout=60))


def text_of(responses: list[pb.ChatStreamResponse]) -> str:
    return "".join(r.delta for r in responses)


def test_chat_streams_several_chunks_and_ends_with_usage_and_timings(stub: pb_grpc.InferenceServiceStub) -> None:
    responses = chat(stub, max_tokens=32, seed=7)
    assert len(responses) > 1
    assert [r.done for r in responses] == [False] * (len(responses) - 1) + [True]
    last = responses[-1]
    assert last.finish_reason in (pb.FINISH_REASON_STOP, pb.FINISH_REASON_LENGTH)
    assert last.usage.prompt_tokens > 0
    assert 0 < last.usage.completion_tokens <= 32
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens
    ttft = last.timings.time_to_first_token.ToNanoseconds()
    assert 0 < ttft <= last.timings.total_duration.ToNanoseconds()
    assert text_of(responses)


def test_seeded_stream_equals_a_non_streamed_run_of_the_same_request(
    stub: pb_grpc.InferenceServiceStub, adapter: RunningAdapter
) -> None:
    sampling = {"max_tokens": 40, "seed": 1234, "temperature": 0.9, "top_p": 0.95}
    streamed = text_of(chat(stub, **sampling))
    whole = non_streamed_chat(adapter.triton_grpc_url, [{"role": "user", "content": "Hello"}], sampling)
    assert streamed == whole
    # And the seed is what makes it reproducible: another seed gives another text.
    assert text_of(chat(stub, **{**sampling, "seed": 4321})) != streamed


def test_stop_sequence_ends_with_stop_and_the_text_before_it(stub: pb_grpc.InferenceServiceStub) -> None:
    full = text_of(chat(stub, max_tokens=60, seed=99))
    stop = full[20:23]
    assert len(stop) == 3 and stop.strip(), f"pick another seed: text too short {full!r}"
    responses = chat(stub, max_tokens=60, seed=99, stop=[stop])
    assert responses[-1].finish_reason == pb.FINISH_REASON_STOP
    assert text_of(responses) == full[: full.index(stop)]


def test_max_tokens_ends_with_length_and_exactly_that_many_tokens(stub: pb_grpc.InferenceServiceStub) -> None:
    for max_tokens in (1, 5, 23):
        last = chat(stub, max_tokens=max_tokens, seed=5)[-1]
        assert last.finish_reason == pb.FINISH_REASON_LENGTH
        assert last.usage.completion_tokens == max_tokens


def test_greedy_decoding_is_deterministic_without_a_seed(stub: pb_grpc.InferenceServiceStub) -> None:
    assert text_of(chat(stub, max_tokens=20, temperature=0)) == text_of(chat(stub, max_tokens=20, temperature=0))


def test_generate_streams_a_raw_prompt(stub: pb_grpc.InferenceServiceStub) -> None:
    request = pb.GenerateStreamRequest(model="llm", prompt="def main():", options=pb.GenerationOptions(max_tokens=12))
    responses = list(stub.GenerateStream(request, timeout=60))
    assert responses[-1].done and responses[-1].usage.completion_tokens == 12
    assert responses[-1].finish_reason == pb.FINISH_REASON_LENGTH


def _wait_for_idle_model(metrics_url: str, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while metric_total(metrics_url, "llm_active_generations") > 0:
        assert time.monotonic() < deadline, "the model is still generating"
        time.sleep(0.05)


def test_cancelling_mid_stream_stops_generation_inside_the_model(
    stub: pb_grpc.InferenceServiceStub, adapter: RunningAdapter
) -> None:
    metrics = adapter.triton_metrics_url
    _wait_for_idle_model(metrics)
    cancelled_before = metric_total(metrics, "llm_generation_requests_total", finish_reason="cancelled")
    tokens_before = metric_total(metrics, "llm_generated_tokens_total")

    max_tokens = 4000  # ~10 s of work at this model's speed: only a real cancel ends it sooner
    call = stub.ChatStream(
        pb.ChatStreamRequest(model="llm", messages=HELLO, options=pb.GenerationOptions(max_tokens=max_tokens)),
        timeout=60,
    )
    received = [next(call), next(call)]
    assert all(not r.done for r in received)
    cancelled_at = time.monotonic()
    call.cancel()

    # The model itself reports the request ended as cancelled, well before max_tokens.
    _wait_for_idle_model(metrics)
    assert time.monotonic() - cancelled_at < 5
    assert metric_total(metrics, "llm_generation_requests_total", finish_reason="cancelled") == cancelled_before + 1
    generated = metric_total(metrics, "llm_generated_tokens_total") - tokens_before
    assert 0 < generated < max_tokens / 4


def test_deadline_reaches_the_model_as_a_cancel(stub: pb_grpc.InferenceServiceStub, adapter: RunningAdapter) -> None:
    metrics = adapter.triton_metrics_url
    _wait_for_idle_model(metrics)
    cancelled_before = metric_total(metrics, "llm_generation_requests_total", finish_reason="cancelled")
    request = pb.ChatStreamRequest(model="llm", messages=HELLO, options=pb.GenerationOptions(max_tokens=4000))
    with pytest.raises(grpc.RpcError) as caught:
        list(stub.ChatStream(request, timeout=0.5))
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    _wait_for_idle_model(metrics)
    assert metric_total(metrics, "llm_generation_requests_total", finish_reason="cancelled") == cancelled_before + 1


def _hello(**options: object) -> pb.ChatStreamRequest:
    return pb.ChatStreamRequest(model="llm", messages=HELLO, options=pb.GenerationOptions(**options))


INVALID_CHATS = [
    ("model", pb.ChatStreamRequest(model="", messages=HELLO)),
    ("messages", pb.ChatStreamRequest(model="llm")),
    ("messages[0].role", pb.ChatStreamRequest(model="llm", messages=[pb.ChatMessage(role="robot", content="hi")])),
    ("messages", pb.ChatStreamRequest(model="llm", messages=[pb.ChatMessage(role="user", content="")])),
    ("options.max_tokens", _hello(max_tokens=0)),
    ("options.max_tokens", _hello(max_tokens=-3)),
    ("options.max_tokens", _hello(max_tokens=1_000_000)),
    ("options.temperature", _hello(temperature=-0.1)),
    ("options.top_p", _hello(top_p=0)),
    ("options.top_p", _hello(top_p=1.5)),
    ("options.top_k", _hello(top_k=-1)),
    ("options.repetition_penalty", _hello(repetition_penalty=0)),
    ("options.presence_penalty", _hello(presence_penalty=3)),
    ("options.frequency_penalty", _hello(frequency_penalty=-2.5)),
    ("options.stop", _hello(stop=[""])),
]


@pytest.mark.parametrize(("field", "request_"), INVALID_CHATS, ids=[f for f, _ in INVALID_CHATS])
def test_invalid_chat_is_rejected_naming_the_field(
    stub: pb_grpc.InferenceServiceStub, field: str, request_: pb.ChatStreamRequest
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        list(stub.ChatStream(request_, timeout=30))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in caught.value.details()


def test_empty_prompt_is_invalid(stub: pb_grpc.InferenceServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        list(stub.GenerateStream(pb.GenerateStreamRequest(model="llm", prompt=""), timeout=30))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "prompt" in caught.value.details()


def test_prompt_longer_than_the_context_is_invalid(stub: pb_grpc.InferenceServiceStub) -> None:
    # The model checks prompt + max_tokens against its context window and says so.
    request = pb.GenerateStreamRequest(model="llm", prompt="word " * 9000, options=pb.GenerationOptions(max_tokens=10))
    with pytest.raises(grpc.RpcError) as caught:
        list(stub.GenerateStream(request, timeout=60))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "context" in caught.value.details()


def test_unknown_model_is_not_found(stub: pb_grpc.InferenceServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        list(stub.ChatStream(pb.ChatStreamRequest(model="no-such-model", messages=HELLO), timeout=30))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert "no-such-model" in caught.value.details() and "llm" in caught.value.details()


def test_concurrent_streams_run_in_one_batch_and_each_gets_its_own_text(
    stub: pb_grpc.InferenceServiceStub, adapter: RunningAdapter
) -> None:
    """The engine's gauges show the requests running together, and each seeded request's text is
    the one it gets alone."""
    import concurrent.futures

    metrics = adapter.triton_metrics_url
    _wait_for_idle_model(metrics)
    alone = {seed: text_of(chat(stub, max_tokens=120, seed=seed, temperature=0.8)) for seed in (1, 2, 3)}
    running: list[float] = []
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futures = {
            seed: pool.submit(lambda s: text_of(chat(stub, max_tokens=120, seed=s, temperature=0.8)), seed)
            for seed in (1, 2, 3, 4, 5, 6)
        }
        while not all(f.done() for f in futures.values()):
            running.append(metric_total(metrics, "llm_num_requests_running"))
            time.sleep(0.05)
        together = {seed: f.result() for seed, f in futures.items()}
    assert max(running) >= 4, running
    assert {seed: together[seed] for seed in alone} == alone
    _wait_for_idle_model(metrics)
    assert metric_total(metrics, "llm_num_requests_running") == 0
    assert metric_total(metrics, "llm_num_requests_waiting") == 0


def test_a_model_of_another_kind_is_refused_by_what_it_declares(stub: pb_grpc.InferenceServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as chat:
        list(stub.ChatStream(pb.ChatStreamRequest(model="embedding", messages=HELLO), timeout=120))
    assert chat.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "model 'embedding' cannot serve chat: it does not declare messages, text_output" in chat.value.details()
    with pytest.raises(grpc.RpcError) as embed:
        stub.GetEmbedding(pb.GetEmbeddingRequest(model="llm", inputs=["a cat"]), timeout=120)
    assert embed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "model 'llm' cannot serve embedding: it does not declare embedding" in embed.value.details()
