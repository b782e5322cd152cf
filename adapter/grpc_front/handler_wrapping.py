"""What the adapter's server interceptors share: wrapping a method's handler once, and keeping its
kind (unary or streaming, each way) and (de)serializers."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

Behavior = Callable[[Any, Any], Awaitable[Any]]
_KEEP: Any = object()  # rewrap's default: the handler keeps its request deserializer


def rewrap(
    handler: Any,
    wrap_coroutine: Callable[[Any], Behavior],
    wrap_generator: Callable[[Any], Behavior],
    request_deserializer: Any = _KEEP,
) -> Any:
    """The same handler with its behavior wrapped: `wrap_coroutine` for a coroutine (a unary response,
    or a stream written with context.write), `wrap_generator` for an async generator of responses.
    Synchronous handlers (none of ours) are returned as they are. `request_deserializer`, when given,
    replaces the handler's."""
    if handler.request_streaming and handler.response_streaming:
        behavior, build = handler.stream_stream, grpc.stream_stream_rpc_method_handler
    elif handler.request_streaming:
        behavior, build = handler.stream_unary, grpc.stream_unary_rpc_method_handler
    elif handler.response_streaming:
        behavior, build = handler.unary_stream, grpc.unary_stream_rpc_method_handler
    else:
        behavior, build = handler.unary_unary, grpc.unary_unary_rpc_method_handler
    # Same tests grpc uses to pick how to run a handler.
    if inspect.iscoroutinefunction(behavior):
        wrapped = wrap_coroutine(behavior)
    elif handler.response_streaming and inspect.isasyncgenfunction(behavior):
        wrapped = wrap_generator(behavior)
    else:
        return handler
    if request_deserializer is _KEEP:
        request_deserializer = handler.request_deserializer
    return build(wrapped, request_deserializer=request_deserializer, response_serializer=handler.response_serializer)


class WrappingInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc has no type stubs
    """Wraps each method's handler with `wrap`, once per method: registered handlers are the same
    object on every call, so the wrapper is built on the first call and reused."""

    def __init__(self) -> None:
        self._wrapped: dict[str, tuple[Any, Any]] = {}  # method -> (grpc's handler, our wrapper)

    def wrap(self, handler: Any, method: str) -> Any:
        raise NotImplementedError

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None  # grpc answers UNIMPLEMENTED
        method: str = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self.wrap(handler, method)
        self._wrapped[method] = (handler, wrapped)
        return wrapped
