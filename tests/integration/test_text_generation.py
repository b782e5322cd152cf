"""ChatStream and GenerateStream end to end: adapter -> embedded Triton -> an LLM model, for both
dialects the adapter drives: our `llm` (transformers, continuously batched, renders chats itself
through `messages`) and `vllm_dialect`, the test-only stand-in for a model of Triton's vLLM backend
(a raw prompt: the adapter renders the chat template of its `tokenizer`)."""

from __future__ import annotations

import concurrent.futures
import json
import time
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc

from adapter.gen.inference.v1 import inference_pb2 as pb
from adapter.gen.inference.v1 import inference_pb2_grpc as pb_grpc
from tests.harness import TEST_MODELS, RunningAdapter, start_adapter, stop_adapter
from tests.integration.triton_direct import metric_total, non_streamed_chat

HELLO = [pb.ChatMessage(role="user", content="Hello")]
MODELS = ["llm", "vllm_dialect"]
# What each model reports on Triton's metrics endpoint (label model=<name>): ours, or vLLM's names.
METRICS: dict[str, dict[str, tuple[str, dict[str, str]]]] = {
    "llm": {
        "in_flight": ("llm_active_generations", {}),
        "running": ("llm_num_requests_running", {}),
        "cancelled": ("llm_generation_requests_total", {"finish_reason": "cancelled"}),
        "tokens": ("llm_generated_tokens_total", {}),
    },
    "vllm_dialect": {
        "in_flight": ("vllm:num_requests_running", {}),
        "running": ("vllm:num_requests_running", {}),
        "cancelled": ("vllm:request_success_total", {"finished_reason": "abort"}),
        "tokens": ("vllm:generation_tokens_total", {}),
    },
}


@pytest.fixture(scope="module")
def adapter(small_models: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningAdapter]:
    """This module's own adapter, serving the test models too (the stand-in and its copy without
    a tokenizer)."""
    workdir = tmp_path_factory.mktemp("text-generation")
    running = start_adapter(
        workdir / "adapter.log",
        env={
            "IMAGE_DIR": str(workdir / "images"),
            "PRELOAD_MODELS": ",".join(MODELS),
            "MODEL_KEEP_ALIVE_SECONDS": "3600",
        },
        test_models=True,
    )
    try:
        yield running
    finally:
        stop_adapter(running)


@pytest.fixture(scope="module")
def stub(adapter: RunningAdapter) -> Iterator[pb_grpc.InferenceServiceStub]:
    with adapter.channel() as channel:
        yield pb_grpc.InferenceServiceStub(channel)


