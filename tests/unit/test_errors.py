"""Error mapping: Triton's errors to ours, ours to gRPC statuses, and nothing internal leaking out."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from tritonclient.utils import InferenceServerException

from adapter.core import errors
from adapter.core.errors import (
    AdapterError,
    Cancelled,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from adapter.grpc_front.status import grpc_code, map_errors, map_stream_errors
from adapter.triton.errors import from_triton

Code = grpc.StatusCode
INCIDENT = re.compile(r"incident ([0-9a-f]{12})\b")


def triton_error(message: str, status: str | None) -> InferenceServerException:
    return InferenceServerException(msg=message, status=status)


def rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)


# --- error classes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "code"),
    [
        (InvalidArgument, Code.INVALID_ARGUMENT),
        (NotFound, Code.NOT_FOUND),
        (FailedPrecondition, Code.FAILED_PRECONDITION),
        (ResourceExhausted, Code.RESOURCE_EXHAUSTED),
        (Unavailable, Code.UNAVAILABLE),
        (Cancelled, Code.CANCELLED),
        (DeadlineExceeded, Code.DEADLINE_EXCEEDED),
        (Internal, Code.INTERNAL),
    ],
)
def test_each_adapter_error_carries_its_status_code_and_message(kind: type[AdapterError], code: Any) -> None:
    err = kind("what went wrong")
    assert grpc_code(err.code) == code
    assert err.message == "what went wrong"
    assert str(err) == "what went wrong"


# --- from_triton -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        ("StatusCode.INVALID_ARGUMENT", InvalidArgument),
        ("StatusCode.NOT_FOUND", NotFound),
        ("StatusCode.RESOURCE_EXHAUSTED", ResourceExhausted),
        ("StatusCode.CANCELLED", Cancelled),
        ("StatusCode.DEADLINE_EXCEEDED", DeadlineExceeded),
    ],
)
def test_triton_status_becomes_the_matching_error_with_tritons_message(status: str, kind: type[AdapterError]) -> None:
    mapped = from_triton(triton_error("max_tokens must be in [1, 64], got 100", status), "inferring llm")
    assert type(mapped) is kind
    assert mapped.message == "max_tokens must be in [1, 64], got 100"


def test_unknown_model_returns_not_found() -> None:
    mapped = from_triton(triton_error("Request for unknown model: 'nope' is not found", "StatusCode.NOT_FOUND"), "x")
    assert grpc_code(mapped.code) == Code.NOT_FOUND
    assert "nope" in mapped.message


def test_unavailable_triton_says_so_with_context_and_reason() -> None:
    mapped = from_triton(triton_error("failed to connect to all addresses", "StatusCode.UNAVAILABLE"), "loading llm")
    assert type(mapped) is Unavailable
    assert grpc_code(mapped.code) == Code.UNAVAILABLE
    assert "Triton is unavailable" in mapped.message
    assert "loading llm" in mapped.message
    assert "failed to connect to all addresses" in mapped.message


@pytest.mark.parametrize("status", ["StatusCode.INTERNAL", "StatusCode.FAILED_PRECONDITION", "StatusCode.NOPE", None])
def test_other_triton_status_becomes_internal_with_context(status: str | None) -> None:
    mapped = from_triton(triton_error("backend exploded", status), "inferring llm")
    assert type(mapped) is Internal
    assert grpc_code(mapped.code) == Code.INTERNAL
    assert "inferring llm" in mapped.message
    assert "backend exploded" in mapped.message


@pytest.mark.parametrize("status", ["StatusCode.INTERNAL", None])
def test_a_vllm_prompt_longer_than_the_context_is_the_clients_error(status: str | None) -> None:
    # vLLM's backend reports every failure as INTERNAL; this one is the request's.
    message = (
        "Error generating stream: The decoder prompt (length 9003) is longer than the maximum model length of "
        "4096. Make sure that `max_model_len` is no smaller than the number of text tokens."
    )
    mapped = from_triton(triton_error(message, status), "streaming from 'vllm'")
    assert type(mapped) is InvalidArgument
    assert "the prompt is longer than the model's context" in mapped.message and "9003" in mapped.message
    # Any other failure of a vLLM model stays INTERNAL.
    assert type(from_triton(triton_error("Error generating stream: CUDA error", status), "x")) is Internal


def test_triton_error_without_message_still_says_something() -> None:
    mapped = from_triton(InferenceServerException(msg=None, status="StatusCode.INVALID_ARGUMENT"), "x")
    assert type(mapped) is InvalidArgument
    assert mapped.message


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (Code.INVALID_ARGUMENT, InvalidArgument),
        (Code.NOT_FOUND, NotFound),
        (Code.UNAVAILABLE, Unavailable),
        (Code.DEADLINE_EXCEEDED, DeadlineExceeded),
        (Code.UNKNOWN, Internal),
    ],
)
def test_grpc_call_error_from_triton_maps_by_its_code(code: grpc.StatusCode, kind: type[AdapterError]) -> None:
    mapped = from_triton(rpc_error(code, "details from triton"), "streaming")
    assert type(mapped) is kind
    assert "details from triton" in mapped.message


@pytest.mark.parametrize("err", [ConnectionRefusedError("refused"), OSError("network is unreachable")])
def test_connection_failure_is_unavailable(err: Exception) -> None:
    mapped = from_triton(err, "checking readiness")
    assert grpc_code(mapped.code) == Code.UNAVAILABLE
    assert "Triton is unavailable" in mapped.message


def test_unexpected_exception_from_triton_is_internal() -> None:
    mapped = from_triton(ValueError("odd"), "parsing output")
    assert grpc_code(mapped.code) == Code.INTERNAL
    assert "parsing output" in mapped.message


def test_adapter_error_passes_through_unchanged() -> None:
    original = ResourceExhausted("model does not fit")
    assert from_triton(original, "loading") is original


# --- map_errors / map_stream_errors ----------------------------------------------------------


class Aborted(Exception):
    """What grpc's context.abort raises to end the handler."""


