"""POST /v1/embeddings: one vector per input, as floats or base64, in input order."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from adapter.core.services import CoreServices
from adapter.openai_front import convert
from adapter.openai_front import schemas as s
from adapter.openai_front.errors import unsupported
from adapter.openai_front.routes import ERRORS, OpenAIRoute, services

router = APIRouter(route_class=OpenAIRoute)


@router.post("/v1/embeddings", response_model=None, responses={200: {"model": s.EmbeddingList}, **ERRORS})
async def embeddings(
    body: s.EmbeddingRequest,
    core: CoreServices = Depends(services),  # noqa: B008 - FastAPI's idiom
) -> JSONResponse:
    result = await core.embedding.embed(convert.embedding_request(body))
    # The models here cannot shorten their vectors: only their own dimension is honoured.
    if body.dimensions is not None and body.dimensions != result.dimension:
        raise unsupported(
            "dimensions",
            f"model {result.model!r} makes {result.dimension}-dimensional vectors and cannot shorten them "
            f"(got {body.dimensions}); leave dimensions out or send {result.dimension}",
        )
    return JSONResponse(convert.embedding_list(result, body.encoding_format or "float"))
