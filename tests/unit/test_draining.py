"""The call tracker (adapter.grpc_front.draining): it knows every call in flight, lets them finish within the
grace period, and ends the rest with UNAVAILABLE; with a fake servicer context, no server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from adapter.grpc_front.draining import SHUTTING_DOWN, CallTracker


class Aborted(Exception):
    """What grpc's context.abort raises (its AbortError)."""


class FakeContext:
    def __init__(self) -> None:
        self.written: list[Any] = []
        self.aborted: tuple[grpc.StatusCode, str] | None = None

    async def write(self, message: Any) -> None:
        self.written.append(message)

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.aborted = (code, details)
        raise Aborted(details)


class Calls:
    """Handlers that run until told to finish."""

    def __init__(self) -> None:
        self.finish = asyncio.Event()
        self.started = 0
        self.closed = 0

    async def unary(self, request: str, context: Any) -> str:
        self.started += 1
        if request == "boom":
            raise RuntimeError("boom")
        if request == "forever":
            await asyncio.sleep(3600)
        await self.finish.wait()
        return request.upper()

    async def stream(self, request: str, context: Any) -> AsyncIterator[str]:
        self.started += 1
        try:
            yield "first"
            if request == "forever":
                await asyncio.sleep(3600)
            await self.finish.wait()
            yield "last"
        finally:
            self.closed += 1


def tracked(tracker: CallTracker, calls: Calls) -> tuple[Any, Any]:
    unary = tracker.wrap(grpc.unary_unary_rpc_method_handler(calls.unary), "/t.T/Unary")
    stream = tracker.wrap(grpc.unary_stream_rpc_method_handler(calls.stream), "/t.T/Stream")
    return unary.unary_unary, stream.unary_stream


async def until(check: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0)


async def test_calls_are_counted_while_they_run() -> None:
    tracker, calls = CallTracker(), Calls()
    unary, stream = tracked(tracker, calls)
    assert tracker.in_flight == 0
    contexts = [FakeContext() for _ in range(3)]
    tasks = [
        asyncio.create_task(unary("a", contexts[0])),
        asyncio.create_task(unary("b", contexts[1])),
        asyncio.create_task(stream("c", contexts[2])),
    ]
    await until(lambda: calls.started == 3)
    assert tracker.in_flight == 3
    calls.finish.set()
    assert await asyncio.gather(*tasks) == ["A", "B", None]
    assert contexts[2].written == ["first", "last"]
    assert tracker.in_flight == 0
    assert all(c.aborted is None for c in contexts)


async def test_a_call_that_fails_is_no_longer_counted() -> None:
    tracker, calls = CallTracker(), Calls()
    unary, _ = tracked(tracker, calls)
    with pytest.raises(RuntimeError, match="boom"):
        await unary("boom", FakeContext())
    assert tracker.in_flight == 0
    assert await tracker.drain(0.01) == 0


async def test_drain_with_nothing_in_flight_returns_at_once() -> None:
    tracker = CallTracker()
    async with asyncio.timeout(1):
        assert await tracker.drain(60) == 0


async def test_drain_waits_for_calls_that_finish_within_the_grace_period() -> None:
    tracker, calls = CallTracker(), Calls()
    unary, stream = tracked(tracker, calls)
    contexts = [FakeContext(), FakeContext()]
    tasks = [asyncio.create_task(unary("a", contexts[0])), asyncio.create_task(stream("b", contexts[1]))]
    await until(lambda: calls.started == 2)
    drain = asyncio.create_task(tracker.drain(30))
    await asyncio.sleep(0.01)
    assert not drain.done(), "drain returned with calls still running"
    calls.finish.set()
    assert await drain == 0
    assert await asyncio.gather(*tasks) == ["A", None]
    assert contexts[1].written == ["first", "last"]
    assert all(c.aborted is None for c in contexts)


async def test_calls_still_running_after_the_grace_period_end_unavailable() -> None:
    tracker, calls = CallTracker(), Calls()
    unary, stream = tracked(tracker, calls)
    quick, slow_unary, slow_stream = FakeContext(), FakeContext(), FakeContext()
    calls.finish.set()
    assert await unary("quick", quick) == "QUICK"
    tasks = [
        asyncio.create_task(unary("forever", slow_unary)),
        asyncio.create_task(stream("forever", slow_stream)),
    ]
    await until(lambda: calls.started == 3 and slow_stream.written == ["first"])
    assert await tracker.drain(0.05) == 2
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, Aborted) for r in results), results
    assert slow_unary.aborted == (grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)
    assert slow_stream.aborted == (grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)
    assert calls.closed == 1, "the handler's generator was closed: its cleanup ran"
    assert tracker.in_flight == 0
    assert quick.aborted is None


async def test_a_call_cancelled_before_any_drain_stays_cancelled() -> None:
    """A client's cancel is not a shutdown: no UNAVAILABLE."""
    tracker, calls = CallTracker(), Calls()
    unary, stream = tracked(tracker, calls)
    contexts = [FakeContext(), FakeContext()]
    tasks = [asyncio.create_task(unary("forever", contexts[0])), asyncio.create_task(stream("forever", contexts[1]))]
    await until(lambda: calls.started == 2)
    for task in tasks:
        task.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, asyncio.CancelledError) for r in results), results
    assert all(c.aborted is None for c in contexts)
    assert calls.closed == 1
    assert tracker.in_flight == 0


async def test_each_method_is_wrapped_once() -> None:
    tracker, calls = CallTracker(), Calls()
    handler = grpc.unary_unary_rpc_method_handler(calls.unary)

    async def continuation(details: Any) -> Any:
        return handler

    class Details:
        method = "/t.T/Unary"

    first = await tracker.intercept_service(continuation, Details())
    assert await tracker.intercept_service(continuation, Details()) is first
    assert first is not handler