class FakeContext:
    def __init__(self) -> None:
        self.aborts: list[tuple[grpc.StatusCode, str]] = []

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.aborts.append((code, details))
        raise Aborted(details)


class Servicer:
    def __init__(self, error: BaseException | None = None, before_error: int = 0) -> None:
        self.error = error
        self.before_error = before_error

    @map_errors
    async def Unary(self, request: str, context: Any) -> str:  # noqa: N802 - gRPC method name
        if self.error is not None:
            raise self.error
        return f"reply to {request}"

    @map_stream_errors
    async def Stream(self, request: str, context: Any) -> AsyncIterator[str]:  # noqa: N802
        for i in range(self.before_error if self.error else 3):
            yield f"{request}-{i}"
        if self.error is not None:
            raise self.error


async def collect(stream: AsyncIterator[str], into: list[str]) -> None:
    async for item in stream:
        into.append(item)


async def test_unary_success_returns_the_reply_without_abort() -> None:
    context = FakeContext()
    assert await Servicer().Unary("hi", context) == "reply to hi"
    assert context.aborts == []


async def test_unary_adapter_error_aborts_with_its_code_and_message() -> None:
    context = FakeContext()
    with pytest.raises(Aborted):
        await Servicer(NotFound("model 'nope' is not in the repository")).Unary("hi", context)
    assert context.aborts == [(Code.NOT_FOUND, "model 'nope' is not in the repository")]


async def test_unary_unexpected_error_aborts_internal_with_incident_and_no_details(
    caplog: pytest.LogCaptureFixture,
) -> None:
    context = FakeContext()
    with caplog.at_level(logging.ERROR, logger=errors.__name__), pytest.raises(Aborted):
        await Servicer(KeyError("secret-internal-detail")).Unary("hi", context)
    [(code, message)] = context.aborts
    assert code == Code.INTERNAL
    assert "secret-internal-detail" not in message
    assert "KeyError" not in message
    assert "Unary" in message
    match = INCIDENT.search(message)
    assert match is not None
    # The same incident id is in the log, with the exception that caused it.
    logged = [r for r in caplog.records if match.group(1) in r.getMessage()]
    assert logged and logged[0].exc_info is not None
    assert "secret-internal-detail" in str(logged[0].exc_info[1])