@pytest.fixture(params=MODELS)
def model(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def chat(stub: pb_grpc.InferenceServiceStub, model: str, **options: object) -> list[pb.ChatStreamResponse]:
    request = pb.ChatStreamRequest(model=model, messages=HELLO, options=pb.GenerationOptions(**options))
    return list(stub.ChatStream(request, timeout=60))


def text_of(responses: list[Any]) -> str:
    return "".join(r.delta for r in responses)


def metric(adapter: RunningAdapter, model: str, which: str) -> float:
    name, labels = METRICS[model][which]
    return metric_total(adapter.triton_metrics_url, name, model=model, **labels)


def rendered_hello() -> str:
    """The stand-in's chat template applied to HELLO by transformers (the reference rendering)."""
    from transformers.utils.chat_template_utils import render_jinja_template

    config = json.loads((TEST_MODELS / "vllm_dialect" / "tokenizer" / "tokenizer_config.json").read_text())
    rendered, _ = render_jinja_template(
        conversations=[[{"role": "user", "content": "Hello"}]],
        chat_template=config["chat_template"],
        add_generation_prompt=True,
        bos_token=config["bos_token"],
        eos_token=config["eos_token"],
    )
    return str(rendered[0])


def non_streamed(adapter: RunningAdapter, model: str, sampling: dict[str, Any]) -> str:
    """The model's whole reply to HELLO in one response, straight from Triton (stream=false)."""
    if model == "llm":
        return non_streamed_chat(adapter.triton_grpc_url, [{"role": "user", "content": "Hello"}], sampling)
    inputs = []
    for name, value in (("text_input", rendered_hello()), ("sampling_parameters", json.dumps(sampling))):
        tensor = triton_grpc.InferInput(name, [1], "BYTES")
        tensor.set_data_from_numpy(np.array([value.encode()], dtype=np.object_))
        inputs.append(tensor)
    flag = triton_grpc.InferInput("exclude_input_in_output", [1], "BOOL")
    flag.set_data_from_numpy(np.array([True]))
    results: list[Any] = []
    client = triton_grpc.InferenceServerClient(adapter.triton_grpc_url)
    try:
        client.start_stream(callback=lambda result, error: results.append(error or result))
        client.async_stream_infer(model, [*inputs, flag])
    finally:
        client.stop_stream()
        client.close()
    assert len(results) == 1 and not isinstance(results[0], Exception), results
    return str(results[0].as_numpy("text_output")[0].decode())


def test_chat_streams_several_chunks_and_ends_with_usage_and_timings(
    stub: pb_grpc.InferenceServiceStub, model: str
) -> None:
    responses = chat(stub, model, max_tokens=32, seed=7)
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
    stub: pb_grpc.InferenceServiceStub, adapter: RunningAdapter, model: str
) -> None:
    sampling = {"max_tokens": 40, "seed": 1234, "temperature": 0.9, "top_p": 0.95}
    streamed = text_of(chat(stub, model, **sampling))
    assert streamed == non_streamed(adapter, model, sampling)
    # And the seed is what makes it reproducible: another seed gives another text.
    assert text_of(chat(stub, model, **{**sampling, "seed": 4321})) != streamed


def test_stop_sequence_ends_with_stop_and_the_text_before_it(stub: pb_grpc.InferenceServiceStub, model: str) -> None:
    full = text_of(chat(stub, model, max_tokens=60, seed=99))
    stop = full[20:23]
    assert len(stop) == 3 and stop.strip(), f"pick another seed: text too short {full!r}"
    responses = chat(stub, model, max_tokens=60, seed=99, stop=[stop])
    assert responses[-1].finish_reason == pb.FINISH_REASON_STOP
    assert text_of(responses) == full[: full.index(stop)]


def test_max_tokens_ends_with_length_and_exactly_that_many_tokens(
    stub: pb_grpc.InferenceServiceStub, model: str
) -> None:
    for max_tokens in (1, 5, 23):
        last = chat(stub, model, max_tokens=max_tokens, seed=5)[-1]
        assert last.finish_reason == pb.FINISH_REASON_LENGTH
        assert last.usage.completion_tokens == max_tokens


def test_greedy_decoding_is_deterministic_without_a_seed(stub: pb_grpc.InferenceServiceStub, model: str) -> None:
    first = text_of(chat(stub, model, max_tokens=20, temperature=0))
    assert first == text_of(chat(stub, model, max_tokens=20, temperature=0))


def test_generate_streams_a_raw_prompt(stub: pb_grpc.InferenceServiceStub, model: str) -> None:
    request = pb.GenerateStreamRequest(model=model, prompt="def main():", options=pb.GenerationOptions(max_tokens=12))
    responses = list(stub.GenerateStream(request, timeout=60))
    assert responses[-1].done and responses[-1].usage.completion_tokens == 12
    assert responses[-1].finish_reason == pb.FINISH_REASON_LENGTH


