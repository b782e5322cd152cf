"""Every error the adapter returns, and how each maps to a gRPC status code (one place).

Handlers raise AdapterError subclasses; `map_errors` turns them into statuses. Errors coming back
from Triton are translated by `from_triton`. A stack trace never reaches a client: unexpected
exceptions are logged here and answered with INTERNAL and an incident id.
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from tritonclient.utils import InferenceServerException

log = logging.getLogger(__name__)

Code = grpc.StatusCode


class AdapterError(Exception):
    """An error with the status code a client should see."""

    code: grpc.StatusCode = Code.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(AdapterError):
    """A field is missing or out of range; the message names the field."""

    code = Code.INVALID_ARGUMENT


class NotFound(AdapterError):
    """Unknown model or job."""

    code = Code.NOT_FOUND


class FailedPrecondition(AdapterError):
    """The model exists but could not be loaded; the message carries Triton's reason."""

    code = Code.FAILED_PRECONDITION


class ResourceExhausted(AdapterError):
    """A queue is full or a model does not fit the memory budget."""

    code = Code.RESOURCE_EXHAUSTED


class Unavailable(AdapterError):
    """Triton is unreachable or not ready: the client may retry."""

    code = Code.UNAVAILABLE


class Cancelled(AdapterError):
    code = Code.CANCELLED


class DeadlineExceeded(AdapterError):
    code = Code.DEADLINE_EXCEEDED


class Internal(AdapterError):
    code = Code.INTERNAL


# Triton reports its errors as gRPC codes; which of ours each becomes, and why:
_FROM_TRITON: dict[grpc.StatusCode, type[AdapterError]] = {
    # The model validated the request itself (sampling values, context length).
    Code.INVALID_ARGUMENT: InvalidArgument,
    # The model is not loaded (or was unloaded under us).
    Code.NOT_FOUND: NotFound,
    # Triton is down, restarting, or shutting down: retryable.
    Code.UNAVAILABLE: Unavailable,
    Code.RESOURCE_EXHAUSTED: ResourceExhausted,
    Code.CANCELLED: Cancelled,
    Code.DEADLINE_EXCEEDED: DeadlineExceeded,
}


def triton_status(err: BaseException) -> grpc.StatusCode | None:
    """The gRPC code of an error raised by tritonclient (aio call errors or its own exception)."""
    if isinstance(err, grpc.aio.AioRpcError):
        return err.code()
    if isinstance(err, InferenceServerException):
        status = err.status() or ""
        name = status.rsplit(".", 1)[-1]
        return Code.__members__.get(name)
    return None


def triton_message(err: BaseException) -> str:
    if isinstance(err, grpc.aio.AioRpcError):
        return err.details() or str(err.code())
    if isinstance(err, InferenceServerException):
        return err.message() or str(err)
    return str(err)


def from_triton(err: BaseException, context: str) -> AdapterError:
    """Translates a Triton error; `context` says what we were doing (for the message)."""
    if isinstance(err, AdapterError):
        return err
    code = triton_status(err)
    message = triton_message(err)
    if code is None and isinstance(err, (ConnectionError, OSError)):
        code = Code.UNAVAILABLE
    kind = _FROM_TRITON.get(code, Internal) if code is not None else Internal
    if kind is Unavailable:
        return Unavailable(f"Triton is unavailable ({context}): {message}")
    if kind is Internal:
        return Internal(f"Triton failed ({context}): {message}")
    return kind(message)


def _internal(err: BaseException, method: str) -> AdapterError:
    incident = uuid.uuid4().hex[:12]
    log.error("unexpected error in %s (incident %s)", method, incident, exc_info=err)
    return Internal(f"internal error in {method}; incident {incident} is in the adapter's log")


def _to_status(err: BaseException, method: str) -> AdapterError:
    return err if isinstance(err, AdapterError) else _internal(err, method)


Handler = TypeVar("Handler", bound=Callable[..., Any])


def map_errors(handler: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """Unary handlers: AdapterError -> its status; anything else -> INTERNAL with an incident id."""

    @functools.wraps(handler)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await handler(self, request, context)
        except Exception as err:  # noqa: BLE001 - mapped, never leaked
            mapped = _to_status(err, handler.__name__)
            await context.abort(mapped.code, mapped.message)

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
            mapped = _to_status(err, handler.__name__)
            await context.abort(mapped.code, mapped.message)
        finally:
            # Close the handler now (its cleanup cancels Triton work), not at garbage collection.
            await messages.aclose()  # type: ignore[attr-defined]

    return wrapper
