"""Triton's vLLM-backend dialect, straight through a real embedded Triton (no adapter in the path):
our `llm` and the test-only `vllm_dialect` stand-in for a vLLM-backend model must answer the same
requests the same way (the tensors, switches, defaults, deltas, counts and finish reasons of
triton-inference-server/vllm_backend), so a client written for one works against the other."""

from __future__ import annotations

import json
import queue
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
from tritonclient.utils import InferenceServerException

from tests.harness import RunningAdapter, start_adapter, stop_adapter
from tests.integration.triton_direct import metric_total

MODELS = ["llm", "vllm_dialect"]
PROMPT = "Tell me about the weather"
SWITCHES = ("return_finish_reason", "return_num_input_tokens", "return_num_output_tokens")
ALL_ON = dict.fromkeys(SWITCHES, True)


@pytest.fixture(scope="module")
def dialect_adapter(small_models: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningAdapter]:
    """An adapter with the test models, for its embedded Triton: the tests talk to Triton directly."""
    workdir = tmp_path_factory.mktemp("llm-dialect")
    running = start_adapter(
        workdir / "adapter.log",
        env={"IMAGE_DIR": str(workdir / "images"), "PRELOAD_MODELS": ",".join(MODELS)},
        test_models=True,
    )
    try:
        yield running
    finally:
        stop_adapter(running)


@pytest.fixture(scope="module")
def triton_url(dialect_adapter: RunningAdapter) -> str:
    return dialect_adapter.triton_grpc_url


@dataclass
class Response:
    outputs: dict[str, Any]
    final: bool

    def text(self) -> str:
        return "".join(v.decode() for v in self.outputs["text_output"].reshape(-1))

    def first(self, name: str) -> Any:
        value = self.outputs[name].reshape(-1)[0]
        return value.decode() if isinstance(value, bytes) else int(value)


def _inputs(values: dict[str, Any]) -> list[triton_grpc.InferInput]:
    inputs = []
    for name, value in values.items():
        if isinstance(value, bool):
            tensor = triton_grpc.InferInput(name, [1], "BOOL")
            tensor.set_data_from_numpy(np.array([value]))
        else:
            text = value if isinstance(value, str) else json.dumps(value)
            tensor = triton_grpc.InferInput(name, [1], "BYTES")
            tensor.set_data_from_numpy(np.array([text.encode()], dtype=np.object_))
        inputs.append(tensor)
    return inputs


def infer(url: str, model: str, cancel_after: int | None = None, **values: Any) -> list[Response]:
    """One request on a Triton stream, its responses up to the final one (read from Triton's
    triton_final_response parameter); raises the error response. `cancel_after`: cancel the request
    after that many responses and return them."""
    results: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client = triton_grpc.InferenceServerClient(url)
    responses: list[Response] = []
    try:
        client.start_stream(callback=lambda result, error: results.put((result, error)))
        client.async_stream_infer(model, _inputs(values), enable_empty_final_response=True)
        while True:
            result, error = results.get(timeout=60)
            if error is not None:
                raise error
            message = result.get_response()
            outputs = {output.name: result.as_numpy(output.name) for output in message.outputs}
            responses.append(Response(outputs, message.parameters["triton_final_response"].bool_param))
            if responses[-1].final or len(responses) == cancel_after:
                break
    finally:
        client.stop_stream(cancel_requests=cancel_after is not None)
        client.close()
    return responses


def streamed(url: str, model: str, sampling: dict[str, Any], **values: Any) -> list[Response]:
    return infer(
        url,
        model,
        text_input=PROMPT,
        stream=True,
        exclude_input_in_output=True,
        sampling_parameters=sampling,
        **{**ALL_ON, **values},
    )


@pytest.mark.parametrize("model", MODELS)
def test_a_stream_carries_deltas_and_per_response_counts_and_ends_with_the_final_flag(
    triton_url: str, model: str
) -> None:
    responses = streamed(triton_url, model, {"max_tokens": 12, "seed": 3, "temperature": 0.8})
    assert len(responses) > 1
    assert [r.final for r in responses] == [False] * (len(responses) - 1) + [True]
    for response in responses:
        assert set(response.outputs) == {"text_output", *(name.removeprefix("return_") for name in SWITCHES)}
    # finish_reason is vLLM's str(None) until the last response.
    assert {r.first("finish_reason") for r in responses[:-1]} == {"None"}
    assert responses[-1].first("finish_reason") == "length"
    # num_input_tokens on every response; num_output_tokens counts each response's own tokens.
    assert len({r.first("num_input_tokens") for r in responses}) == 1 and responses[0].first("num_input_tokens") > 0
    assert sum(r.first("num_output_tokens") for r in responses) == 12
    assert all(r.first("num_output_tokens") >= 1 for r in responses)
    assert "".join(r.text() for r in responses)


@pytest.mark.parametrize("model", MODELS)
def test_switches_left_off_leave_their_outputs_out(triton_url: str, model: str) -> None:
    responses = infer(
        triton_url,
        model,
        text_input=PROMPT,
        stream=True,
        exclude_input_in_output=True,
        sampling_parameters={"max_tokens": 4},
    )
    assert responses[-1].final
    assert all(set(r.outputs) == {"text_output"} for r in responses)


@pytest.mark.parametrize("model", MODELS)
def test_not_streaming_is_the_default_and_repeats_the_prompt_unless_excluded(triton_url: str, model: str) -> None:
    sampling = {"max_tokens": 10, "seed": 11, "temperature": 0.9}
    whole = infer(triton_url, model, text_input=PROMPT, sampling_parameters=sampling, **ALL_ON)
    assert len(whole) == 1 and whole[0].final
    assert whole[0].text().startswith(PROMPT)
    assert whole[0].first("finish_reason") == "length" and whole[0].first("num_output_tokens") == 10
    excluded = infer(triton_url, model, text_input=PROMPT, exclude_input_in_output=True, sampling_parameters=sampling)
    stream = streamed(triton_url, model, sampling)
    assert excluded[0].text() == "".join(r.text() for r in stream) == whole[0].text().removeprefix(PROMPT)