def _wait_for_idle_model(adapter: RunningAdapter, model: str, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while metric(adapter, model, "in_flight") > 0:
        assert time.monotonic() < deadline, "the model is still generating"
        time.sleep(0.05)


def test_cancelling_mid_stream_stops_generation_inside_the_model(
    stub: pb_grpc.InferenceServiceStub, adapter: RunningAdapter, model: str
) -> None:
    _wait_for_idle_model(adapter, model)
    cancelled_before = metric(adapter, model, "cancelled")
    tokens_before = metric(adapter, model, "tokens")

    # Only a real cancel ends these soon: llm ~10 s of work for 4000 tokens at this model's speed,
    # the stand-in its 200-word answer (1 s).
    max_tokens = 4000
    call = stub.ChatStream(
        pb.ChatStreamRequest(model=model, messages=HELLO, options=pb.GenerationOptions(max_tokens=max_tokens)),
        timeout=60,
    )
    received = [next(call), next(call)]
    assert all(not r.done for r in received)
    cancelled_at = time.monotonic()
    call.cancel()

    # The model itself reports the request ended as cancelled, well before it would have ended.
    _wait_for_idle_model(adapter, model)
    assert time.monotonic() - cancelled_at < 5
    assert metric(adapter, model, "cancelled") == cancelled_before + 1
    generated = metric(adapter, model, "tokens") - tokens_before
    assert 0 < generated < (max_tokens / 4 if model == "llm" else 100)


def test_deadline_reaches_the_model_as_a_cancel(
    stub: pb_grpc.InferenceServiceStub, adapter: RunningAdapter, model: str
) -> None:
    _wait_for_idle_model(adapter, model)
    cancelled_before = metric(adapter, model, "cancelled")
    request = pb.ChatStreamRequest(model=model, messages=HELLO, options=pb.GenerationOptions(max_tokens=4000))
    with pytest.raises(grpc.RpcError) as caught:
        list(stub.ChatStream(request, timeout=0.5))
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    _wait_for_idle_model(adapter, model)
    assert metric(adapter, model, "cancelled") == cancelled_before + 1


def _hello(**options: object) -> pb.ChatStreamRequest:
    return pb.ChatStreamRequest(model="", messages=HELLO, options=pb.GenerationOptions(**options))


INVALID_CHATS = [
    ("model", pb.ChatStreamRequest(model="", messages=HELLO)),
    ("messages", pb.ChatStreamRequest()),
    ("messages[0].role", pb.ChatStreamRequest(messages=[pb.ChatMessage(role="robot", content="hi")])),
    ("messages", pb.ChatStreamRequest(messages=[pb.ChatMessage(role="user", content="")])),
    ("options.max_tokens", _hello(max_tokens=0)),
    ("options.max_tokens", _hello(max_tokens=-3)),
    ("options.max_tokens", _hello(max_tokens=1_000_000)),  # above the model's max_tokens_limit
    ("options.temperature", _hello(temperature=-0.1)),
    ("options.top_p", _hello(top_p=0)),
    ("options.top_p", _hello(top_p=1.5)),
    ("options.top_k", _hello(top_k=-1)),
    ("options.repetition_penalty", _hello(repetition_penalty=0)),
    ("options.presence_penalty", _hello(presence_penalty=3)),
    ("options.frequency_penalty", _hello(frequency_penalty=-2.5)),
    ("options.stop", _hello(stop=[""])),
]


@pytest.mark.parametrize(
    ("field", "request_"), INVALID_CHATS, ids=[f"{i}-{f}" for i, (f, _) in enumerate(INVALID_CHATS)]
)
def test_invalid_chat_is_rejected_naming_the_field(
    stub: pb_grpc.InferenceServiceStub, model: str, field: str, request_: pb.ChatStreamRequest
) -> None:
    sent = pb.ChatStreamRequest()
    sent.CopyFrom(request_)
    if field != "model":
        sent.model = model
    with pytest.raises(grpc.RpcError) as caught:
        list(stub.ChatStream(sent, timeout=30))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in caught.value.details()


def test_empty_prompt_is_invalid(stub: pb_grpc.InferenceServiceStub, model: str) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        list(stub.GenerateStream(pb.GenerateStreamRequest(model=model, prompt=""), timeout=30))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "prompt" in caught.value.details()


def test_prompt_longer_than_the_context_is_invalid(stub: pb_grpc.InferenceServiceStub, model: str) -> None:
    # The model checks the prompt against its context window and says so (ours with INVALID_ARG;
    # vLLM's with "Error generating stream: The decoder prompt ... is longer than the maximum model
    # length", INTERNAL, which the adapter recognises).
    request = pb.GenerateStreamRequest(model=model, prompt="word " * 9000, options=pb.GenerationOptions(max_tokens=10))
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
    stub: pb_grpc.InferenceServiceStub, adapter: RunningAdapter, model: str
) -> None:
    """The model's gauges show the requests running together, and each seeded request's text is
    the one it gets alone."""
    _wait_for_idle_model(adapter, model)
    alone = {seed: text_of(chat(stub, model, max_tokens=120, seed=seed, temperature=0.8)) for seed in (1, 2, 3)}
    running: list[float] = []
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futures = {
            seed: pool.submit(lambda s: text_of(chat(stub, model, max_tokens=120, seed=s, temperature=0.8)), seed)
            for seed in (1, 2, 3, 4, 5, 6)
        }
        while not all(f.done() for f in futures.values()):
            running.append(metric(adapter, model, "running"))
            time.sleep(0.05)
        together = {seed: f.result() for seed, f in futures.items()}
    assert max(running) >= 4, running
    assert {seed: together[seed] for seed in alone} == alone
    _wait_for_idle_model(adapter, model)
    assert metric(adapter, model, "running") == 0


