"""Adapter metrics: each RPC counted with the status its client saw, model metrics, /metrics over HTTP."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

from adapter.metrics import AdapterMetrics

Code = grpc.StatusCode
SERVICE = "test.v1.Probe"
BIG = b"x" * (256 * 1024)


def _raw(data: bytes) -> bytes:
    return data


class ProbeService:
    """RPCs of every kind whose request says how they end: b"ok", b"abort", b"boom", b"slow"."""

    def __init__(self) -> None:
        self.slow_closed = asyncio.Event()
        self.flood_closed = asyncio.Event()
        self.flood_sent = 0

    @staticmethod
    async def _misbehave(request: bytes, context: grpc.aio.ServicerContext) -> None:
        if request == b"abort":
            await context.abort(Code.INVALID_ARGUMENT, "bad request")
        if request == b"boom":
            raise RuntimeError("boom")

    async def unary(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await self._misbehave(request, context)
        return request

    async def count(self, request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        """Async-generator handler, as the adapter's streaming RPCs are."""
        if request == b"slow":
            try:
                yield b"first"
                await asyncio.sleep(3600)
            finally:
                self.slow_closed.set()
        if request == b"flood":
            # No await between messages: a cancellation can only arrive while grpc writes one.
            try:
                while True:
                    yield BIG
                    self.flood_sent += 1
            finally:
                self.flood_closed.set()
        if request.startswith(b"pause"):
            for _ in range(3):
                await asyncio.sleep(float(request.removeprefix(b"pause")))
                yield b"tick"
            return
        yield b"first"
        await self._misbehave(request, context)
        yield b"last"

    async def write(self, request: bytes, context: grpc.aio.ServicerContext) -> None:
        """Reader/writer-API streaming handler: a coroutine that writes and returns None."""
        await context.write(b"first")
        await self._misbehave(request, context)

    async def echo(self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        async for request in requests:
            await self._misbehave(request, context)
            yield request

    async def join(self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> bytes:
        parts = [request async for request in requests]
        for part in parts:
            await self._misbehave(part, context)
        return b"".join(parts)

    def handler(self) -> grpc.GenericRpcHandler:
        raw: dict[str, Any] = {"request_deserializer": _raw, "response_serializer": _raw}
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Unary": grpc.unary_unary_rpc_method_handler(self.unary, **raw),
                "Count": grpc.unary_stream_rpc_method_handler(self.count, **raw),
                "Write": grpc.unary_stream_rpc_method_handler(self.write, **raw),
                "Echo": grpc.stream_stream_rpc_method_handler(self.echo, **raw),
                "Join": grpc.stream_unary_rpc_method_handler(self.join, **raw),
            },
        )


@dataclass
class Served:
    metrics: AdapterMetrics
    service: ProbeService
    channel: grpc.aio.Channel

    def unary(self, method: str = "Unary") -> Any:
        return self.channel.unary_unary(f"/{SERVICE}/{method}", request_serializer=_raw, response_deserializer=_raw)

    def unary_stream(self, method: str = "Count") -> Any:
        return self.channel.unary_stream(f"/{SERVICE}/{method}", request_serializer=_raw, response_deserializer=_raw)

    def stream_stream(self) -> Any:
        return self.channel.stream_stream(f"/{SERVICE}/Echo", request_serializer=_raw, response_deserializer=_raw)

    def stream_unary(self) -> Any:
        return self.channel.stream_unary(f"/{SERVICE}/Join", request_serializer=_raw, response_deserializer=_raw)

    def requests(self, method: str, code: str) -> float:
        value = self.metrics.registry.get_sample_value("adapter_rpc_requests_total", {"method": method, "code": code})
        return value or 0.0

    def timed(self, method: str) -> tuple[float, float]:
        """(count, sum) of the method's duration histogram."""
        registry = self.metrics.registry
        count = registry.get_sample_value("adapter_rpc_duration_seconds_count", {"method": method})
        total = registry.get_sample_value("adapter_rpc_duration_seconds_sum", {"method": method})
        return count or 0.0, total or 0.0


