"""Our errors in OpenAI's JSON shape, with the HTTP status a client expects for each code: the one
place the HTTP front maps errors (the gRPC front's is adapter/grpc_front/status.py).

Statuses follow the gRPC <-> HTTP mapping of google.rpc.Code (as grpc-gateway answers); the
`type` is what OpenAI's SDKs and clients branch on, and `code` is our status code's name in lower
case, so a client can tell a full queue (resource_exhausted) from an unknown model (not_found).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from adapter.core.errors import AdapterError, ErrorCode, internal, with_incident

# code -> (HTTP status, OpenAI error type)
STATUS: dict[ErrorCode, tuple[int, str]] = {
    ErrorCode.INVALID_ARGUMENT: (400, "invalid_request_error"),
    ErrorCode.OUT_OF_RANGE: (400, "invalid_request_error"),
    # The model exists but cannot be loaded: retrying the same request will not help (google.rpc: 400).
    ErrorCode.FAILED_PRECONDITION: (400, "invalid_request_error"),
    ErrorCode.UNAUTHENTICATED: (401, "authentication_error"),
    ErrorCode.PERMISSION_DENIED: (403, "permission_error"),
    ErrorCode.NOT_FOUND: (404, "not_found_error"),
    ErrorCode.ALREADY_EXISTS: (409, "invalid_request_error"),
    ErrorCode.ABORTED: (409, "invalid_request_error"),
    ErrorCode.RESOURCE_EXHAUSTED: (429, "rate_limit_error"),
    # nginx's "client closed request": only ever seen in logs and metrics (the client has gone).
    ErrorCode.CANCELLED: (499, "invalid_request_error"),
    ErrorCode.UNIMPLEMENTED: (501, "server_error"),
    ErrorCode.UNAVAILABLE: (503, "server_error"),
    ErrorCode.DEADLINE_EXCEEDED: (504, "server_error"),
    ErrorCode.INTERNAL: (500, "server_error"),
    ErrorCode.UNKNOWN: (500, "server_error"),
    ErrorCode.DATA_LOSS: (500, "server_error"),
}

# A message that starts with a field's name ("top_p must be in (0, 1]", "messages[0].role must ...")
# names the offending parameter: OpenAI's `param`.
_LEADING_FIELD = re.compile(r"^([a-z_][a-z0-9_]*(?:\[\d+\])*(?:\.[a-z_][a-z0-9_]*(?:\[\d+\])*)*)\s")


class HttpError(Exception):
    """An error the HTTP front itself decides (a body too large, a field it cannot honour)."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    @property
    def error_type(self) -> str:
        for status, error_type in STATUS.values():
            if status == self.status:
                return error_type
        return "invalid_request_error" if self.status < 500 else "server_error"


def unsupported(param: str, why: str) -> HttpError:
    """An option this server cannot honour: refused by name, never silently ignored."""
    return HttpError(400, f"{param} is not supported: {why}", param=param, code="unsupported_parameter")


def body(message: str, error_type: str, param: str | None, code: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def param_of(message: str, fields: frozenset[str]) -> str | None:
    """The field a message names first, when it is one of the request's fields."""
    match = _LEADING_FIELD.match(message)
    if match is None:
        return None
    name = match.group(1)
    return name if re.split(r"[.\[]", name, maxsplit=1)[0] in fields else None


def translate(
    err: BaseException,
    where: str,
    fields: frozenset[str] = frozenset(),
    rename: Callable[[str], str] = lambda message: message,
) -> tuple[int, dict[str, Any]]:
    """(HTTP status, OpenAI error body) for any exception; unexpected ones are logged with an
    incident id and answered 500 without details. `rename` turns the core's field names in a
    message into the front's."""
    if isinstance(err, HttpError):
        return err.status, body(err.message, err.error_type, err.param, err.code)
    mapped = with_incident(err, where) if isinstance(err, AdapterError) else internal(err, where)
    status, error_type = STATUS.get(mapped.code, (500, "server_error"))
    message = rename(mapped.message)
    return status, body(message, error_type, param_of(message, fields), mapped.code.value.lower())
