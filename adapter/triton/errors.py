"""Triton's errors as ours: Triton answers with gRPC status codes (its client raises them as
`InferenceServerException` or grpc's `AioRpcError`); which of our errors each becomes, and why."""

from __future__ import annotations

import grpc
from tritonclient.utils import InferenceServerException

from adapter.core.errors import (
    AdapterError,
    Cancelled,
    DeadlineExceeded,
    Internal,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)

Code = grpc.StatusCode

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


# vLLM's backend reports every failure with Triton's default code, INTERNAL ("Error generating
# stream: ..."); these are the ones that mean the request asked too much of the model, a client's
# error: the prompt does not fit the model's context (vLLM's input checks, v0 and v1).
_VLLM_REQUEST_ERRORS = ("longer than the maximum model length",)


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
    if code in (Code.INTERNAL, Code.UNKNOWN, None) and any(check in message for check in _VLLM_REQUEST_ERRORS):
        return InvalidArgument(f"the prompt is longer than the model's context ({context}): {message}")
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