@pytest.mark.parametrize("model", MODELS)
def test_repeating_the_prompt_while_streaming_is_refused(triton_url: str, model: str) -> None:
    with pytest.raises(InferenceServerException) as caught:
        infer(triton_url, model, text_input=PROMPT, stream=True, exclude_input_in_output=False)
    assert "exclude_input_in_output" in str(caught.value)


@pytest.mark.parametrize("model", MODELS)
def test_a_stop_string_ends_with_stop_and_the_text_before_it(triton_url: str, model: str) -> None:
    sampling = {"max_tokens": 30, "seed": 5, "temperature": 1.0}
    full = "".join(r.text() for r in streamed(triton_url, model, sampling))
    stop = full[12:16]
    assert len(stop) == 4 and stop.strip() and full.index(stop) >= 8, full
    responses = streamed(triton_url, model, {**sampling, "stop": [stop]})
    assert responses[-1].first("finish_reason") == "stop"
    assert "".join(r.text() for r in responses) == full[: full.index(stop)]


@pytest.mark.parametrize("model", MODELS)
def test_the_request_triton_openai_frontend_sends_is_served(triton_url: str, model: str) -> None:
    """What `_create_vllm_generate_request` of Triton's OpenAI frontend sends for a plain chat
    completion: the schema's defaults for options we do not implement (n, logprobs, ignore_eos)."""
    sampling = {
        "frequency_penalty": 0,
        "ignore_eos": False,
        "logprobs": False,
        "n": 1,
        "presence_penalty": 0,
        "temperature": 0.7,
        "top_p": 1,
        "max_tokens": 6,
    }
    responses = infer(
        triton_url,
        model,
        text_input=PROMPT,
        stream=False,
        exclude_input_in_output=True,
        sampling_parameters=sampling,
        return_num_input_tokens=True,
        return_num_output_tokens=True,
    )
    assert len(responses) == 1
    assert responses[0].first("num_output_tokens") == 6 and responses[0].first("num_input_tokens") > 0
    assert not responses[0].text().startswith(PROMPT)


@pytest.mark.parametrize("model", MODELS)
def test_an_option_neither_can_honour_is_refused_by_name(triton_url: str, model: str) -> None:
    with pytest.raises(InferenceServerException) as caught:
        infer(triton_url, model, text_input=PROMPT, sampling_parameters={"n": 2})
    assert "'n'" in str(caught.value) or "n=2" in str(caught.value)


CANCEL_METRICS = {
    # model: (counter of finished requests and its label for a cancel, counter of generated tokens)
    "llm": (("llm_generation_requests_total", {"finish_reason": "cancelled"}), "llm_generated_tokens_total"),
    "vllm_dialect": (("vllm:request_success_total", {"finished_reason": "abort"}), "vllm:generation_tokens_total"),
}


@pytest.mark.parametrize("model", MODELS)
def test_cancelling_a_stream_stops_the_request_inside_the_model(dialect_adapter: RunningAdapter, model: str) -> None:
    triton_url, metrics = dialect_adapter.triton_grpc_url, dialect_adapter.triton_metrics_url
    (finished, labels), tokens = CANCEL_METRICS[model]
    cancelled_before = metric_total(metrics, finished, model=model, **labels)
    tokens_before = metric_total(metrics, tokens, model=model)
    # Long enough that only a real cancel ends it soon: llm 4000 tokens (~10 s here), vllm_dialect
    # its 200-word answer (1 s).
    received = streamed(triton_url, model, {"max_tokens": 4000}, cancel_after=2)
    assert len(received) == 2 and not received[-1].final
    deadline = time.monotonic() + 5
    while metric_total(metrics, finished, model=model, **labels) == cancelled_before:
        assert time.monotonic() < deadline, "the model did not end the request as cancelled"
        time.sleep(0.05)
    time.sleep(0.2)  # the token counter is updated when the request ends (llm)
    generated = metric_total(metrics, tokens, model=model) - tokens_before
    assert 0 < generated < 100


def test_the_stand_in_ends_its_answer_itself_counting_the_end_of_sequence_token(triton_url: str) -> None:
    responses = streamed(triton_url, "vllm_dialect", {"max_tokens": 500, "temperature": 0})
    last = responses[-1]
    assert last.first("finish_reason") == "stop"
    assert last.text() == "" and last.first("num_output_tokens") == 1  # the end-of-sequence token, no text
    assert sum(r.first("num_output_tokens") for r in responses) == 201  # answer_tokens + end of sequence
    assert responses[0].first("num_input_tokens") == len(PROMPT.encode())


def test_the_stand_in_refuses_a_prompt_longer_than_its_context_as_vllm_does(triton_url: str) -> None:
    with pytest.raises(InferenceServerException) as caught:
        infer(triton_url, "vllm_dialect", text_input="x" * 5000, stream=True, exclude_input_in_output=True)
    assert "Error generating stream: The decoder prompt (length 5000) is longer than the maximum model length" in str(
        caught.value
    )


def test_our_messages_extension_renders_the_chat_template_and_a_non_streamed_answer_repeats_it(
    triton_url: str,
) -> None:
    messages = [{"role": "user", "content": "Hello"}]
    whole = infer(triton_url, "llm", messages=messages, sampling_parameters={"max_tokens": 3})
    assert whole[0].text().startswith("<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n")
