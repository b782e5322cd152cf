"""GetEmbedding: validate, make sure the model is loaded, embed, return vectors in input order."""

from __future__ import annotations

from adapter import validation
from adapter.config import Settings
from adapter.gen.inference.v1 import inference_pb2 as pb
from adapter.triton_gateway import TritonGateway


class EmbeddingService:
    def __init__(self, gateway: TritonGateway, settings: Settings) -> None:
        self._gateway = gateway
        self._max_inputs = settings.embedding_max_inputs
        self._max_total_chars = settings.embedding_max_total_chars

    async def embed(self, request: pb.GetEmbeddingRequest) -> pb.GetEmbeddingResponse:
        model = validation.require_model(request.model)
        inputs = validation.embedding_inputs(request.inputs, self._max_inputs, self._max_total_chars)
        await self._gateway.ensure_loaded(model)
        rows = await self._gateway.embed(model, inputs, request.normalize)
        prompt_tokens = int(rows.token_counts.sum())
        return pb.GetEmbeddingResponse(
            model=model,
            dimension=int(rows.vectors.shape[1]),
            embeddings=[
                pb.Embedding(index=i, values=vector, tokens=int(tokens), truncated=bool(cut))
                for i, (vector, tokens, cut) in enumerate(
                    zip(rows.vectors.tolist(), rows.token_counts, rows.truncated, strict=True)
                )
            ],
            usage=pb.Usage(prompt_tokens=prompt_tokens, total_tokens=prompt_tokens),
        )
