"""Requests that cannot be decoded (truncated protobuf, invalid UTF-8 in a string field), on any RPC,
unary or streaming, end their call with INVALID_ARGUMENT and a short message, logged as one WARNING
line without a traceback.

Left to grpc, a deserializer's DecodeError answers UNKNOWN with the exception's repr and logs a
traceback per request; inside a request stream read by a background task (ManageVRAM), it ended
that task and left the call open and silent. This interceptor gives every method a deserializer
that never raises (it returns an `Undecodable` marker), and ends the call when the handler meets
the marker: at once for a unary request; for a request stream when the marker is read, whichever
task reads it (the handler's own task is cancelled if another one did).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from adapter.core.errors import InvalidArgument
from adapter.grpc_front.handler_wrapping import Behavior, WrappingInterceptor, rewrap

log = logging.getLogger(__name__)


class Undecodable:
    """What the guarded deserializer returns for bytes that are not a valid request message."""

    __slots__ = ("method", "size", "reason")

    def __init__(self, method: str, size: int, reason: str) -> None:
        self.method, self.size, self.reason = method, size, reason

    @property
    def message(self) -> str:
        return (
            f"the request message could not be decoded as {self.method}'s request type ({self.size} bytes: "
            f"{self.reason}); check that client and server use the same inference.proto"
        )


class UndecodableRequest(InvalidArgument):
    """Raised into a handler that reads an undecodable message from its request stream."""


def _reason(err: Exception) -> str:
    text = str(err).strip() or type(err).__name__
    return text if len(text) <= 200 else text[:200] + "..."


def _guarded(deserializer: Callable[[bytes], Any] | None, method: str) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None
    name = method.rsplit("/", 1)[-1]

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as err:  # noqa: BLE001 - any failure to parse untrusted bytes: a bad request
            marker = Undecodable(name, len(data), _reason(err))
            log.warning("refused an undecodable %s request (%d bytes): %s", method, len(data), marker.reason)
            return marker

    return deserialize


class DecodeGuard(WrappingInterceptor):
    def wrap(self, handler: Any, method: str) -> Any:
        deserializer = _guarded(handler.request_deserializer, method)
        if handler.request_streaming:
            return rewrap(handler, _stream_coroutine, _stream_generator, request_deserializer=deserializer)
        return rewrap(handler, _unary_coroutine, _unary_generator, request_deserializer=deserializer)


# ---- unary requests: refuse before the handler runs -------------------------------------------------


def _unary_coroutine(behavior: Behavior) -> Behavior:
    async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if isinstance(request, Undecodable):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        return await behavior(request, context)

    return guarded


def _unary_generator(behavior: Callable[[Any, Any], Any]) -> Behavior:
    async def guarded(request: Any, context: grpc.aio.ServicerContext) -> None:
        if isinstance(request, Undecodable):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        responses = behavior(request, context)
        try:
            async for response in responses:
                await context.write(response)
        finally:
            await responses.aclose()

    return guarded


# ---- request streams: end the call when the marker is read ------------------------------------------


class _Watch:
    """One call's request stream, checked message by message."""

    def __init__(self) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.handler_task = task
        self.refused: Undecodable | None = None

    async def messages(self, requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
        async for request in requests:
            if isinstance(request, Undecodable):
                self.refused = request
                if asyncio.current_task() is not self.handler_task:
                    # Read by a task of the handler's own: the handler might never hear of it.
                    self.handler_task.cancel()
                raise UndecodableRequest(request.message)
            yield request

    async def refuse(self, context: grpc.aio.ServicerContext) -> None:
        assert self.refused is not None
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, self.refused.message)


def _stream_coroutine(behavior: Behavior) -> Behavior:
    async def guarded(requests: Any, context: grpc.aio.ServicerContext) -> Any:
        watch = _Watch()
        try:
            return await behavior(watch.messages(requests), context)
        except (UndecodableRequest, asyncio.CancelledError):
            if watch.refused is None:
                raise
            await watch.refuse(context)

    return guarded


def _stream_generator(behavior: Callable[[Any, Any], Any]) -> Behavior:
    async def guarded(requests: Any, context: grpc.aio.ServicerContext) -> None:
        watch = _Watch()
        responses = behavior(watch.messages(requests), context)
        try:
            async for response in responses:
                await context.write(response)
        except (UndecodableRequest, asyncio.CancelledError):
            if watch.refused is None:
                raise
            await responses.aclose()
            await watch.refuse(context)
        finally:
            await responses.aclose()

    return guarded
