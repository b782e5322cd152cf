"""GetEmbedding end to end: adapter -> embedded Triton (dynamic batching) -> all-MiniLM-L6-v2."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest

from adapter.gen.inference.v1 import inference_pb2 as pb
from adapter.gen.inference.v1 import inference_pb2_grpc as pb_grpc
from tests.harness import RunningAdapter

TEXTS = [
    "a cat sits on the mat",
    "a kitten rests on the rug",
    "quarterly tax filing deadline",
    "The quick brown fox jumps over the lazy dog.",
    "Triton batches requests dynamically.",
    "short",
]


def embed(stub: pb_grpc.InferenceServiceStub, texts: list[str], normalize: bool = False) -> pb.GetEmbeddingResponse:
    request = pb.GetEmbeddingRequest(model="embedding", inputs=texts, normalize=normalize)
    return stub.GetEmbedding(request, timeout=60)


def vectors(response: pb.GetEmbeddingResponse) -> np.ndarray:
    return np.array([e.values for e in response.embeddings], dtype=np.float32)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_one_vector_per_input_in_order_with_dimension_and_usage(stub: pb_grpc.InferenceServiceStub) -> None:
    response = embed(stub, TEXTS)
    assert response.model == "embedding"
    assert response.dimension == 384
    assert [e.index for e in response.embeddings] == list(range(len(TEXTS)))
    assert all(len(e.values) == 384 for e in response.embeddings)
    assert all(e.tokens > 2 and not e.truncated for e in response.embeddings)
    assert response.usage.prompt_tokens == sum(e.tokens for e in response.embeddings)


def test_a_batch_equals_the_same_inputs_sent_one_by_one(stub: pb_grpc.InferenceServiceStub) -> None:
    batched = vectors(embed(stub, TEXTS))
    single = np.concatenate([vectors(embed(stub, [text])) for text in TEXTS])
    np.testing.assert_allclose(batched, single, atol=1e-5)


def test_more_inputs_than_the_model_batch_is_split_and_kept_in_order(stub: pb_grpc.InferenceServiceStub) -> None:
    texts = [f"sentence number {i} about {TEXTS[i % len(TEXTS)]}" for i in range(150)]  # max_batch_size is 64
    many = vectors(embed(stub, texts))
    assert many.shape == (150, 384)
    for i in (0, 63, 64, 127, 128, 149):
        np.testing.assert_allclose(many[i], vectors(embed(stub, [texts[i]]))[0], atol=1e-5)


def test_normalize_gives_unit_vectors_and_raw_vectors_are_not(stub: pb_grpc.InferenceServiceStub) -> None:
    norms = np.linalg.norm(vectors(embed(stub, TEXTS, normalize=True)), axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-5)
    raw_norms = np.linalg.norm(vectors(embed(stub, TEXTS, normalize=False)), axis=1)
    assert not np.allclose(raw_norms, 1.0, atol=1e-3)


def test_similar_sentences_are_closer_than_unrelated_ones(stub: pb_grpc.InferenceServiceStub) -> None:
    cat, kitten, tax = vectors(embed(stub, TEXTS[:3], normalize=True))
    assert cosine(cat, kitten) > cosine(cat, tax) + 0.2


def test_over_long_input_is_truncated_at_the_model_maximum(stub: pb_grpc.InferenceServiceStub) -> None:
    response = embed(stub, ["word " * 2000, "short text"])
    long, short = response.embeddings
    assert long.truncated and long.tokens == 256  # all-MiniLM-L6-v2's max_seq_length
    assert not short.truncated and short.tokens < 10


async def test_input_order_is_kept_under_32_concurrent_clients(adapter: RunningAdapter) -> None:
    async with grpc.aio.insecure_channel(adapter.address) as channel:
        stub = pb_grpc.InferenceServiceStub(channel)

        async def one(client: int) -> tuple[list[str], np.ndarray]:
            texts = [f"client {client} text {j}: {TEXTS[(client + j) % len(TEXTS)]}" for j in range(1 + client % 5)]
            response = await stub.GetEmbedding(pb.GetEmbeddingRequest(model="embedding", inputs=texts), timeout=120)
            return texts, vectors(response)

        results = await asyncio.gather(*(one(client) for client in range(32)))
        reference = {}
        for texts, _ in results:
            for text in texts:
                reference[text] = None
        all_texts = list(reference)
        truth = vectors(
            await stub.GetEmbedding(pb.GetEmbeddingRequest(model="embedding", inputs=all_texts), timeout=120)
        )
        expected = dict(zip(all_texts, truth, strict=True))
        for texts, got in results:
            np.testing.assert_allclose(got, np.array([expected[t] for t in texts]), atol=1e-5)


@pytest.mark.parametrize(
    ("request_", "needle"),
    [
        (pb.GetEmbeddingRequest(model="embedding"), "inputs"),
        (pb.GetEmbeddingRequest(model="embedding", inputs=["ok", ""]), "inputs[1]"),
        (pb.GetEmbeddingRequest(model="embedding", inputs=["ok", "   "]), "inputs[1]"),
        (pb.GetEmbeddingRequest(model="embedding", inputs=["x"] * 257), "EMBEDDING_MAX_INPUTS"),
        (pb.GetEmbeddingRequest(model="embedding", inputs=["x" * 600_000, "y" * 600_000]), "EMBEDDING_MAX_TOTAL_CHARS"),
        (pb.GetEmbeddingRequest(model="", inputs=["x"]), "model"),
    ],
    ids=["no-inputs", "empty-string", "blank-string", "too-many", "too-long", "no-model"],
)
def test_invalid_embedding_request_names_the_problem(
    stub: pb_grpc.InferenceServiceStub, request_: pb.GetEmbeddingRequest, needle: str
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stub.GetEmbedding(request_, timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert needle in caught.value.details()


def test_unknown_embedding_model_is_not_found(stub: pb_grpc.InferenceServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stub.GetEmbedding(pb.GetEmbeddingRequest(model="no-such-embedder", inputs=["x"]), timeout=30)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