async def eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    """The server records a call as its handler ends, which may be just after the client sees the status."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met within the timeout")
        await asyncio.sleep(0.005)


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    metrics = AdapterMetrics()
    service = ProbeService()
    server = grpc.aio.server(interceptors=[metrics.interceptor()])
    server.add_generic_rpc_handlers((service.handler(),))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((SERVICE, reflection.SERVICE_NAME), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Served(metrics, service, channel)
    finally:
        await channel.close()
        await server.stop(None)


async def test_unary_success_is_counted_ok_and_timed(served: Served) -> None:
    assert await served.unary()(b"ok") == b"ok"
    assert await served.unary()(b"ok") == b"ok"

    await eventually(lambda: served.requests("Unary", "OK") == 2)
    count, total = served.timed("Unary")
    assert count == 2
    assert 0 < total < 5


async def test_abort_is_counted_with_its_code(served: Served) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as unary:
        await served.unary()(b"abort")
    call = served.unary_stream()(b"abort")
    assert await call.read() == b"first"
    with pytest.raises(grpc.aio.AioRpcError) as stream:
        await call.read()

    assert unary.value.code() == stream.value.code() == Code.INVALID_ARGUMENT
    assert stream.value.details() == "bad request"
    await eventually(lambda: served.requests("Unary", "INVALID_ARGUMENT") == 1)
    await eventually(lambda: served.requests("Count", "INVALID_ARGUMENT") == 1)
    assert served.requests("Unary", "OK") == served.requests("Count", "OK") == 0
    assert served.timed("Count")[0] == 1


async def test_unexpected_exception_is_counted_unknown_and_reaches_the_client_unchanged(served: Served) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as unary:
        await served.unary()(b"boom")
    with pytest.raises(grpc.aio.AioRpcError) as stream:
        _ = [message async for message in served.unary_stream()(b"boom")]

    for err in (unary.value, stream.value):
        assert err.code() == Code.UNKNOWN
        assert "RuntimeError" in (err.details() or "")  # grpc's own answer, so the exception passed through
    await eventually(lambda: served.requests("Unary", "UNKNOWN") == 1)
    await eventually(lambda: served.requests("Count", "UNKNOWN") == 1)


async def test_stream_is_timed_until_it_ends(served: Served) -> None:
    messages = [message async for message in served.unary_stream()(b"pause0.1")]

    assert messages == [b"tick"] * 3
    await eventually(lambda: served.requests("Count", "OK") == 1)
    count, total = served.timed("Count")
    assert count == 1
    assert total >= 0.3


async def test_client_cancel_is_counted_cancelled_and_ends_the_handler(served: Served) -> None:
    call = served.unary_stream()(b"slow")
    assert await call.read() == b"first"
    call.cancel()

    await asyncio.wait_for(served.service.slow_closed.wait(), 5)
    await eventually(lambda: served.requests("Count", "CANCELLED") == 1)
    assert served.timed("Count")[0] == 1


async def test_cancel_during_a_write_closes_the_handler_generator_at_once(served: Served) -> None:
    # The handler's generator is paused at `yield` while grpc writes; it must still be closed promptly
    # (the adapter's cleanup cancels Triton streams) and the call counted as the client saw it.
    call = served.unary_stream()(b"flood")
    assert await call.read() == BIG
    await eventually(lambda: served.service.flood_sent >= 2)
    call.cancel()

    await asyncio.wait_for(served.service.flood_closed.wait(), 5)
    await eventually(lambda: served.requests("Count", "CANCELLED") == 1)


async def test_passed_deadline_is_counted_deadline_exceeded(served: Served) -> None:
    call = served.unary_stream()(b"slow", timeout=0.3)
    assert await call.read() == b"first"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call.read()

    assert err.value.code() == Code.DEADLINE_EXCEEDED
    await eventually(lambda: served.requests("Count", "DEADLINE_EXCEEDED") == 1)


async def test_client_streaming_rpcs_are_counted(served: Served) -> None:
    echoed = [message async for message in served.stream_stream()(iter([b"a", b"b"]))]
    assert echoed == [b"a", b"b"]
    assert await served.stream_unary()(iter([b"a", b"b"])) == b"ab"
    with pytest.raises(grpc.aio.AioRpcError) as echo_err:
        _ = [message async for message in served.stream_stream()(iter([b"a", b"abort"]))]
    with pytest.raises(grpc.aio.AioRpcError) as join_err:
        await served.stream_unary()(iter([b"boom"]))

    assert echo_err.value.code() == Code.INVALID_ARGUMENT
    assert join_err.value.code() == Code.UNKNOWN
    await eventually(lambda: served.requests("Echo", "INVALID_ARGUMENT") == 1)
    await eventually(lambda: served.requests("Join", "UNKNOWN") == 1)
    assert served.requests("Echo", "OK") == served.requests("Join", "OK") == 1
    assert served.timed("Echo")[0] == served.timed("Join")[0] == 2


async def test_writer_api_stream_is_counted(served: Served) -> None:
    assert [message async for message in served.unary_stream("Write")(b"ok")] == [b"first"]
    call = served.unary_stream("Write")(b"abort")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        _ = [message async for message in call]

    assert err.value.code() == Code.INVALID_ARGUMENT
    await eventually(lambda: served.requests("Write", "OK") == 1)
    await eventually(lambda: served.requests("Write", "INVALID_ARGUMENT") == 1)


async def test_health_and_reflection_keep_working_and_are_counted(served: Served) -> None:
    checked = await health_pb2_grpc.HealthStub(served.channel).Check(health_pb2.HealthCheckRequest(service=""))
    watch = health_pb2_grpc.HealthStub(served.channel).Watch(health_pb2.HealthCheckRequest(service=""))
    watched = await watch.read()
    watch.cancel()
    reflect = reflection_pb2_grpc.ServerReflectionStub(served.channel).ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    listed = [response async for response in reflect]

    assert checked.status == watched.status == health_pb2.HealthCheckResponse.SERVING
    names = {service.name for service in listed[0].list_services_response.service}
    assert names == {SERVICE, reflection.SERVICE_NAME}
    await eventually(lambda: served.requests("Check", "OK") == 1)
    await eventually(lambda: served.requests("Watch", "CANCELLED") == 1)
    await eventually(lambda: served.requests("ServerReflectionInfo", "OK") == 1)


async def test_unknown_method_is_not_recorded(served: Served) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await served.unary("NoSuchMethod")(b"ok")

    assert err.value.code() == Code.UNIMPLEMENTED
    assert b"NoSuchMethod" not in served.metrics.render()


async def test_model_metrics_move_their_samples() -> None:
    metrics = AdapterMetrics()
    value = metrics.registry.get_sample_value

    metrics.model_loaded("llm", 12.5)
    metrics.model_loaded("llm", 0.2)
    metrics.model_load_failed("image")
    metrics.model_unloaded("llm", "evicted")
    metrics.model_unloaded("llm", "keep_alive")
    metrics.model_unloaded("llm", "evicted")
    metrics.set_in_flight("llm", 3)
    metrics.set_queue_depth("image", 2)
    metrics.set_queue_depth("image", 1)
    metrics.set_budget(8 * 1024**3)

    assert value("adapter_model_loads_total", {"model": "llm"}) == 2
    assert value("adapter_model_load_duration_seconds_count", {"model": "llm"}) == 2
    assert value("adapter_model_load_duration_seconds_sum", {"model": "llm"}) == pytest.approx(12.7)
    assert value("adapter_model_load_duration_seconds_bucket", {"model": "llm", "le": "0.25"}) == 1
    assert value("adapter_model_load_duration_seconds_bucket", {"model": "llm", "le": "600.0"}) == 2
    assert value("adapter_model_load_failures_total", {"model": "image"}) == 1
    assert value("adapter_model_loads_total", {"model": "image"}) is None
    assert value("adapter_model_unloads_total", {"model": "llm", "reason": "evicted"}) == 2
    assert value("adapter_model_unloads_total", {"model": "llm", "reason": "keep_alive"}) == 1
    assert value("adapter_model_in_flight", {"model": "llm"}) == 3
    assert value("adapter_model_queue_depth", {"model": "image"}) == 1
    assert value("adapter_memory_budget_bytes") == 8 * 1024**3


async def test_start_http_serves_this_registry_on_the_port_it_bound() -> None:
    first, second = AdapterMetrics(), AdapterMetrics()  # own registries: no clash in one process
    first.model_loaded("llm", 1.0)
    port = await first.start_http("127.0.0.1", 0)
    try:
        assert port > 0
        body = await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/metrics")
    finally:
        first.stop_http()

    assert "adapter_rpc_requests_total" in body
    assert 'adapter_model_loads_total{model="llm"} 1.0' in body
    assert b'adapter_model_loads_total{model="llm"}' not in second.render()
    first.stop_http()  # a second stop is harmless
    with pytest.raises(OSError):
        await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/metrics")


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        body: bytes = response.read()
    return body.decode()
