"""GetEmbedding: validate, make sure the model is loaded, embed, return vectors in input order."""

from __future__ import annotations

from adapter.config import Settings
from adapter.core import types as t
from adapter.core import validation
from adapter.core.errors import ResourceExhausted
from adapter.scheduling.scheduler import Scheduler
from adapter.triton.gateway import TritonGateway


class EmbeddingService:
    def __init__(self, gateway: TritonGateway, scheduler: Scheduler, settings: Settings) -> None:
        self._gateway = gateway
        self._scheduler = scheduler
        self._max_inputs = settings.embedding_max_inputs
        self._max_total_chars = settings.embedding_max_total_chars
        self._max_pending = settings.embedding_max_pending_inputs
        self._pending = 0  # inputs of requests now waiting for or inside Triton

    async def embed(self, request: t.EmbeddingRequest) -> t.EmbeddingResult:
        model = validation.require_model(request.model, "embedding")
        inputs = validation.embedding_inputs(request.inputs, self._max_inputs, self._max_total_chars)
        if self._pending + len(inputs) > self._max_pending:
            raise ResourceExhausted(
                f"the embedding queue is full ({self._pending} inputs pending, limit "
                f"{self._max_pending} = EMBEDDING_MAX_PENDING_INPUTS); retry later"
            )
        self._pending += len(inputs)
        try:
            async with self._scheduler.use(model, request.keep_alive):
                rows = await self._gateway.embed(model, inputs, request.normalize)
        finally:
            self._pending -= len(inputs)
        prompt_tokens = int(rows.token_counts.sum())
        return t.EmbeddingResult(
            model=model,
            dimension=int(rows.vectors.shape[1]),
            embeddings=[
                t.Embedding(index=i, values=vector, tokens=int(tokens), truncated=bool(cut))
                for i, (vector, tokens, cut) in enumerate(
                    zip(rows.vectors.tolist(), rows.token_counts, rows.truncated, strict=True)
                )
            ],
            usage=t.Usage(prompt_tokens=prompt_tokens),
        )