async def test_each_unexpected_error_gets_its_own_incident_id() -> None:
    ids = []
    for _ in range(2):
        context = FakeContext()
        with pytest.raises(Aborted):
            await Servicer(RuntimeError("boom")).Unary("hi", context)
        match = INCIDENT.search(context.aborts[0][1])
        assert match is not None
        ids.append(match.group(1))
    assert ids[0] != ids[1]


async def test_unary_triton_error_mapped_by_the_handler_keeps_its_code() -> None:
    context = FakeContext()
    failure = from_triton(triton_error("down", "StatusCode.UNAVAILABLE"), "inferring")
    with pytest.raises(Aborted):
        await Servicer(failure).Unary("hi", context)
    assert context.aborts[0][0] == Code.UNAVAILABLE
    assert "Triton is unavailable" in context.aborts[0][1]


def test_decorators_keep_the_handler_name() -> None:
    assert Servicer.Unary.__name__ == "Unary"
    assert Servicer.Stream.__name__ == "Stream"


async def test_stream_success_yields_every_message_without_abort() -> None:
    context = FakeContext()
    received: list[str] = []
    await collect(Servicer().Stream("m", context), received)
    assert received == ["m-0", "m-1", "m-2"]
    assert context.aborts == []


async def test_stream_adapter_error_aborts_after_the_messages_already_sent() -> None:
    context = FakeContext()
    received: list[str] = []
    with pytest.raises(Aborted):
        await collect(
            Servicer(InvalidArgument("options.top_p must be in (0, 1]"), before_error=2).Stream("m", context), received
        )
    assert received == ["m-0", "m-1"]
    assert context.aborts == [(Code.INVALID_ARGUMENT, "options.top_p must be in (0, 1]")]


async def test_stream_unexpected_error_aborts_internal_with_incident_and_no_details() -> None:
    context = FakeContext()
    received: list[str] = []
    with pytest.raises(Aborted):
        await collect(Servicer(ZeroDivisionError("secret-internal-detail")).Stream("m", context), received)
    [(code, message)] = context.aborts
    assert code == Code.INTERNAL
    assert "secret-internal-detail" not in message
    assert "Stream" in message
    assert INCIDENT.search(message) is not None


async def test_cancelled_unary_call_is_not_turned_into_an_error_status() -> None:
    context = FakeContext()
    with pytest.raises(asyncio.CancelledError):
        await Servicer(asyncio.CancelledError()).Unary("hi", context)
    assert context.aborts == []


async def test_cancelled_stream_is_not_turned_into_an_error_status() -> None:
    context = FakeContext()
    received: list[str] = []
    with pytest.raises(asyncio.CancelledError):
        await collect(Servicer(asyncio.CancelledError(), before_error=1).Stream("m", context), received)
    assert received == ["m-0"]
    assert context.aborts == []


# --- every INTERNAL carries an incident id -----------------------------------------------------


@pytest.mark.parametrize(
    "failure",
    [
        # What the LLM answered for repetition_penalty 1e-38 before the ranges were checked.
        from_triton(triton_error("probability tensor contains either inf, nan or element < 0", None), "streaming"),
        Internal("model 'llm' ended its stream without a final response"),
    ],
)
async def test_an_internal_error_raised_as_such_gets_an_incident_id_that_the_log_shows(
    failure: AdapterError, caplog: pytest.LogCaptureFixture
) -> None:
    for call in ("unary", "stream"):
        context = FakeContext()
        with caplog.at_level(logging.ERROR, logger=errors.__name__), pytest.raises(Aborted):
            if call == "unary":
                await Servicer(failure).Unary("hi", context)
            else:
                await collect(Servicer(failure, before_error=1).Stream("m", context), [])
        [(code, message)] = context.aborts
        assert code == Code.INTERNAL
        assert failure.message in message
        match = INCIDENT.search(message)
        assert match is not None
        assert any(match.group(1) in r.getMessage() and failure.message in r.getMessage() for r in caplog.records)


def test_with_incident_leaves_other_codes_and_errors_that_have_one_alone() -> None:
    refusal = InvalidArgument("options.top_p must be in (0, 1]")
    assert errors.with_incident(refusal, "x") is refusal
    once = errors.with_incident(Internal("boom"), "x")
    assert errors.with_incident(once, "x") is once