def test_a_model_of_another_kind_is_refused_by_what_it_declares(stub: pb_grpc.InferenceServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as chat_:
        list(stub.ChatStream(pb.ChatStreamRequest(model="embedding", messages=HELLO), timeout=120))
    assert chat_.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "model 'embedding' cannot serve chat: it does not declare messages, text_output" in chat_.value.details()
    with pytest.raises(grpc.RpcError) as embed:
        stub.GetEmbedding(pb.GetEmbeddingRequest(model="llm", inputs=["a cat"]), timeout=120)
    assert embed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "model 'llm' cannot serve embedding: it does not declare embedding" in embed.value.details()


# ---- a raw-prompt model: the adapter renders the chat ------------------------------------------


def test_a_chat_for_a_raw_prompt_model_is_rendered_with_its_tokenizers_template(
    stub: pb_grpc.InferenceServiceStub,
) -> None:
    """The stand-in counts a prompt token per byte and picks its words from the prompt: the usage
    and the text show it got exactly transformers' rendering of the conversation."""
    prompt = rendered_hello()
    assert prompt.startswith("<|endoftext|><|im_start|>system\n")  # its template's BOS and default system turn
    chat_responses = chat(stub, "vllm_dialect", max_tokens=16, temperature=0)
    generate = pb.GenerateStreamRequest(
        model="vllm_dialect", prompt=prompt, options=pb.GenerationOptions(max_tokens=16, temperature=0)
    )
    generated = list(stub.GenerateStream(generate, timeout=60))
    assert chat_responses[-1].usage.prompt_tokens == len(prompt.encode()) == generated[-1].usage.prompt_tokens
    assert text_of(chat_responses) == text_of(generated)


def test_a_raw_prompt_model_without_a_tokenizer_generates_but_refuses_a_chat_saying_why(
    stub: pb_grpc.InferenceServiceStub,
) -> None:
    model = "vllm_dialect_no_tokenizer"
    request = pb.GenerateStreamRequest(model=model, prompt="Hello", options=pb.GenerationOptions(max_tokens=3))
    responses = list(stub.GenerateStream(request, timeout=120))
    assert responses[-1].usage.completion_tokens == 3 and responses[-1].usage.prompt_tokens == 5
    with pytest.raises(grpc.RpcError) as caught:
        chat(stub, model, max_tokens=3)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "names no tokenizer" in caught.value.details() and "GenerateStream" in caught.value.details()


def test_the_model_ending_its_answer_itself_is_stop_with_the_end_of_sequence_token_counted(
    stub: pb_grpc.InferenceServiceStub,
) -> None:
    request = pb.GenerateStreamRequest(
        model="vllm_dialect", prompt="Hello", options=pb.GenerationOptions(max_tokens=500, temperature=0)
    )
    last = list(stub.GenerateStream(request, timeout=60))[-1]
    assert last.finish_reason == pb.FINISH_REASON_STOP
    assert last.usage.completion_tokens == 201  # its 200-word answer, then its end-of-sequence token
