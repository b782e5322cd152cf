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


# gRPC carries a status message in a trailer, percent-encoded, and clients refuse trailers over 8-16 KiB
# (the call then ends RESOURCE_EXHAUSTED "received metadata size exceeds ..." and our message is lost).
# Messages quote the request's values (a model name, a role), which can be megabytes: cut them.
MAX_MESSAGE_BYTES = 1024


def shorten(message: str, limit: int = MAX_MESSAGE_BYTES) -> str:
    """The message, its middle cut out when its UTF-8 form passes `limit` bytes."""
    encoded = message.encode("utf-8", "surrogatepass")
    if len(encoded) <= limit:
        return message
    head = encoded[: limit * 3 // 4].decode("utf-8", "ignore")
    tail = encoded[-(limit // 8) :].decode("utf-8", "ignore")
    cut = len(message) - len(head) - len(tail)
    return f"{head} [... {cut} characters cut ...] {tail}"


class AdapterError(Exception):
    """An error with the status code a client should see."""

    code: grpc.StatusCode = Code.INTERNAL

    def __init__(self, message: str) -> None:
        message = shorten(message)
        super().__init__(message)
        self.message = message


class InvalidArgument(AdapterError):
    """A field is missing or out of range; the message names the field."""

    code = Code.INVALID_ARGUMENT


class NotFound(AdapterError):
    """Unknown model or job."""

    code = Code.NOT_FOUND


class AlreadyExists(AdapterError):
    """A client-chosen id (an image job's request_id) is already taken by a different request."""

    code = Code.ALREADY_EXISTS


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


# A streamed request that Triton refuses before any model sees it (its inputs do not match the
# model's configuration) comes back as an error message inside the stream, without a status code.
# These are the messages of Triton's request checks (all INVALID_ARG in Triton): through our API they
# mean the model named is not of the kind the RPC needs (an embedding model asked to chat).
_TRITON_REQUEST_CHECKS = (
    "unexpected inference input",
    "inputs but got",
    "unexpected shape for input",
    "data-type is",
    "input byte size mismatch",
    "unexpected inference output",
)


def triton_status(err: BaseException) -> grpc.StatusCode | None:
    """The gRPC code of an error raised by tritonclient (aio call errors or its own exception)."""
    if isinstance(err, grpc.aio.AioRpcError):
        return err.code()
    if isinstance(err, InferenceServerException):
        status = err.status() or ""
        name = status.rsplit(".", 1)[-1]
        code = Code.__members__.get(name)
        if code is None and not status and any(check in (err.message() or "") for check in _TRITON_REQUEST_CHECKS):
            return Code.INVALID_ARGUMENT
        return code
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
    # UNIMPLEMENTED: Triton cannot serve this kind of call with that model (a streaming model asked
    # for embeddings); a failed request check: the model takes other inputs than this RPC sends.
    wrong_kind = code == Code.INVALID_ARGUMENT and any(check in message for check in _TRITON_REQUEST_CHECKS)
    if code == Code.UNIMPLEMENTED or wrong_kind:
        return InvalidArgument(
            f"the model cannot serve this call ({context}): it is not a model of the kind this RPC needs; "
            f"Triton says: {message}"
        )
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


def with_incident(err: AdapterError, where: str) -> AdapterError:
    """The error as a client may see it: an INTERNAL one gets an incident id, logged with its message
    (so any INTERNAL, whatever raised it, can be found in the log); other codes are returned as they are."""
    if err.code != Code.INTERNAL or "incident " in err.message:
        return err
    incident = uuid.uuid4().hex[:12]
    log.error("internal error in %s (incident %s): %s", where, incident, err.message)
    return Internal(f"{err.message}; incident {incident} is in the adapter's log")


def _to_status(err: BaseException, method: str) -> AdapterError:
    if isinstance(err, AdapterError):
        return with_incident(err, method)
    # A Triton error that reached us untranslated still says what went wrong, when it has a code.
    if isinstance(err, (InferenceServerException, grpc.aio.AioRpcError)) and triton_status(err) is not None:
        return with_incident(from_triton(err, method), method)
    return _internal(err, method)


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
