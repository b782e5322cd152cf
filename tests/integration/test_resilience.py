"""Faults and shutdown on the real adapter: Triton killed under live streams, SIGTERM during
streams, and the transport limits (concurrent calls, message size).

The test model chunk_counter streams numbered chunks with a pause between them
(CHUNK_COUNTER_INTERVAL_MS), so a stream lasts as long as a test needs.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from adapter.gen.inference.v1 import inference_pb2 as pb
from adapter.gen.inference.v1 import inference_pb2_grpc as pb_grpc
from tests.harness import RunningAdapter, alive, start_adapter, stop_adapter

SLOW_STREAMS = {"PRELOAD_MODELS": "chunk_counter", "CHUNK_COUNTER_INTERVAL_MS": "20"}


@pytest.fixture
def slow_adapter(small_models: None, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[RunningAdapter]:
    env = {**SLOW_STREAMS, "IMAGE_DIR": str(tmp_path / "images"), **getattr(request, "param", {})}
    running = start_adapter(tmp_path / "adapter.log", env=env, test_models=True)
    try:
        yield running
    finally:
        stop_adapter(running)


@dataclass
class Watched:
    """A stream read in a thread: how it ended and when."""

    chunks: int = 0
    done: bool = False
    code: grpc.StatusCode | None = None
    details: str = ""
    ended_at: float = 0.0
    first_chunk: threading.Event = field(default_factory=threading.Event)


def watch(stub: pb_grpc.InferenceServiceStub, max_tokens: int) -> tuple[Watched, threading.Thread]:
    watched = Watched()

    def read() -> None:
        request = pb.GenerateStreamRequest(
            model="chunk_counter", prompt="x", options=pb.GenerationOptions(max_tokens=max_tokens)
        )
        try:
            for response in stub.GenerateStream(request, timeout=120):
                watched.chunks += 1
                watched.first_chunk.set()
                watched.done = watched.done or response.done
        except grpc.RpcError as err:
            watched.code, watched.details = err.code(), err.details() or ""
        finally:
            watched.ended_at = time.monotonic()
            watched.first_chunk.set()

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return watched, thread


def health_status(channel: grpc.Channel) -> int:
    try:
        return int(health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2).status)
    except grpc.RpcError:
        return -1


def wait_for(predicate: object, timeout_s: float, what: str) -> float:
    started = time.monotonic()
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() - started < timeout_s, f"{what} not within {timeout_s}s"
        time.sleep(0.05)
    return time.monotonic() - started


@pytest.mark.parametrize("slow_adapter", [{"TRITON_HEALTH_INTERVAL_SECONDS": "0.5"}], indirect=True)
def test_killed_triton_ends_streams_unavailable_flips_health_and_recovers(slow_adapter: RunningAdapter) -> None:
    with slow_adapter.channel() as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        streams = [watch(stub, 100_000) for _ in range(4)]
        for watched, _ in streams:
            assert watched.first_chunk.wait(30) and watched.chunks > 0
        triton = slow_adapter.triton_pid()
        old_processes = slow_adapter.child_pids()

        os.kill(triton, signal.SIGKILL)
        killed_at = time.monotonic()
        for watched, thread in streams:
            thread.join(10)
            assert watched.code == grpc.StatusCode.UNAVAILABLE, (watched.code, watched.details)
            assert watched.ended_at - killed_at < 2.0, "a stream outlived Triton by more than 2 s"
        wait_for(lambda: health_status(channel) == health_pb2.HealthCheckResponse.NOT_SERVING, 10, "NOT_SERVING")

        # The adapter restarts its Triton; health comes back and the model loads again on demand.
        wait_for(lambda: health_status(channel) == health_pb2.HealthCheckResponse.SERVING, 90, "SERVING again")
        assert slow_adapter.process.poll() is None, "the adapter itself must not restart"
        assert not any(alive(pid) for pid in old_processes), "a process of the killed Triton lives on"
        assert slow_adapter.triton_pid() != triton
        responses = list(
            stub.GenerateStream(
                pb.GenerateStreamRequest(model="chunk_counter", prompt="x", options=pb.GenerationOptions(max_tokens=3)),
                timeout=120,
            )
        )
        assert responses[-1].done and responses[-1].usage.completion_tokens == 3


@pytest.mark.parametrize("slow_adapter", [{"SHUTDOWN_GRACE_SECONDS": "3"}], indirect=True)
def test_sigterm_lets_short_streams_finish_ends_long_ones_unavailable_and_leaves_no_process(
    slow_adapter: RunningAdapter,
) -> None:
    with slow_adapter.channel() as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        short = [watch(stub, 60) for _ in range(3)]  # ~1.2 s each: within the grace period
        long = [watch(stub, 100_000) for _ in range(3)]
        for watched, _ in short + long:
            assert watched.first_chunk.wait(30)
        processes = slow_adapter.child_pids()
        slow_adapter.process.send_signal(signal.SIGTERM)
        signalled_at = time.monotonic()
        for _, thread in short + long:
            thread.join(20)
        for watched, _ in short:
            assert watched.done and watched.code is None, (watched.code, watched.details)
        for watched, _ in long:
            assert watched.code == grpc.StatusCode.UNAVAILABLE, (watched.code, watched.details)
            assert "shutting down" in watched.details
            assert watched.ended_at - signalled_at < 3 + 2.0
    assert slow_adapter.process.wait(60) == 0, slow_adapter.log_tail()
    assert not [pid for pid in processes if alive(pid)], "processes left after shutdown"


@pytest.mark.parametrize(
    "slow_adapter", [{"GRPC_MAX_CONCURRENT_RPCS": "3", "GRPC_MAX_MESSAGE_SIZE": "65536"}], indirect=True
)
def test_calls_past_the_concurrency_limit_or_message_size_are_resource_exhausted(slow_adapter: RunningAdapter) -> None:
    with slow_adapter.channel() as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        streams = [watch(stub, 100_000) for _ in range(3)]
        for watched, _ in streams:
            assert watched.first_chunk.wait(30)
        with pytest.raises(grpc.RpcError) as refused:
            stub.GetMemoryStats(pb.GetMemoryStatsRequest(), timeout=10)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # Closing the channel cancels the streams; their slots free up.
    for _, thread in streams:
        thread.join(10)
    with slow_adapter.channel() as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        wait_for(lambda: _stats_ok(stub), 10, "a call once the streams ended")
        with pytest.raises(grpc.RpcError) as refused:
            stub.GetEmbedding(pb.GetEmbeddingRequest(model="embedding", inputs=["x" * 100_000]), timeout=10)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def _stats_ok(stub: pb_grpc.InferenceServiceStub) -> bool:
    try:
        stub.GetMemoryStats(pb.GetMemoryStatsRequest(), timeout=5)
        return True
    except grpc.RpcError:
        return False


def test_health_is_not_serving_from_tritons_exit_until_it_is_back_with_the_preloaded_models(
    slow_adapter: RunningAdapter,
) -> None:
    """Polled every 100 ms from before a SIGKILL under live streams: the embedded Triton is back
    within about a second, yet health is NOT_SERVING from its exit until the preloaded model is
    loaded again (by the adapter itself, in the background), and SERVING only then."""
    with slow_adapter.channel() as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        streams = [watch(stub, 100_000) for _ in range(2)]
        for watched, _ in streams:
            assert watched.first_chunk.wait(30)
        seen: list[tuple[float, int]] = []
        loaded_when_serving: list[bool] = []
        stop = threading.Event()

        def poll() -> None:
            with slow_adapter.channel() as own:
                own_stub = pb_grpc.InferenceServiceStub(own)
                while not stop.is_set():
                    status = health_status(own)
                    seen.append((time.monotonic(), status))
                    if status == health_pb2.HealthCheckResponse.SERVING and len(seen) > 1 and seen[-2][1] != status:
                        # The moment health says SERVING again, the preloaded model must be loaded.
                        snapshot = own_stub.GetMemoryStats(pb.GetMemoryStatsRequest(), timeout=10).snapshot
                        states = {m.model: m.state for m in snapshot.models}
                        loaded_when_serving.append(states.get("chunk_counter") == pb.MODEL_STATE_LOADED)
                    time.sleep(0.1)

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        time.sleep(0.5)
        os.kill(slow_adapter.triton_pid(), signal.SIGKILL)
        killed_at = time.monotonic()
        for watched, thread in streams:
            thread.join(10)
            assert watched.code == grpc.StatusCode.UNAVAILABLE, (watched.code, watched.details)
        try:
            wait_for(lambda: bool(loaded_when_serving), 90, "SERVING again")
        finally:
            stop.set()
            poller.join(10)
        before = [status for at, status in seen if at < killed_at]
        assert before and all(s == health_pb2.HealthCheckResponse.SERVING for s in before)
        down = [at for at, status in seen if at >= killed_at and status == health_pb2.HealthCheckResponse.NOT_SERVING]
        assert down, f"health never left SERVING: {seen}"
        assert down[0] - killed_at < 1.0, "NOT_SERVING came later than a second after Triton's exit"
        # NOT_SERVING without a break until the model was back (no SERVING while it was not loaded).
        back = next(at for at, status in seen if at > down[0] and status == health_pb2.HealthCheckResponse.SERVING)
        assert all(s != health_pb2.HealthCheckResponse.SERVING for at, s in seen if down[0] <= at < back)
        assert loaded_when_serving == [True]
        log = slow_adapter.log_path.read_text(errors="replace")
        assert "embedded tritonserver restarted" in log and "PRELOAD_MODELS are loaded" in log
        responses = list(
            stub.GenerateStream(
                pb.GenerateStreamRequest(model="chunk_counter", prompt="x", options=pb.GenerationOptions(max_tokens=3)),
                timeout=30,
            )
        )
        assert responses[-1].done and responses[-1].timings.load_duration.ToTimedelta().total_seconds() == 0


def test_health_follows_an_external_triton_from_its_first_failed_probe_to_its_return_with_models(
    small_models: None, tmp_path: Path
) -> None:
    """TRITON_URL mode (as in Docker): a Triton the adapter does not supervise goes away and a fresh
    one (nothing loaded) takes its ports. NOT_SERVING from the watcher's first failed probe; SERVING
    again only once the adapter has loaded PRELOAD_MODELS into the new Triton itself."""
    import asyncio

    from adapter.triton.embedded import EmbeddedTriton, EmbeddedTritonOptions
    from tests.harness import compose_model_repository, free_port

    repository = compose_model_repository(tmp_path / "model_repository")
    grpc_port, metrics_port = free_port(), free_port()
    options = EmbeddedTritonOptions(
        model_repository=repository,
        grpc_port=grpc_port,
        metrics_port=metrics_port,
        startup_timeout_s=60,
        extra_env=(("CHUNK_COUNTER_INTERVAL_MS", "20"),),
    )
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()

    def run(coroutine: object) -> object:
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result(120)  # type: ignore[arg-type]

    first = EmbeddedTriton(options)
    run(first.start())
    stop = threading.Event()
    adapter = None
    second = None
    try:
        adapter = start_adapter(
            tmp_path / "adapter.log",
            env={
                "TRITON_URL": f"127.0.0.1:{grpc_port}",
                "TRITON_METRICS_URL": f"http://127.0.0.1:{metrics_port}/metrics",
                "MODEL_REPOSITORY": str(repository),
                "PRELOAD_MODELS": "chunk_counter",
                "TRITON_HEALTH_INTERVAL_SECONDS": "0.5",
                "IMAGE_DIR": str(tmp_path / "images"),
            },
        )
        with adapter.channel() as channel:
            stub = pb_grpc.InferenceServiceStub(channel)
            seen: list[tuple[float, int]] = []

            loaded_when_serving: list[bool] = []

            def poll() -> None:
                while not stop.is_set():
                    status = health_status(channel)
                    seen.append((time.monotonic(), status))
                    if status == health_pb2.HealthCheckResponse.SERVING and len(seen) > 1 and seen[-2][1] != status:
                        snapshot = stub.GetMemoryStats(pb.GetMemoryStatsRequest(), timeout=10).snapshot
                        states = {m.model: m.state for m in snapshot.models}
                        loaded_when_serving.append(states.get("chunk_counter") == pb.MODEL_STATE_LOADED)
                    time.sleep(0.1)

            poller = threading.Thread(target=poll, daemon=True)
            poller.start()
            leaving_at = time.monotonic()
            run(first.stop())  # SIGTERM: it stops answering, unloads, exits
            gone_at = time.monotonic()
            wait_for(lambda: seen[-1][1] == health_pb2.HealthCheckResponse.NOT_SERVING, 5, "NOT_SERVING")
            down_at = next(at for at, s in seen if at >= leaving_at and s == health_pb2.HealthCheckResponse.NOT_SERVING)
            # Within one probe (interval 0.5 s, timeout 2 s) of its exit, at the latest.
            assert down_at - gone_at < 0.5 + 2.0 + 0.5, "NOT_SERVING later than one probe after Triton left"

            relaunch_at = time.monotonic()
            second = EmbeddedTriton(options)  # a fresh Triton: nothing loaded
            run(second.start())
            wait_for(lambda: bool(loaded_when_serving), 90, "SERVING again")
            stop.set()
            poller.join(5)
            # NOT_SERVING throughout the outage, and SERVING again only with the model loaded into the
            # new Triton by the adapter itself (no request asked for it).
            assert all(s != health_pb2.HealthCheckResponse.SERVING for at, s in seen if down_at <= at < relaunch_at)
            assert loaded_when_serving == [True]
            responses = list(
                stub.GenerateStream(
                    pb.GenerateStreamRequest(
                        model="chunk_counter", prompt="x", options=pb.GenerationOptions(max_tokens=3)
                    ),
                    timeout=30,
                )
            )
            assert responses[-1].done and responses[-1].timings.load_duration.ToTimedelta().total_seconds() == 0
    finally:
        stop.set()
        if adapter is not None:
            stop_adapter(adapter)
        for triton in (first, second):
            if triton is not None:
                run(triton.stop())
        loop.call_soon_threadsafe(loop.stop)
