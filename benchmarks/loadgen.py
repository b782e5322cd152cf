"""A closed-loop load generator: N concurrent clients, each sending its next request when the
previous one returns, for a fixed time. Records per-request latency."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass


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
