"""Our errors as gRPC statuses (one place): the handlers' decorators, and what a client sees for an
exception nothing translated (INTERNAL with an incident id, never a stack trace)."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from tritonclient.utils import InferenceServerException

from adapter.core.errors import AdapterError, ErrorCode, internal, with_incident
from adapter.triton.errors import from_triton, triton_status


def grpc_code(code: ErrorCode) -> grpc.StatusCode:
    """The same-named gRPC status code (our codes are gRPC's names)."""
    return grpc.StatusCode[code.value]


def to_status(err: BaseException, method: str) -> AdapterError:
    if isinstance(err, AdapterError):
        return with_incident(err, method)
    # A Triton error that reached us untranslated still says what went wrong, when it has a code.
    if isinstance(err, (InferenceServerException, grpc.aio.AioRpcError)) and triton_status(err) is not None:
        return with_incident(from_triton(err, method), method)
    return internal(err, method)


Handler = TypeVar("Handler", bound=Callable[..., Any])


def map_errors(handler: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """Unary handlers: AdapterError -> its status; anything else -> INTERNAL with an incident id."""

    @functools.wraps(handler)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await handler(self, request, context)
        except Exception as err:  # noqa: BLE001 - mapped, never leaked
            mapped = to_status(err, handler.__name__)
            await context.abort(grpc_code(mapped.code), mapped.message)

    return wrapper


def map_stream_errors(handler: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
    """The same for server-streaming handlers (async generators)."""

    @functools.wraps(handler)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        messages = handler(self, request, context)
        try:
            async for message in messages:
                yield message
        except Exception as err:  # noqa: BLE001 - mapped, never leaked
            mapped = to_status(err, handler.__name__)
            await context.abort(grpc_code(mapped.code), mapped.message)
        finally:
            # Close the handler now (its cleanup cancels Triton work), not at garbage collection.
            await messages.aclose()  # type: ignore[attr-defined]

    return wrapper
