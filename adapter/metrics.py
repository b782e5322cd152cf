"""The adapter's own Prometheus metrics: RPCs by method and status, model loads and unloads, queues, memory.

One `AdapterMetrics` owns its own registry (several can live in one process, as in tests) and serves it
on its own HTTP port. `interceptor()` records every RPC with the status code the client sees:

- OK when the handler returns normally (or the code it set with `context.set_code`);
- the code given to `context.abort` (read back from `context.code()` once abort has raised);
- CANCELLED when the client cancels (DEADLINE_EXCEEDED when its deadline ran out instead);
- UNKNOWN for any other exception, which is re-raised unchanged, as grpc answers it.

Streaming RPCs are timed until the stream ends. Synchronous handlers (run in the server's thread
pool) are passed through unrecorded; the adapter has none.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any
from wsgiref.simple_server import WSGIServer

import grpc
from grpc._cython import cygrpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, start_http_server

from adapter.grpc_front.handler_wrapping import Behavior, WrappingInterceptor, rewrap
from adapter.scheduling.scheduler import Cause, EventKind, SchedulerEvent

# Unary RPCs take milliseconds; a streamed chat or an image generation can take minutes.
RPC_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
# From a warm reload (0.1 s) to a large model read from a cold disk (MODEL_LOAD_TIMEOUT's 600 s).
MODEL_LOAD_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 180.0, 300.0, 450.0, 600.0)

_OK = grpc.StatusCode.OK
# What a write raises when the call already ended on the wire (client cancelled, deadline passed) before
# grpc cancelled the handler: the client saw CANCELLED, not UNKNOWN. grpc names it privately.
_CALL_ENDED: type[BaseException] = getattr(cygrpc, "ExecuteBatchError", asyncio.CancelledError)


class AdapterMetrics:
    """The adapter's metrics, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self._rpc_requests = Counter(
            "adapter_rpc_requests_total",
            "RPCs finished, by method and the status code the client got",
            ("method", "code"),
            registry=r,
        )
        self._rpc_duration = Histogram(
            "adapter_rpc_duration_seconds",
            "RPC time in the adapter; streaming RPCs until the stream ends",
            ("method",),
            buckets=RPC_DURATION_BUCKETS,
            registry=r,
        )
        self._model_loads = Counter("adapter_model_loads_total", "Model loads that succeeded", ("model",), registry=r)
        self._model_load_duration = Histogram(
            "adapter_model_load_duration_seconds",
            "Time to load a model, successful loads only",
            ("model",),
            buckets=MODEL_LOAD_BUCKETS,
            registry=r,
        )
        self._model_load_failures = Counter(
            "adapter_model_load_failures_total", "Model loads that failed", ("model",), registry=r
        )
        self._model_unloads = Counter(
            "adapter_model_unloads_total",
            "Models unloaded, by why (evicted, keep_alive, requested, clear, lost)",
            ("model", "reason"),
            registry=r,
        )
        self._model_in_flight = Gauge(
            "adapter_model_in_flight", "Requests running on a model now", ("model",), registry=r
        )
        self._model_queue_depth = Gauge(
            "adapter_model_queue_depth", "Requests waiting for a model to load", ("model",), registry=r
        )
        self._memory_budget = Gauge(
            "adapter_memory_budget_bytes", "Memory the scheduler may fill with models", registry=r
        )
        self._http_requests = Counter(
            "adapter_http_requests_total",
            "HTTP requests (the OpenAI-compatible front) finished, by route template, method and status"
            " (499: the client disconnected first)",
            ("route", "method", "status"),
            registry=r,
        )
        self._http_duration = Histogram(
            "adapter_http_request_duration_seconds",
            "HTTP request time in the adapter; streams until their last event",
            ("route",),
            buckets=RPC_DURATION_BUCKETS,
            registry=r,
        )
        self._http_children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        # Per full method name ("/pkg.Service/Method"), so a call costs two dict lookups.
        self._rpc_stats: dict[str, _RpcStats] = {}
        self._http: tuple[WSGIServer, threading.Thread] | None = None

    # Models.

    def model_loaded(self, model: str, seconds: float) -> None:
        self._model_loads.labels(model).inc()
        self._model_load_duration.labels(model).observe(seconds)

    def model_load_failed(self, model: str) -> None:
        self._model_load_failures.labels(model).inc()

    def model_unloaded(self, model: str, cause: Cause) -> None:
        """Counted under the cause's value: "evicted", "keep_alive", "requested", "clear" or "lost"."""
        self._model_unloads.labels(model, Cause(cause).value).inc()

    def model_event(self, event: SchedulerEvent) -> None:
        """Records one of the scheduler's events (a scheduler listener)."""
        if event.kind is EventKind.LOADED:
            self.model_loaded(event.model, event.duration_s)
        elif event.kind is EventKind.LOAD_FAILED:
            self.model_load_failed(event.model)
        else:  # unloaded or evicted
            self.model_unloaded(event.model, event.cause)

    def set_in_flight(self, model: str, n: int) -> None:
        self._model_in_flight.labels(model).set(n)

    def set_queue_depth(self, model: str, n: int) -> None:
        self._model_queue_depth.labels(model).set(n)

    def set_budget(self, budget_bytes: int) -> None:
        self._memory_budget.set(budget_bytes)

    # HTTP requests.

    def http_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """One finished HTTP request; `route` is a route template (or "unmatched"), never a raw path."""
        key = (route, method, status)
        children = self._http_children.get(key)
        if children is None:
            children = self._http_children[key] = (
                self._http_requests.labels(route, method, str(status)),
                self._http_duration.labels(route),
            )
        children[0].inc()
        children[1].observe(seconds)

    # Exposition.

    def render(self) -> bytes:
        """The registry in Prometheus' text format."""
        return generate_latest(self.registry)

    async def start_http(self, host: str, port: int) -> int:
        """Serves this registry over HTTP (any path, /metrics included); returns the bound port (0 picks one)."""
        if self._http is not None:
            raise RuntimeError("the metrics HTTP server is already running")
        # Off the loop: resolving `host` may block.
        self._http = await asyncio.to_thread(start_http_server, port, host, self.registry)
        return int(self._http[0].server_port)

    def stop_http(self) -> None:
        """Stops the HTTP server; blocks up to half a second (its poll interval)."""
        if self._http is None:
            return
        server, thread = self._http
        self._http = None
        server.shutdown()
        server.server_close()
        thread.join()

    # RPCs.

    def interceptor(self) -> grpc.aio.ServerInterceptor:
        """Records each RPC of the server it is given to; put it first in `interceptors`."""
        return _MetricsInterceptor(self)

    def _stats_for(self, full_method: str) -> _RpcStats:
        stats = self._rpc_stats.get(full_method)
        if stats is None:
            method = full_method.rpartition("/")[2]
            stats = _RpcStats(self._rpc_requests, self._rpc_duration.labels(method), method)
            self._rpc_stats[full_method] = stats
        return stats


