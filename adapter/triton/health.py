"""Watches Triton's readiness in the background and reports changes (one probe for everyone,
not one per call): the adapter's grpc.health.v1 status follows it, and a Triton that comes back
(restarted, with nothing loaded) makes the scheduler re-read what is loaded."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


class TritonHealthWatcher:
    def __init__(
        self,
        is_ready: Callable[[], Awaitable[bool]],
        on_change: Callable[[bool], Awaitable[None]],
        interval_s: float = 1.0,
        timeout_s: float = 2.0,
        failures_to_flip: int = 2,
    ) -> None:
        self._is_ready = is_ready
        self._on_change = on_change
        self._interval_s = interval_s
        self._timeout_s = timeout_s
        # One slow answer on a busy machine is not an outage: NOT_SERVING needs this many in a row.
        self._failures_to_flip = failures_to_flip
        self._failures = 0
        self.ready = True  # the adapter starts serving only once Triton was ready

    async def probe(self) -> bool:
        try:
            return await asyncio.wait_for(self._is_ready(), self._timeout_s)
        except Exception:  # noqa: BLE001 - unreachable, refused, timed out: all mean "not ready"
            return False

    async def check_once(self) -> bool:
        """Probes Triton; on a change, records it and tells on_change. Returns readiness."""
        ready = await self.probe()
        self._failures = 0 if ready else self._failures + 1
        if not ready and self._failures < self._failures_to_flip:
            return self.ready
        await self._change(ready)
        return ready

    async def mark_down(self, why: str) -> None:
        """Triton is known to be gone without a probe (the supervisor of the embedded one saw it
        exit): NOT_SERVING now; the next successful probe reports its return."""
        self._failures = max(self._failures, self._failures_to_flip)
        await self._change(False, why)

    def recheck(self) -> None:
        """Forget that Triton was seen ready (quietly): the next successful probe reports it ready
        again, so a reaction to its return that could not finish is tried again."""
        self.ready = False

    async def _change(self, ready: bool, why: str = "") -> None:
        if ready == self.ready:
            return
        self.ready = ready
        if ready:
            log.info("Triton answers again")
        else:
            log.error(
                "Triton is %s: health NOT_SERVING until it is back and ready",
                why or "unreachable or not ready",
            )
        try:
            await self._on_change(ready)
        except Exception:  # noqa: BLE001 - the watcher must outlive a failing reaction
            log.exception("reacting to Triton's readiness change failed")

    async def run(self) -> None:
        while True:
            await self.check_once()
            await asyncio.sleep(self._interval_s)
