"""The OpenAI-compatible HTTP front, through the official `openai` SDK (sync and async), against the
real adapter and embedded Triton of the session: the same core as the gRPC front, so answers and
refusals are compared with gRPC's where both fronts can ask."""

from __future__ import annotations

import base64
import io
import threading
import time
import uuid
from collections.abc import Iterator

import grpc
import httpx2
import numpy as np
import openai
import pytest
from openai import AsyncOpenAI, OpenAI
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from adapter.gen.inference.v1 import inference_pb2 as pb
from adapter.gen.inference.v1 import inference_pb2_grpc as pb_grpc
from tests.harness import RunningAdapter
from tests.integration.images_helpers import decoded_size, mask, picture
from tests.integration.triton_direct import metric_total

HELLO = [{"role": "user", "content": "Hello, who are you?"}]


@pytest.fixture(scope="module")
def client(adapter: RunningAdapter) -> Iterator[OpenAI]:
    # No retries: a test must see the first answer, not the SDK's second try.
    with OpenAI(base_url=f"{adapter.http_url}/v1", api_key="unused", max_retries=0, timeout=120) as sdk:
        yield sdk


def _png(b64: str) -> tuple[int, int]:
    return decoded_size(base64.b64decode(b64))


def _adapter_metric(adapter: RunningAdapter, name: str, **labels: str) -> float:
    """A counter's total over the samples with these labels (route labels hold braces: a real parser)."""
    text = httpx2.get(adapter.metrics_url).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


# ---- models ------------------------------------------------------------------------------------


def test_models_lists_every_model_of_the_repository_whatever_its_state(client: OpenAI) -> None:
    models = {m.id: m for m in client.models.list()}
    assert {"llm", "embedding", "image"} <= set(models)
    assert all(m.object == "model" and m.created > 0 and m.owned_by for m in models.values())
    states = {m.id: m.model_extra["state"] for m in models.values() if m.model_extra}
    assert states["llm"] == "loaded"  # preloaded
    assert client.models.retrieve("embedding").id == "embedding"
    with pytest.raises(openai.NotFoundError) as raised:
        client.models.retrieve("no-such-model")
    assert "llm" in raised.value.message  # the message lists the models there are


# ---- chat and completions ----------------------------------------------------------------------


def test_chat_answers_with_usage_and_finish_reason(client: OpenAI) -> None:
    reply = client.chat.completions.create(model="llm", messages=HELLO, max_tokens=7, temperature=0)
    choice = reply.choices[0]
    assert reply.object == "chat.completion" and reply.model == "llm" and reply.id.startswith("chatcmpl-")
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason == "length"  # the tiny model never stops on its own within 7 tokens
    assert reply.usage is not None
    assert reply.usage.completion_tokens == 7
    assert reply.usage.prompt_tokens > 0
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + 7
    # max_completion_tokens is the same option under its current name.
    newer = client.chat.completions.create(model="llm", messages=HELLO, max_completion_tokens=3, temperature=0)
    assert newer.usage is not None and newer.usage.completion_tokens == 3


def test_the_http_and_grpc_fronts_answer_alike(client: OpenAI, stub: pb_grpc.InferenceServiceStub) -> None:
    http = client.chat.completions.create(model="llm", messages=HELLO, max_tokens=12, temperature=0)
    grpc_text = "".join(
        r.delta
        for r in stub.ChatStream(
            pb.ChatStreamRequest(
                model="llm",
                messages=[pb.ChatMessage(**m) for m in HELLO],
                options=pb.GenerationOptions(max_tokens=12, temperature=0),
            ),
            timeout=60,
        )
    )
    assert http.choices[0].message.content == grpc_text


