"""Builds the ASGI app: FastAPI's routes (its OpenAPI schema at /openapi.json) inside the gate
(gate.py: metrics, limits, API key, disconnects)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from adapter.core.access import ApiKeys
from adapter.core.services import CoreServices
from adapter.metrics import AdapterMetrics
from adapter.openai_front import schemas as s
from adapter.openai_front.errors import STATUS, body
from adapter.openai_front.gate import Gate
from adapter.openai_front.routes import embeddings, images, models, text

TITLE = "inference-platform: OpenAI-compatible API"


def _location(loc: tuple[Any, ...]) -> str:
    """pydantic's location as OpenAI's param: ("body", "messages", 0, "role") -> messages[0].role."""
    out = ""
    for part in loc:
        if part in ("body", "form", "header", "query", "path") and not out:
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        elif not out:
            out = str(part)
        elif str(part).startswith(("function-", "tagged-union")) or part in ("str", "list[str]", "int", "float"):
            continue  # pydantic's name for a member of a union, not a field
        else:
            out += f".{part}"
    return out


def _validation_error(_request: Request, err: Exception) -> JSONResponse:
    assert isinstance(err, RequestValidationError)
    first = err.errors()[0]
    param = _location(tuple(first.get("loc", ())))
    kind = first.get("type", "")
    if kind == "extra_forbidden":
        message = f"unrecognized request argument: {param}"
    elif kind == "missing":
        message = f"{param} is required"
    elif kind.startswith("json"):
        message, param = f"the body is not valid JSON: {first.get('msg', '')}", ""
    else:
        got = repr(first.get("input"))[:80]
        message = f"{param or 'the body'}: {first.get('msg', 'is not valid')}; got {got}"
    more = len(err.errors()) - 1
    if more:
        message += f" (and {more} more problem{'s' if more > 1 else ''})"
    return JSONResponse(body(message, "invalid_request_error", param or None, "invalid_argument"), 400)


def _http_error(_request: Request, err: Exception) -> JSONResponse:
    assert isinstance(err, HTTPException)
    error_type = next((kind for status, kind in STATUS.values() if status == err.status_code), None)
    if error_type is None:
        error_type = "invalid_request_error" if err.status_code < 500 else "server_error"
    detail = err.detail if isinstance(err.detail, str) else str(err.detail)
    if err.status_code == 404:
        detail = "no such route; this server offers /v1/models, /v1/chat/completions, /v1/completions, " + (
            "/v1/embeddings, /v1/images/generations and /v1/images/edits"
        )
    elif err.status_code == 405:
        detail = f"{detail}: see /openapi.json for each route's method"
    return JSONResponse(body(detail, error_type, None, None), err.status_code, headers=err.headers)


def _multipart_as_sent(schema: dict[str, Any]) -> dict[str, Any]:
    """Multipart bodies as a client sends them: a part is there or not, never null (FastAPI writes
    optional form fields as `anyOf [..., null]`), and no part beyond the declared ones."""
    components = schema.get("components", {}).get("schemas", {})
    for path in schema.get("paths", {}).values():
        for operation in path.values():
            content = operation.get("requestBody", {}).get("content", {})
            ref = content.get("multipart/form-data", {}).get("schema", {}).get("$ref", "")
            form = components.get(ref.rsplit("/", 1)[-1])
            if form is None:
                continue
            form["additionalProperties"] = False
            for field in form.get("properties", {}).values():
                kinds = [kind for kind in field.pop("anyOf", []) if kind.get("type") != "null"]
                if kinds:
                    field.update(kinds[0])
    return schema


def build_app(
    services: CoreServices,
    keys: ApiKeys,
    metrics: AdapterMetrics,
    serving: Callable[[], bool],
    max_body_bytes: int,
    max_concurrent: int,
) -> Gate:
    app = FastAPI(title=TITLE, version="1", docs_url=None, redoc_url=None, openapi_url="/openapi.json")
    app.state.services = services
    for module in (models, text, embeddings, images):
        app.include_router(module.router)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _multipart_as_sent(
                get_openapi(title=app.title, version=app.version, routes=app.routes)
            )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.get("/health", responses={200: {"model": s.Health}, 503: {"model": s.Health}})
    async def health() -> JSONResponse:
        """For probes (no API key): 200 while Triton serves, 503 otherwise."""
        up = serving()
        return JSONResponse({"status": "serving" if up else "not_serving"}, 200 if up else 503)

    # The routes themselves, for the metrics' route label (FastAPI wraps included routers in objects of its own).
    routes = [r for module in (models, text, embeddings, images) for r in module.router.routes]
    routes += [r for r in app.routes if hasattr(r, "path")]
    return Gate(app, routes, keys, metrics, max_body_bytes, max_concurrent)
