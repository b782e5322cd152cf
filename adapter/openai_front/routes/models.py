"""GET /v1/models and /v1/models/{model_id}: every model of Triton's repository, whatever its state."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from adapter.core import types as t
from adapter.core.services import CoreServices
from adapter.openai_front import schemas as s
from adapter.openai_front.routes import ERRORS, OpenAIRoute, services

router = APIRouter(route_class=OpenAIRoute)
OWNER = "inference-platform"


def _model(model: t.ModelDescription) -> dict[str, Any]:
    return {
        "id": model.id,
        "object": "model",
        "created": int(model.created),
        "owned_by": OWNER,
        "state": model.state.value,
    }


@router.get("/v1/models", response_model=None, responses={200: {"model": s.ModelList}, **ERRORS})
async def list_models(core: CoreServices = Depends(services)) -> JSONResponse:  # noqa: B008 - FastAPI's idiom
    return JSONResponse({"object": "list", "data": [_model(m) for m in await core.models.list()]})


@router.get("/v1/models/{model_id}", response_model=None, responses={200: {"model": s.Model}, **ERRORS})
async def get_model(model_id: str, core: CoreServices = Depends(services)) -> JSONResponse:  # noqa: B008
    return JSONResponse(_model(await core.models.get(model_id)))