async def test_streamed_chat_ends_with_usage_in_a_last_chunk(adapter: RunningAdapter, client: OpenAI) -> None:
    whole = client.chat.completions.create(model="llm", messages=HELLO, max_tokens=10, temperature=0)
    async with AsyncOpenAI(base_url=f"{adapter.http_url}/v1", api_key="unused", max_retries=0) as sdk:
        stream = await sdk.chat.completions.create(
            model="llm",
            messages=HELLO,
            max_tokens=10,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content  # greedy: the same answer, whole or streamed
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1  # streamed, not one lump
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"]
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.completion_tokens == 10
    assert all(c.usage is None for c in chunks[:-1])
    assert len({c.id for c in chunks}) == 1


def test_the_stream_ends_with_done(adapter: RunningAdapter) -> None:
    body = {"model": "llm", "messages": HELLO, "max_tokens": 3, "stream": True}
    with httpx2.stream("POST", f"{adapter.http_url}/v1/chat/completions", json=body, timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line]
    assert events[-1] == "data: [DONE]"
    assert all(line.startswith("data: ") for line in events)


async def test_completions_whole_and_streamed(adapter: RunningAdapter, client: OpenAI) -> None:
    whole = client.completions.create(model="llm", prompt="def fibonacci(n):", max_tokens=8, temperature=0)
    assert whole.object == "text_completion" and whole.choices[0].finish_reason == "length"
    assert whole.usage is not None and whole.usage.completion_tokens == 8
    async with AsyncOpenAI(base_url=f"{adapter.http_url}/v1", api_key="unused", max_retries=0) as sdk:
        stream = await sdk.completions.create(
            model="llm",
            prompt="def fibonacci(n):",
            max_tokens=8,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 8


def test_stop_sequences_and_seed_are_honoured(client: OpenAI) -> None:
    free = client.chat.completions.create(model="llm", messages=HELLO, max_tokens=20, temperature=0)
    text = free.choices[0].message.content or ""
    stop = text[5:8]
    stopped = client.chat.completions.create(model="llm", messages=HELLO, max_tokens=20, temperature=0, stop=[stop])
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].message.content == text[: text.index(stop)]
    a, b = (
        client.chat.completions.create(model="llm", messages=HELLO, max_tokens=12, temperature=1.0, seed=7)
        for _ in range(2)
    )
    assert a.choices[0].message.content == b.choices[0].message.content


@pytest.mark.parametrize(
    ("options", "param", "words"),
    [
        ({"n": 2}, "n", "one choice"),
        ({"logprobs": True}, "logprobs", "log probabilities"),
        ({"functions": [{"name": "f"}]}, "functions", "send tools"),
        ({"top_p": 1.5}, "top_p", "(0, 1]"),
        ({"temperature": -1}, "temperature", "temperature"),
        ({"max_tokens": 0}, "max_tokens", "> 0"),
        ({"max_tokens": 10**6}, "max_tokens", "at most"),
        ({"presence_penalty": 3}, "presence_penalty", "presence_penalty"),
        ({"stop": [""]}, "stop", "empty"),
        ({"extra_body": {"best_of_n": 3}}, "best_of_n", "unrecognized"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role", "one of"),
        ({"messages": []}, "messages", "empty"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, None, "text"),
    ],
)
def test_options_that_cannot_be_honoured_are_refused_by_name(
    client: OpenAI, options: dict[str, object], param: str | None, words: str
) -> None:
    arguments: dict[str, object] = {"model": "llm", "messages": HELLO, "max_tokens": 4, **options}
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(**arguments)  # type: ignore[call-overload]
    error = raised.value
    assert error.status_code == 400
    assert words in error.message
    body = error.body
    assert isinstance(body, dict) and body["type"] == "invalid_request_error"
    if param is not None:
        assert body["param"] == param


def test_unknown_model_and_wrong_kind_of_model(client: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=HELLO)
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model="embedding", messages=HELLO, max_tokens=2)
    assert "cannot serve chat" in raised.value.message


def _wait_for_idle_model(metrics_url: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while metric_total(metrics_url, "llm_active_generations") > 0:
        assert time.monotonic() < deadline, "the model is still generating"
        time.sleep(0.05)


def test_a_stream_abandoned_mid_way_stops_generating_on_the_server(adapter: RunningAdapter) -> None:
    metrics = adapter.triton_metrics_url
    _wait_for_idle_model(metrics)
    cancelled_before = metric_total(metrics, "llm_generation_requests_total", finish_reason="cancelled")
    tokens_before = metric_total(metrics, "llm_generated_tokens_total")
    max_tokens = 4000  # ~10 s of work: only a real cancel ends it sooner
    with OpenAI(base_url=f"{adapter.http_url}/v1", api_key="unused", max_retries=0) as sdk:
        stream = sdk.chat.completions.create(model="llm", messages=HELLO, max_tokens=max_tokens, stream=True)
        chunks = iter(stream)
        assert [next(chunks), next(chunks), next(chunks)]
        abandoned_at = time.monotonic()
        stream.close()  # drops the connection mid-stream
    _wait_for_idle_model(metrics)
    assert time.monotonic() - abandoned_at < 5
    assert metric_total(metrics, "llm_generation_requests_total", finish_reason="cancelled") == cancelled_before + 1
    assert 0 < metric_total(metrics, "llm_generated_tokens_total") - tokens_before < max_tokens / 4
    # The adapter counted it as closed by the client.
    deadline = time.monotonic() + 5
    while _adapter_metric(adapter, "adapter_http_requests_total", route="/v1/chat/completions", status="499") < 1:
        assert time.monotonic() < deadline, "no 499 counted for the abandoned stream"
        time.sleep(0.05)


# ---- embeddings --------------------------------------------------------------------------------


def test_embeddings_float_and_base64_agree_and_match_grpc(client: OpenAI, stub: pb_grpc.InferenceServiceStub) -> None:
    texts = ["a cat sits on the mat", "a kitten rests on the rug"]
    as_floats = client.embeddings.create(model="embedding", input=texts, encoding_format="float")
    as_base64 = client.embeddings.create(model="embedding", input=texts, encoding_format="base64")
    decoded = [np.frombuffer(base64.b64decode(str(d.embedding)), dtype="<f4").tolist() for d in as_base64.data]
    assert [d.embedding for d in as_floats.data] == decoded  # the same float32 values, bit for bit
    # Without encoding_format the SDK asks for base64 itself and decodes it.
    sdk_default = client.embeddings.create(model="embedding", input=texts)
    assert [d.embedding for d in sdk_default.data] == decoded
    assert [d.index for d in as_floats.data] == [0, 1]
    assert len(as_floats.data[0].embedding) == 384
    assert as_floats.usage.prompt_tokens == as_floats.usage.total_tokens > 0
    # OpenAI's vectors have unit length; so do these, the same as GetEmbedding's with normalize.
    grpc_result = stub.GetEmbedding(pb.GetEmbeddingRequest(model="embedding", inputs=texts, normalize=True))
    for http_vector, grpc_vector in zip(as_floats.data, grpc_result.embeddings, strict=True):
        assert http_vector.embedding == pytest.approx(list(grpc_vector.values), abs=1e-6)
        assert sum(v * v for v in http_vector.embedding) == pytest.approx(1.0, abs=1e-4)
    assert as_floats.usage.prompt_tokens == grpc_result.usage.prompt_tokens
    one = client.embeddings.create(model="embedding", input="a cat sits on the mat")
    assert one.data[0].embedding == pytest.approx(as_floats.data[0].embedding, abs=1e-6)


def test_embedding_dimensions_only_as_the_model_makes_them(client: OpenAI) -> None:
    same = client.embeddings.create(model="embedding", input="hello", dimensions=384)
    assert len(same.data[0].embedding) == 384
    with pytest.raises(openai.BadRequestError) as raised:
        client.embeddings.create(model="embedding", input="hello", dimensions=128)
    assert raised.value.body["param"] == "dimensions"  # type: ignore[index]
    assert "384" in raised.value.message
    with pytest.raises(openai.BadRequestError) as raised:
        client.embeddings.create(model="embedding", input=["ok", " "])
    assert raised.value.body["param"] == "input[1]"  # type: ignore[index]


# ---- images ------------------------------------------------------------------------------------


def test_image_generation_answers_b64_json_when_the_job_is_done(client: OpenAI) -> None:
    result = client.images.generate(model="image", prompt="a red square", size="64x64", n=2, extra_body={"steps": 2})
    assert result.data is not None and len(result.data) == 2
    assert all(_png(d.b64_json or "") == (64, 64) for d in result.data)
    with pytest.raises(openai.BadRequestError) as raised:
        client.images.generate(model="image", prompt="x", size="60x64")
    assert raised.value.body["param"] == "size"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as raised:
        client.images.generate(model="image", prompt="x", response_format="url")
    assert raised.value.body["param"] == "response_format"  # type: ignore[index]


def test_image_edit_with_a_mask_is_multipart(client: OpenAI) -> None:
    result = client.images.edit(
        model="image",
        prompt="make it blue",
        image=("in.png", picture(96, 64), "image/png"),
        mask=("mask.png", mask(96, 64), "image/png"),
        extra_body={"steps": 4, "strength": 0.5},
    )
    assert result.data is not None and _png(result.data[0].b64_json or "") == (96, 64)
    with pytest.raises(openai.BadRequestError) as raised:
        client.images.edit(
            model="image",
            prompt="x",
            image=("in.png", picture(96, 64), "image/png"),
            mask=("mask.png", mask(32, 32), "image/png"),
        )
    assert "mask" in raised.value.message


def test_idempotency_key_returns_the_same_job_and_refuses_a_different_request(client: OpenAI) -> None:
    key = {"Idempotency-Key": uuid.uuid4().hex}
    request = {"model": "image", "prompt": "a lighthouse", "size": "64x64", "extra_body": {"steps": 2, "seed": None}}
    first = client.images.generate(**request, extra_headers=key)  # type: ignore[arg-type]
    again = client.images.generate(**request, extra_headers=key)  # type: ignore[arg-type]
    # No seed: a second job would paint other noise. The same key gives the same job's pictures.
    assert first.data and again.data and first.data[0].b64_json == again.data[0].b64_json
    assert first.created == again.created
    with pytest.raises(openai.ConflictError):
        client.images.generate(model="image", prompt="another picture", size="64x64", extra_headers=key)


def test_a_client_that_disconnects_cancels_its_image_job(
    adapter: RunningAdapter, stub: pb_grpc.InferenceServiceStub
) -> None:
    key = uuid.uuid4().hex
    body = {"model": "image", "prompt": "a long job", "size": "512x512", "steps": 150}
    done = threading.Event()

    def give_up_after_a_second() -> None:
        try:
            httpx2.post(
                f"{adapter.http_url}/v1/images/generations", json=body, headers={"Idempotency-Key": key}, timeout=1.5
            )
        except httpx2.TimeoutException:
            pass
        finally:
            done.set()

    threading.Thread(target=give_up_after_a_second, daemon=True).start()
    time.sleep(0.5)
    # The same request under the same key over gRPC: the same job (GenerateImage's request_id).
    job_id = stub.GenerateImage(
        pb.GenerateImageRequest(
            model="image",
            prompt="a long job",
            options=pb.ImageOptions(width=512, height=512, steps=150),
            request_id=key,
        )
    ).job_id
    assert done.wait(10)
    deadline = time.monotonic() + 10
    while (status := stub.CheckImageStatus(pb.CheckImageStatusRequest(job_id=job_id))).state != pb.JOB_STATE_FAILED:
        assert status.state != pb.JOB_STATE_SUCCEEDED, "the job ran to the end after its client left"
        assert time.monotonic() < deadline, f"the job is still {pb.JobState.Name(status.state)}"
        time.sleep(0.1)
    assert "disconnected" in status.error_message
    assert status.step < 150
    # The key is free again: a retry starts a new job instead of finding the cancelled one.
    retry = httpx2.post(
        f"{adapter.http_url}/v1/images/generations",
        json={**body, "size": "64x64", "steps": 1},
        headers={"Idempotency-Key": key},
        timeout=60,
    )
    assert retry.status_code == 200, retry.text


# ---- the front itself --------------------------------------------------------------------------


def test_errors_have_openai_shape_for_bad_bodies_and_routes(adapter: RunningAdapter) -> None:
    url = adapter.http_url
    bad_json = httpx2.post(
        f"{url}/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert bad_json.status_code == 400
    assert set(bad_json.json()["error"]) == {"message", "type", "param", "code"}
    missing = httpx2.post(f"{url}/v1/chat/completions", json={"messages": HELLO})
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "model"
    wrong_type = httpx2.post(
        f"{url}/v1/embeddings", json={"model": "embedding", "input": "x", "encoding_format": "hex"}
    )
    assert wrong_type.status_code == 400 and wrong_type.json()["error"]["param"] == "encoding_format"
    nowhere = httpx2.get(f"{url}/v1/nowhere")
    assert nowhere.status_code == 404 and nowhere.json()["error"]["type"] == "not_found_error"
    wrong_method = httpx2.delete(f"{url}/v1/models")
    assert wrong_method.status_code == 405 and "error" in wrong_method.json()


def test_health_and_openapi_are_served(adapter: RunningAdapter) -> None:
    assert httpx2.get(f"{adapter.http_url}/health").json() == {"status": "serving"}
    schema = httpx2.get(f"{adapter.http_url}/openapi.json").json()
    for path in ("/v1/models", "/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/images/edits"):
        assert path in schema["paths"]


def test_http_requests_are_counted_by_route_and_status(adapter: RunningAdapter, client: OpenAI) -> None:
    labels = {"route": "/v1/models/{model_id}", "method": "GET", "status": "404"}
    before = _adapter_metric(adapter, "adapter_http_requests_total", **labels)
    for name in ("nope-1", "nope-2"):
        with pytest.raises(openai.NotFoundError):
            client.models.retrieve(name)
    assert _adapter_metric(adapter, "adapter_http_requests_total", **labels) == before + 2
    body = httpx2.get(adapter.metrics_url).text
    assert "nope-1" not in body  # the template, never the raw path


def test_grpc_still_serves_beside_http(stub: pb_grpc.InferenceServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        stub.GetEmbedding(pb.GetEmbeddingRequest(model="embedding", inputs=[]))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_pictures_decode_as_png(client: OpenAI) -> None:
    result = client.images.generate(model="image", prompt="a square", size="64x64", extra_body={"steps": 1})
    assert result.data is not None
    with Image.open(io.BytesIO(base64.b64decode(result.data[0].b64_json or ""))) as image:
        assert image.format == "PNG"
