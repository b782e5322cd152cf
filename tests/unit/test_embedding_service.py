"""The embedding service's bounded queue, with a gateway that holds requests until released."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace

import numpy as np
import pytest

from adapter.config import Settings
from adapter.core.embedding import EmbeddingService
from adapter.core.errors import ResourceExhausted
from adapter.gen.inference.v1 import inference_pb2 as pb
from adapter.triton.types import EmbeddingRows


class HeldGateway:
    """Answers embed() only when `release` is set; counts what reached it."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.calls = 0

    async def embed(self, model: str, texts: list[str], normalize: bool) -> EmbeddingRows:
        self.calls += 1
        await self.release.wait()
        n = len(texts)
        return EmbeddingRows(
            vectors=np.ones((n, 3), dtype=np.float32),
            token_counts=np.full(n, 2, dtype=np.int32),
            truncated=np.zeros(n, dtype=bool),
        )


class AlwaysLoaded:
    """A scheduler whose models are always loaded."""

    @contextlib.asynccontextmanager
    async def use(self, model: str, keep_alive: object = "default") -> AsyncIterator[float]:
        yield 0.0


def _request(n: int) -> pb.GetEmbeddingRequest:
    return pb.GetEmbeddingRequest(model="embedding", inputs=[f"text {i}" for i in range(n)])


async def test_past_the_pending_limit_requests_are_refused_and_the_queue_frees_up_after() -> None:
    gateway = HeldGateway()
    service = EmbeddingService(gateway, AlwaysLoaded(), replace(Settings(), embedding_max_pending_inputs=5))  # type: ignore[arg-type]
    first = asyncio.create_task(service.embed(_request(3)))
    second = asyncio.create_task(service.embed(_request(2)))
    await asyncio.sleep(0)
    with pytest.raises(ResourceExhausted, match="EMBEDDING_MAX_PENDING_INPUTS"):
        await service.embed(_request(1))
    assert gateway.calls == 2  # the refused request never reached Triton

    gateway.release.set()
    done = await asyncio.gather(first, second)
    assert [len(r.embeddings) for r in done] == [3, 2]
    assert len((await service.embed(_request(5))).embeddings) == 5  # capacity is back


async def test_a_failed_request_gives_its_place_back() -> None:
    gateway = HeldGateway()

    async def failing_embed(model: str, texts: list[str], normalize: bool) -> EmbeddingRows:
        raise RuntimeError("triton went away")

    gateway.embed = failing_embed  # type: ignore[method-assign]
    service = EmbeddingService(gateway, AlwaysLoaded(), replace(Settings(), embedding_max_pending_inputs=4))  # type: ignore[arg-type]
    for _ in range(3):
        with pytest.raises(RuntimeError):
            await service.embed(_request(4))