class _RpcStats:
    """One method's cached metric children, so recording a call needs no `.labels()`."""

    __slots__ = ("_by_code", "_method", "_requests", "duration")

    def __init__(self, requests: Counter, duration: Histogram, method: str) -> None:
        self._requests = requests
        self._method = method
        self._by_code: dict[str, Counter] = {"OK": requests.labels(method, "OK")}
        self.duration = duration

    def record(self, code: str, seconds: float) -> None:
        counter = self._by_code.get(code)
        if counter is None:
            counter = self._by_code[code] = self._requests.labels(self._method, code)
        counter.inc()
        self.duration.observe(seconds)


class _MetricsInterceptor(WrappingInterceptor):
    def __init__(self, metrics: AdapterMetrics) -> None:
        super().__init__()
        self._metrics = metrics

    def wrap(self, handler: Any, method: str) -> Any:
        # Unknown methods never get here (grpc answers UNIMPLEMENTED): clients cannot invent labels.
        stats = self._metrics._stats_for(method)
        return rewrap(handler, lambda b: _record_coroutine(b, stats), lambda b: _record_generator(b, stats))


def _record_coroutine(behavior: Callable[[Any, Any], Awaitable[Any]], stats: _RpcStats) -> Behavior:
    async def recorded(request: Any, context: Any) -> Any:
        start = time.perf_counter()
        code = "UNKNOWN"
        try:
            response = await behavior(request, context)
            code = _returned_code(context)
            return response
        except asyncio.CancelledError:
            code = _cancelled_code(context)
            raise
        except Exception as err:
            code = _raised_code(context, err)
            raise
        finally:
            stats.record(code, time.perf_counter() - start)

    return recorded


def _record_generator(behavior: Callable[[Any, Any], AsyncGenerator[Any, None]], stats: _RpcStats) -> Behavior:
    # Served as a coroutine that writes each message itself, rather than as a wrapping generator: a
    # cancellation then always lands in this frame (a generator paused at `yield` while grpc awaits
    # the write would only learn of it when garbage-collected), and the handler's generator is
    # closed at once, so its cleanup (cancelling Triton streams) runs now.
    async def recorded(request: Any, context: Any) -> None:
        start = time.perf_counter()
        code = "UNKNOWN"
        responses = behavior(request, context)
        try:
            async for response in responses:
                await context.write(response)
            code = _returned_code(context)
        except asyncio.CancelledError:
            code = _cancelled_code(context)
            raise
        except Exception as err:
            code = _raised_code(context, err)
            raise
        finally:
            try:
                await responses.aclose()
            finally:
                stats.record(code, time.perf_counter() - start)

    return recorded


def _returned_code(context: Any) -> str:
    code = context.code()
    return "OK" if code is None else str(code.name)


def _raised_code(context: Any, err: Exception) -> str:
    # After `await context.abort(code, ...)` raised grpc's AbortError, context.code() is that code;
    # any other exception becomes UNKNOWN, unless the handler set a code first (grpc sends that).
    if isinstance(err, _CALL_ENDED):
        return _cancelled_code(context)
    code = context.code()
    return "UNKNOWN" if code is None or code is _OK else str(code.name)


def _cancelled_code(context: Any) -> str:
    # grpc cancels the handler both when the client cancels and when the client's deadline passes.
    remaining = context.time_remaining()
    return "DEADLINE_EXCEEDED" if remaining is not None and remaining <= 0 else "CANCELLED"
