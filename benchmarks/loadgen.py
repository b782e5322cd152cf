"""A closed-loop load generator: N concurrent clients, each sending its next request when the
previous one returns, for a fixed time. Records per-request latency."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class LoadResult:
    clients: int
    requests: int
    items: int  # embeddings, chunks, ...: what one request produces
    seconds: float
    latencies_ms: list[float]

    @property
    def items_per_s(self) -> float:
        return self.items / self.seconds

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        if not ordered:
            return float("nan")
        return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]

    @property
    def p50(self) -> float:
        return statistics.median(self.latencies_ms) if self.latencies_ms else float("nan")


async def closed_loop(
    call: Callable[[int], Awaitable[int]], clients: int, duration_s: float, warmup_s: float = 1.0
) -> LoadResult:
    """Runs `call(client_id)` (returning how many items it produced) from `clients` loops."""
    latencies: list[float] = []
    items = 0
    requests = 0
    started = time.perf_counter()
    measure_from = started + warmup_s
    stop_at = measure_from + duration_s

    async def loop(client: int) -> None:
        nonlocal items, requests
        while True:
            sent = time.perf_counter()
            if sent >= stop_at:
                return
            produced = await call(client)
            done = time.perf_counter()
            if sent >= measure_from and done <= stop_at:
                latencies.append((done - sent) * 1000)
                items += produced
                requests += 1

    await asyncio.gather(*(loop(c) for c in range(clients)))
    return LoadResult(clients=clients, requests=requests, items=items, seconds=duration_s, latencies_ms=latencies)


def merge(results: list[LoadResult]) -> LoadResult:
    """One result from several runs of the same cell (alternated with another path to cancel drift)."""
    return LoadResult(
        clients=results[0].clients,
        requests=sum(r.requests for r in results),
        items=sum(r.items for r in results),
        seconds=sum(r.seconds for r in results),
        latencies_ms=[latency for r in results for latency in r.latencies_ms],
    )


# ---- streams -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StreamResult:
    """Closed-loop streams, counted by arrival time inside the measured window: a request that
    straddles the window's edges contributes the chunks that arrived inside it."""

    streams: int
    seconds: float
    requests: int  # streams that ended (final message) inside the window
    chunks: int  # text chunks (model responses) that arrived inside the window
    messages: int  # messages that carried them (fewer when a hop merges chunks)
    ttfc_ms: list[float]  # request sent -> first text chunk, first chunk inside the window (see below)
    gaps_ms: list[float]  # per text chunk after the first: time since the previous chunk (0 when merged)
    # The same for each loop's first request (all sent at once when the round starts): the TTFC
    # to report only when no later request had its first chunk inside the window (long requests).
    first_ttfc_ms: list[float] = field(default_factory=list)

    @property
    def ttfc_steady(self) -> bool:
        return bool(self.ttfc_ms)

    @property
    def ttfc(self) -> list[float]:
        return self.ttfc_ms or self.first_ttfc_ms

    @property
    def chunks_per_s(self) -> float:
        return self.chunks / self.seconds

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.seconds

    @staticmethod
    def percentile(values: list[float], q: float) -> float:
        ordered = sorted(values)
        if not ordered:
            return float("nan")
        return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


# What a stream yields per message: (text chunks in it, True on the final message).
StreamOpener = Callable[[int], AsyncIterator[tuple[int, bool]]]


async def closed_loop_streams(
    open_stream: StreamOpener, streams: int, duration_s: float, warmup_s: float = 0.5
) -> StreamResult:
    """`streams` loops, each opening its next stream when the previous one ends; stops (cancels the
    streams still open) at the end of the window."""
    ttfc: list[float] = []
    first_ttfc: list[float] = []
    gaps: list[float] = []
    chunks = messages = requests = 0
    started = time.perf_counter()
    measure_from = started + warmup_s
    stop_at = measure_from + duration_s

    async def loop(client: int) -> None:
        nonlocal chunks, messages, requests
        # Every loop's first request leaves at the same instant (a thundering herd no steady state
        # has): its time to first chunk is left out; the later ones count when their first chunk
        # lands inside the window, also when they were sent during the warm-up (at 64 streams one
        # round may see only one more request per loop).
        first_request = True
        while True:
            sent = time.perf_counter()
            if sent >= stop_at:
                return
            previous: float | None = None
            stream = open_stream(client)
            try:
                async for count, final in stream:
                    now = time.perf_counter()
                    inside = measure_from <= now <= stop_at
                    if count:
                        if inside:
                            chunks += count
                            messages += 1
                        if previous is None:
                            if inside:
                                (first_ttfc if first_request else ttfc).append((now - sent) * 1000)
                            if inside:
                                gaps.extend([0.0] * (count - 1))
                        elif inside:
                            gaps.append((now - previous) * 1000)
                            gaps.extend([0.0] * (count - 1))
                        previous = now
                    if final and inside:
                        requests += 1
            finally:
                await stream.aclose()  # type: ignore[attr-defined]
            first_request = False

    tasks = [asyncio.ensure_future(loop(c)) for c in range(streams)]
    await asyncio.sleep(stop_at - time.perf_counter())
    # Streams still open at the end are cancelled, not drained: the next round starts clean.
    await asyncio.sleep(0)
    for task in tasks:
        task.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
            raise result
    return StreamResult(streams, duration_s, requests, chunks, messages, ttfc, gaps, first_ttfc)


def merge_streams(results: list[StreamResult]) -> StreamResult:
    return StreamResult(
        streams=results[0].streams,
        seconds=sum(r.seconds for r in results),
        requests=sum(r.requests for r in results),
        chunks=sum(r.chunks for r in results),
        messages=sum(r.messages for r in results),
        ttfc_ms=[v for r in results for v in r.ttfc_ms],
        first_ttfc_ms=[v for r in results for v in r.first_ttfc_ms],
        gaps_ms=[v for r in results for v in r.gaps_ms],
    )
