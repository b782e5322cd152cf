"""Every error the adapter returns, as domain errors that carry a status code of their own.

Services raise AdapterError subclasses; each front maps the code to its wire status in one place
(gRPC: adapter/grpc_front/status.py; HTTP: the OpenAI front's). Errors coming back from Triton are
translated by adapter/triton/errors.py. A stack trace never reaches a client: unexpected exceptions
are logged and answered with INTERNAL and an incident id.
"""

from __future__ import annotations

import logging
import uuid
from enum import StrEnum

log = logging.getLogger(__name__)


class ErrorCode(StrEnum):
    """The status codes the adapter answers with: gRPC's names, which the HTTP front maps too."""

    OK = "OK"
    CANCELLED = "CANCELLED"
    UNKNOWN = "UNKNOWN"
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    NOT_FOUND = "NOT_FOUND"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    ABORTED = "ABORTED"
    OUT_OF_RANGE = "OUT_OF_RANGE"
    UNIMPLEMENTED = "UNIMPLEMENTED"
    INTERNAL = "INTERNAL"
    UNAVAILABLE = "UNAVAILABLE"
    DATA_LOSS = "DATA_LOSS"
    UNAUTHENTICATED = "UNAUTHENTICATED"


Code = ErrorCode


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

    code: ErrorCode = Code.INTERNAL

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


class Unauthenticated(AdapterError):
    """No API key, or not a valid one."""

    code = Code.UNAUTHENTICATED


class PermissionDenied(AdapterError):
    """A valid key that may not do this (the ordinary key on an admin call)."""

    code = Code.PERMISSION_DENIED


class Cancelled(AdapterError):
    code = Code.CANCELLED


class DeadlineExceeded(AdapterError):
    code = Code.DEADLINE_EXCEEDED


class Internal(AdapterError):
    code = Code.INTERNAL


def internal(err: BaseException, method: str) -> AdapterError:
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
