"""POST /v1/chat/completions and /v1/completions, whole or streamed as server-sent events.

A stream's first delta is awaited before the response starts, so a request the core refuses (an
unknown model, max_tokens past the model's limit) gets its HTTP status; a failure after that
comes as an `error` event and ends the stream (the status line is sent by then)."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, cast

from fastapi import APIRouter, Depends, Response
from fastapi.responses import JSONResponse

from adapter.core import errors
from adapter.core import types as t
from adapter.core.services import CoreServices
from adapter.openai_front import convert
from adapter.openai_front import schemas as s
from adapter.openai_front.errors import translate
from adapter.openai_front.routes import ERRORS, OpenAIRoute, services

router = APIRouter(route_class=OpenAIRoute)

SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),  # proxies (nginx) pass events on as they come
]


def _documented(model: type) -> dict[int | str, dict[str, Any]]:
    return {
        200: {
            "model": model,
            "description": "the whole answer; with `stream: true`, server-sent events ending in `data: [DONE]`",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        },
        **ERRORS,
    }


@router.post("/v1/chat/completions", response_model=None, responses=_documented(s.ChatCompletion))
async def chat_completions(
    body: s.ChatCompletionRequest,
    core: CoreServices = Depends(services),  # noqa: B008 - FastAPI's idiom
) -> Response:
    request, include_usage = convert.chat_request(body)  # tools, tool_choice, response_format included
    return await _respond(core.text.chat(request, options_prefix=""), "chat", bool(body.stream), include_usage)


@router.post("/v1/completions", response_model=None, responses=_documented(s.Completion))
async def completions(
    body: s.CompletionRequest,
    core: CoreServices = Depends(services),  # noqa: B008
) -> Response:
    request, include_usage = convert.completion_request(body)
    deltas = core.text.generate(request, options_prefix="")
    return await _respond(deltas, "completion", bool(body.stream), include_usage)


async def _respond(deltas: AsyncIterator[t.TextDelta], kind: str, stream: bool, include_usage: bool) -> Response:
    generator = cast(AsyncGenerator[t.TextDelta, None], deltas)
    try:
        first = await anext(generator)
        if stream:
            return EventStream(generator, first, convert.ChunkWriter(kind, first.model, include_usage))
        texts, last = [first.text], first
        calls = convert.ToolCallAssembler()
        calls.add(first.tool_calls)
        while last.finish is None:
            last = await anext(generator)
            texts.append(last.text)
            calls.add(last.tool_calls)
    except StopAsyncIteration:
        raise errors.Internal("the model's stream ended without a finish") from None
    except BaseException:
        await generator.aclose()
        raise
    await generator.aclose()
    if kind == "chat":
        return JSONResponse(convert.chat_completion(last.model, "".join(texts), calls.calls(), last.finish))
    return JSONResponse(convert.completion(last.model, "".join(texts), last.finish))


class EventStream(Response):
    """The stream's events, each sent as the core yields its delta. A client that disconnects
    cancels this (gate.py), and closing the core's generator cancels the Triton request."""

    def __init__(
        self, deltas: AsyncGenerator[t.TextDelta, None], first: t.TextDelta, writer: convert.ChunkWriter
    ) -> None:
        super().__init__(media_type="text/event-stream")
        self._deltas, self._first, self._writer = deltas, first, writer

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        writer = self._writer
        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
        try:
            delta = self._first
            events = writer.opening()
            while True:
                if delta.text:
                    events += writer.text(delta.text)
                if delta.tool_calls:
                    events += writer.tool_calls(delta.tool_calls)
                if delta.finish is not None:
                    events += writer.finish(delta.finish)
                await send({"type": "http.response.body", "body": events, "more_body": True})
                if delta.finish is not None:
                    break
                delta = await anext(self._deltas)
                events = b""
        except Exception as err:  # noqa: BLE001 - the status is sent: the error goes as an event
            _, payload = translate(err, f"{writer.kind} stream")
            await send({"type": "http.response.body", "body": writer.error(payload), "more_body": True})
        finally:
            await self._deltas.aclose()
        await send({"type": "http.response.body", "body": b"", "more_body": False})
