"""What every HTTP request passes through, as one plain ASGI middleware (no per-request objects
beyond a task): metrics by route and status, the concurrency limit, the API key, the body size
limit, and cancelling the request's work when its client disconnects.

A client that goes away cancels its handler's task: a streamed chat's Triton request, a pending
embedding, the wait for an image job (which then cancels the job) all end at once, as a cancelled
gRPC call's do. uvicorn silently drops what is sent to a closed connection, so only this watch on
`receive` can tell.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Coroutine, MutableMapping
from typing import Any

from starlette.exceptions import HTTPException
from starlette.routing import BaseRoute, Match

from adapter.core.access import ApiKeys
from adapter.metrics import AdapterMetrics
from adapter.openai_front.errors import STATUS, body

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Coroutine[Any, Any, None]]
App = Callable[[Scope, Receive, Send], Coroutine[Any, Any, None]]

OPEN_PATHS = frozenset({"/health"})  # probes carry no key
HOW_TO_SEND = "`Authorization: Bearer <key>` (or `x-api-key: <key>`)"
CLIENT_CLOSED = 499
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})  # others: one label


class BodyTooLarge(HTTPException):
    """Raised from `receive` when a body without Content-Length grows past the limit (an
    HTTPException, so FastAPI's body parsing lets it through to the 413 handler)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than {limit} bytes (OPENAI_HTTP_MAX_BODY_BYTES)")


def presented_key(headers: list[tuple[bytes, bytes]]) -> str | None:
    bearer = None
    for name, value in headers:
        if name == b"x-api-key":
            return value.decode("latin-1").strip()
        if name == b"authorization":
            scheme, _, credentials = value.decode("latin-1").strip().partition(" ")
            if scheme.lower() == "bearer" and credentials.strip():
                bearer = credentials.strip()
    return bearer


async def send_error(send: Send, status: int, message: str, code: str) -> None:
    error_type = next((kind for s, kind in STATUS.values() if s == status), "invalid_request_error")
    payload = json.dumps(body(message, error_type, None, code)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b'Bearer realm="inference"'))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


class Gate:
    def __init__(
        self,
        app: App,
        routes: list[BaseRoute],
        keys: ApiKeys,
        metrics: AdapterMetrics,
        max_body_bytes: int,
        max_concurrent: int,
    ) -> None:
        self._app = app
        self._routes = routes
        self._keys = keys
        self._metrics = metrics
        self._max_body = max_body_bytes
        self._max_concurrent = max_concurrent
        self._active = 0
        self._labels: dict[tuple[str, str], str] = {}  # (method, path) -> route template, for known paths

    def _route(self, scope: Scope) -> str:
        """The route template the path matches ("/v1/models/{model_id}"), so clients cannot invent
        label values; "unmatched" for any other path."""
        key = (scope["method"], scope["path"])
        label = self._labels.get(key)
        if label is None:
            label = "unmatched"
            for route in self._routes:
                match, _ = route.matches(scope)
                if match is not Match.NONE:
                    label = getattr(route, "path", "unmatched")
                    break
            if label != "unmatched" and "{" not in label and len(self._labels) < 1024:
                self._labels[key] = label
        return label

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        started = time.perf_counter()
        route = self._route(scope)
        status = [500]  # what the client was sent (the last element)

        async def recording_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self._serve(scope, receive, recording_send, status)
        finally:
            method = scope["method"] if scope["method"] in KNOWN_METHODS else "OTHER"
            self._metrics.http_request(route, method, status[0], time.perf_counter() - started)

    async def _serve(self, scope: Scope, receive: Receive, send: Send, status: list[int]) -> None:
        if self._active >= self._max_concurrent:
            await send_error(
                send,
                429,
                f"{self._active} requests are being served, the most at once (OPENAI_HTTP_MAX_CONCURRENT_REQUESTS); "
                "retry later",
                "resource_exhausted",
            )
            return
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        if scope["path"] not in OPEN_PATHS:
            refusal = self._keys.check(scope["path"], False, presented_key(headers), HOW_TO_SEND)
            if refusal is not None:
                http_status = STATUS[refusal.code][0]
                await send_error(send, http_status, refusal.message, refusal.code.value.lower())
                return
        for name, value in headers:
            if name == b"content-length" and value.isdigit() and int(value) > self._max_body:
                await send_error(
                    send,
                    413,
                    f"the request body is {int(value)} bytes; the limit is {self._max_body}"
                    " (OPENAI_HTTP_MAX_BODY_BYTES)",
                    "request_too_large",
                )
                return
        self._active += 1
        try:
            await self._until_disconnected(scope, receive, send, status)
        finally:
            self._active -= 1

    async def _until_disconnected(self, scope: Scope, receive: Receive, send: Send, status: list[int]) -> None:
        """Runs the app in a task of its own and cancels it if the client disconnects first."""
        received = 0
        body_done = False
        responded = False
        gone = asyncio.Event()

        async def app_receive() -> Message:
            nonlocal received, body_done
            if body_done:  # the app asks again after the body (to watch for a disconnect): the watcher's
                await gone.wait()
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self._max_body:
                    raise BodyTooLarge(self._max_body)
                if not message.get("more_body", False):
                    body_done = True
                    watching.set()
            else:
                gone.set()
            return message

        async def app_send(message: Message) -> None:
            nonlocal responded
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                responded = True  # the response is complete: a "disconnect" after it is the normal end
            await send(message)

        watching = asyncio.Event()
        handler = asyncio.get_running_loop().create_task(self._app(scope, app_receive, app_send))

        async def watch() -> None:
            await watching.wait()
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    gone.set()
                    if not responded:
                        handler.cancel()
                    return

        watcher = asyncio.get_running_loop().create_task(watch())
        try:
            await asyncio.wait([handler])
        except asyncio.CancelledError:  # the server is shutting down past its grace period
            handler.cancel()
            await asyncio.wait([handler])
            raise
        finally:
            watcher.cancel()
        if handler.cancelled():
            status[0] = CLIENT_CLOSED if gone.is_set() else status[0]
            return
        handler.result()  # the app's own failure (starlette has answered 500 already)
