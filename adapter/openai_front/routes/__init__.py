"""The routes, one module per API area; what they share is here."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException

from adapter.core.services import CoreServices
from adapter.openai_front import convert
from adapter.openai_front import schemas as s
from adapter.openai_front.errors import translate


def services(request: Request) -> CoreServices:
    """The core's services (a FastAPI dependency)."""
    core: CoreServices = request.app.state.services
    return core


# Documented on every route, so that a client (and schemathesis) knows each status it may get.
ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": s.ErrorResponse, "description": description}
    for status, description in (
        (400, "a field is missing, out of range, or asks for what this server cannot do (named in `param`)"),
        (401, "no API key, or a wrong one"),
        (404, "no such model (or route)"),
        (409, "an Idempotency-Key already used by a different request"),
        (413, "the body is larger than OPENAI_HTTP_MAX_BODY_BYTES"),
        (429, "a queue is full, too many requests at once, or the model does not fit the memory budget"),
        (500, "a failure in the adapter, Triton or the model (the message carries an incident id)"),
        (503, "Triton is unreachable or the adapter is shutting down: retry"),
        (504, "the request took too long"),
    )
}


# Each route's fields: a core message that starts with one of them names it as OpenAI's `param`.
FIELDS: dict[str, frozenset[str]] = {
    "/v1/chat/completions": frozenset(s.ChatCompletionRequest.model_fields),
    "/v1/completions": frozenset(s.CompletionRequest.model_fields),
    "/v1/embeddings": frozenset(s.EmbeddingRequest.model_fields),
    "/v1/images/generations": frozenset(s.ImageGenerationRequest.model_fields),
    "/v1/images/edits": s.IMAGE_EDIT_FIELDS,
    "/v1/models/{model_id}": frozenset({"model"}),
}


def _core_names_to_openai(path: str) -> Callable[[str], str]:
    """The core names fields as gRPC's messages do; OpenAI's names for them on this route."""
    if path == "/v1/embeddings":
        return lambda message: "input" + message[len("inputs") :] if message.startswith("inputs") else message
    if path.startswith("/v1/images/"):
        return convert.rename_image_fields
    if path == "/v1/chat/completions":
        return convert.rename_chat_fields
    return lambda message: message


class OpenAIRoute(APIRoute):
    """Every route's failures become OpenAI's error body (errors.translate), in the route's own
    field names; validation errors and HTTP errors go to the app's handlers (app.py)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        fields = FIELDS.get(self.path, frozenset())
        rename = _core_names_to_openai(self.path)
        where = f"{'/'.join(sorted(self.methods or ()))} {self.path}"

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except (HTTPException, RequestValidationError):
                raise
            except Exception as err:  # noqa: BLE001 - mapped, never leaked
                status, payload = translate(err, where, fields, rename)
                return JSONResponse(payload, status)

        return route
