"""Graceful shutdown of running calls: know every call in flight, wait for them within a grace
period, then end the rest with UNAVAILABLE (so clients retry elsewhere) rather than a bare cancel.

A server interceptor: each handler runs in a task it records; `drain()` waits for those tasks and
cancels the stragglers, whose cancellation the wrapper turns into UNAVAILABLE. Cancelling the task
also runs the handlers' cleanup, which cancels their Triton requests.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

import grpc

from adapter.grpc_front.handler_wrapping import WrappingInterceptor, rewrap

log = logging.getLogger(__name__)

SHUTTING_DOWN = "the adapter is shutting down; retry the call (another instance will take it)"


class CallTracker(WrappingInterceptor):
    def __init__(self) -> None:
        super().__init__()
        self._calls: set[asyncio.Task[Any]] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._cut_off = False

    @property
    def in_flight(self) -> int:
        return len(self._calls)

    async def drain(self, grace_s: float) -> int:
        """Waits up to grace_s for the calls in flight, then ends the rest with UNAVAILABLE.
        Returns how many had to be ended."""
        if self._calls:
            log.info("waiting up to %.1fs for %d calls in flight", grace_s, len(self._calls))
            try:
                await asyncio.wait_for(self._idle.wait(), grace_s)
                return 0
            except TimeoutError:
                pass
        stragglers = list(self._calls)
        self._cut_off = True
        for task in stragglers:
            task.cancel()
        if stragglers:
            log.warning("ended %d calls still running after the grace period with UNAVAILABLE", len(stragglers))
            await asyncio.wait(stragglers, timeout=5)
        return len(stragglers)

    def wrap(self, handler: Any, method: str) -> Any:
        return rewrap(handler, self._track_coroutine, self._track_generator)

    def _enter(self) -> asyncio.Task[Any]:
        task = asyncio.current_task()
        assert task is not None
        self._calls.add(task)
        self._idle.clear()
        return task

    def _leave(self, task: asyncio.Task[Any]) -> None:
        self._calls.discard(task)
        if not self._calls:
            self._idle.set()

    def _track_coroutine(self, behavior: Callable[[Any, Any], Awaitable[Any]]) -> Callable[[Any, Any], Awaitable[Any]]:
        async def tracked(request: Any, context: grpc.aio.ServicerContext) -> Any:
            task = self._enter()
            try:
                return await behavior(request, context)
            except asyncio.CancelledError:
                if self._cut_off:
                    await context.abort(grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)
                raise
            finally:
                self._leave(task)

        return tracked

    def _track_generator(
        self, behavior: Callable[[Any, Any], AsyncGenerator[Any, None]]
    ) -> Callable[[Any, Any], Awaitable[None]]:
        # Written as a coroutine that writes each message (see metrics._record_generator for why).
        async def tracked(request: Any, context: grpc.aio.ServicerContext) -> None:
            task = self._enter()
            responses = behavior(request, context)
            try:
                async for response in responses:
                    await context.write(response)
            except asyncio.CancelledError:
                if self._cut_off:
                    await responses.aclose()
                    await context.abort(grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)
                raise
            finally:
                try:
                    await responses.aclose()
                finally:
                    self._leave(task)

        return tracked
