"""The model scheduler for real: budget, LRU eviction, keep-alive, pinning, ClearMemory, ManageVRAM.

Sizes come from the session adapter (the same three models, measured by their own processes);
a second adapter then gets a budget that fits any two of them but not all three.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from adapter.gen.inference.v1 import inference_pb2 as pb
from adapter.gen.inference.v1 import inference_pb2_grpc as pb_grpc
from tests.harness import RunningAdapter, alive, rss_bytes, start_adapter, stop_adapter, stub_pids

MODELS = ("llm", "embedding", "image")
# States in which a model counts against the budget.
HOLDING = (pb.MODEL_STATE_LOADED, pb.MODEL_STATE_LOADING, pb.MODEL_STATE_UNLOADING)


def stats(stub: pb_grpc.InferenceServiceStub) -> dict[str, pb.ModelMemory]:
    snapshot = stub.GetMemoryStats(pb.GetMemoryStatsRequest(), timeout=30).snapshot
    return {m.model: m for m in snapshot.models}


def loaded(stub: pb_grpc.InferenceServiceStub) -> set[str]:
    return {name for name, m in stats(stub).items() if m.state == pb.MODEL_STATE_LOADED}


def use(stub: pb_grpc.InferenceServiceStub, model: str, keep_alive_s: float | None = None) -> None:
    keep = Duration(seconds=int(keep_alive_s)) if keep_alive_s is not None else None
    if model == "llm":
        request = pb.ChatStreamRequest(
            model="llm",
            messages=[pb.ChatMessage(role="user", content="hi")],
            options=pb.GenerationOptions(max_tokens=2),
            keep_alive=keep,
        )
        assert list(stub.ChatStream(request, timeout=120))[-1].done
    elif model == "embedding":
        stub.GetEmbedding(pb.GetEmbeddingRequest(model="embedding", inputs=["hi"], keep_alive=keep), timeout=120)
    else:
        job = stub.GenerateImage(
            pb.GenerateImageRequest(
                model="image", prompt="x", options=pb.ImageOptions(width=32, height=32, steps=1), keep_alive=keep
            ),
            timeout=120,
        ).job_id
        deadline = time.monotonic() + 120
        while True:
            status = stub.CheckImageStatus(pb.CheckImageStatusRequest(job_id=job), timeout=30)
            if status.state == pb.JOB_STATE_SUCCEEDED:
                return
            assert status.state != pb.JOB_STATE_FAILED, status.error_message
            assert time.monotonic() < deadline
            time.sleep(0.05)


def test_stats_report_devices_budget_and_each_models_own_memory(stub: pb_grpc.InferenceServiceStub) -> None:
    snapshot = stub.GetMemoryStats(pb.GetMemoryStatsRequest(), timeout=30).snapshot
    assert snapshot.devices and snapshot.devices[0].total_bytes > snapshot.devices[0].used_bytes > 0
    assert 0 < snapshot.budget_bytes <= snapshot.devices[0].total_bytes
    models = {m.model: m for m in snapshot.models}
    assert set(MODELS) <= set(models)
    for name in MODELS:
        model = models[name]
        assert model.state == pb.MODEL_STATE_LOADED
        assert model.memory_source == "metric" and model.memory_bytes > 50_000_000
        assert model.HasField("expires_at")  # idle, unpinned: keep-alive will unload it


@pytest.fixture(scope="module")
def sizes(stub: pb_grpc.InferenceServiceStub) -> dict[str, int]:
    for model in MODELS:
        use(stub, model)  # sizes after some work, as they will be in the budgeted adapter
    return {name: m.memory_bytes for name, m in stats(stub).items() if name in MODELS}


@pytest.fixture(scope="module")
def budgeted(sizes: dict[str, int], tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningAdapter]:
    pair = max(sizes[a] + sizes[b] for a in MODELS for b in MODELS if a < b)
    total = sum(sizes.values())
    budget = (pair + total) // 2  # any two fit with room; all three do not
    estimates = ",".join(f"{name}={size}" for name, size in sizes.items())
    workdir = tmp_path_factory.mktemp("budgeted")
    running = start_adapter(
        workdir / "adapter.log",
        env={
            "PRELOAD_MODELS": "",
            "VRAM_BUDGET_BYTES": str(budget),
            "MODEL_MEMORY_ESTIMATES": estimates,
            "IMAGE_DIR": str(workdir / "images"),
            # A short wait queue per model: under contention requests are refused quickly
            # (RESOURCE_EXHAUSTED) rather than queueing behind minutes of model swaps.
            "MODEL_MAX_LOAD_WAITERS": "4",
        },
    )
    try:
        yield running
    finally:
        stop_adapter(running)


@pytest.fixture(scope="module")
def bstub(budgeted: RunningAdapter) -> Iterator[pb_grpc.InferenceServiceStub]:
    with grpc.insecure_channel(budgeted.address) as channel:
        yield pb_grpc.InferenceServiceStub(channel)


def test_a_third_model_evicts_the_least_recently_used_and_its_process_ends(
    budgeted: RunningAdapter, bstub: pb_grpc.InferenceServiceStub
) -> None:
    use(bstub, "llm")
    use(bstub, "embedding")
    assert loaded(bstub) == {"llm", "embedding"}
    llm_stubs = stub_pids(budgeted, "llm")
    assert llm_stubs
    use(bstub, "image")
    assert loaded(bstub) == {"embedding", "image"}  # llm was the least recently used
    assert not any(alive(pid) for pid in llm_stubs), "the evicted model's process lives on"
    # And it ended cleanly: a pb_utils object freed after the stub's shared memory segfaults it.
    time.sleep(1)  # the stub's last lines reach the adapter's log
    assert "Segfault encountered" not in budgeted.log_path.read_text(errors="replace"), budgeted.log_tail(60)


def test_manage_vram_streams_see_loads_caused_by_other_clients(
    budgeted: RunningAdapter, bstub: pb_grpc.InferenceServiceStub
) -> None:
    commands: queue.Queue[pb.ManageVRAMRequest | None] = queue.Queue()
    commands.put(pb.ManageVRAMRequest(command_id="status", get_status=pb.GetStatusCommand()))

    def requests() -> Iterator[pb.ManageVRAMRequest]:
        while (command := commands.get()) is not None:
            yield command

    watchers = [bstub.ManageVRAM(requests(), timeout=120) for _ in range(1)]
    seen: list[pb.ManageVRAMResponse] = []
    first = next(watchers[0])
    assert first.result.command_id == "status" and first.result.ok and first.result.snapshot.models

    def collect() -> None:
        for response in watchers[0]:
            seen.append(response)

    reader = threading.Thread(target=collect, daemon=True)
    reader.start()
    use(bstub, "llm")  # another client: needs room, so embedding (LRU) is evicted
    deadline = time.monotonic() + 30
    while not any(r.event.model == "llm" and r.event.kind == pb.MODEL_EVENT_KIND_LOADED for r in seen):
        assert time.monotonic() < deadline, f"no loaded event: {seen}"
        time.sleep(0.05)
    evicted = [r.event for r in seen if r.event.kind == pb.MODEL_EVENT_KIND_EVICTED]
    assert [e.model for e in evicted] == ["embedding"] and "llm" in evicted[0].reason

    commands.put(pb.ManageVRAMRequest(command_id="bad", load=pb.LoadModelCommand(model="no-such-model")))
    commands.put(pb.ManageVRAMRequest(command_id="pin", pin=pb.PinModelCommand(model="llm")))
    deadline = time.monotonic() + 30
    while not {"bad", "pin"} <= {r.result.command_id for r in seen}:
        assert time.monotonic() < deadline, seen
        time.sleep(0.05)
    results = {r.result.command_id: r.result for r in seen if r.HasField("result")}
    assert not results["bad"].ok and results["bad"].error_code == "NOT_FOUND"
    assert results["pin"].ok  # the stream stayed open after the bad command
    commands.put(None)
    reader.join(10)


def test_a_pinned_model_survives_clear_memory_and_the_freed_memory_is_what_the_processes_held(
    budgeted: RunningAdapter, bstub: pb_grpc.InferenceServiceStub
) -> None:
    # llm is pinned by the previous test; image is loaded and idle.
    assert stats(bstub)["llm"].pinned
    image_stubs = stub_pids(budgeted, "image")
    held = rss_bytes(image_stubs)
    result = bstub.ClearMemory(pb.ClearMemoryRequest(), timeout=120)
    assert "image" in result.unloaded_models and "llm" not in result.unloaded_models
    assert any(s.startswith("llm") and "pinned" in s for s in result.skipped_models)
    assert loaded(bstub) == {"llm"}
    assert not any(alive(pid) for pid in image_stubs)
    assert abs(result.freed_bytes - held) < 0.25 * held, (result.freed_bytes, held)
    result = bstub.ClearMemory(pb.ClearMemoryRequest(include_pinned=True), timeout=120)
    assert result.unloaded_models == ["llm"] and loaded(bstub) == set()


def test_keep_alive_zero_unloads_the_model_right_after_the_request(bstub: pb_grpc.InferenceServiceStub) -> None:
    use(bstub, "embedding", keep_alive_s=0)
    deadline = time.monotonic() + 30
    while stats(bstub)["embedding"].state != pb.MODEL_STATE_UNLOADED:
        assert time.monotonic() < deadline, "keep-alive 0 did not unload the model"
        time.sleep(0.1)


def test_a_model_busy_with_a_long_stream_is_not_evicted(bstub: pb_grpc.InferenceServiceStub) -> None:
    use(bstub, "llm")
    use(bstub, "embedding")  # both loaded; llm is the least recently used
    stream = bstub.ChatStream(
        pb.ChatStreamRequest(
            model="llm",
            messages=[pb.ChatMessage(role="user", content="x")],
            options=pb.GenerationOptions(max_tokens=3000),
        ),
        timeout=120,
    )
    next(stream)  # llm is now busy
    try:
        use(bstub, "image")  # needs room: embedding must go, not the busy llm
        assert loaded(bstub) == {"llm", "image"}
    finally:
        stream.cancel()


def test_the_adapter_publishes_rpc_and_model_metrics(
    stub: pb_grpc.InferenceServiceStub, adapter: RunningAdapter
) -> None:
    from tests.integration.triton_direct import metric_total

    use(stub, "llm")
    with pytest.raises(grpc.RpcError):
        list(stub.ChatStream(pb.ChatStreamRequest(model="llm"), timeout=30))
    assert metric_total(adapter.metrics_url, "adapter_rpc_requests_total", method="ChatStream", code="OK") >= 1
    assert (
        metric_total(adapter.metrics_url, "adapter_rpc_requests_total", method="ChatStream", code="INVALID_ARGUMENT")
        >= 1
    )
    assert metric_total(adapter.metrics_url, "adapter_model_loads_total", model="llm") >= 1
    assert metric_total(adapter.metrics_url, "adapter_memory_budget_bytes") > 0


def test_200_concurrent_requests_across_three_models_never_pass_a_budget_for_two(
    bstub: pb_grpc.InferenceServiceStub, budgeted: RunningAdapter
) -> None:
    budget = bstub.GetMemoryStats(pb.GetMemoryStatsRequest(), timeout=30).snapshot.budget_bytes
    violations: list[str] = []
    samples = 0
    done = threading.Event()

    def sample() -> None:
        # Throughout the run: what the scheduler holds never passes the budget, and a model with
        # requests in flight is never being unloaded.
        nonlocal samples
        while not done.is_set():
            models = stats(bstub).values()
            held = sum(m.memory_bytes for m in models if m.state in HOLDING)
            if held > budget:
                violations.append(f"{held} bytes held > budget {budget}: {[(m.model, m.state) for m in models]}")
            violations.extend(
                f"{m.model} unloading with {m.in_flight} in flight"
                for m in models
                if m.in_flight and m.state in (pb.MODEL_STATE_UNLOADING, pb.MODEL_STATE_UNLOADED)
            )
            samples += 1
            time.sleep(0.02)

    outcomes: list[str] = []
    start = threading.Barrier(200)

    def one(index: int) -> None:
        model = MODELS[index % 3]
        start.wait()
        try:
            use(bstub, model)
            outcomes.append("OK")
        except grpc.RpcError as err:
            outcomes.append(f"{err.code().name}: {err.details()}")
        except AssertionError as err:  # an image job that failed: the budget must be the reason
            outcomes.append(f"JOB FAILED: {err}")

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    workers = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(200)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(300)
    done.set()
    sampler.join(10)

    assert len(outcomes) == 200, "some requests never finished"
    assert not violations, violations[:5]
    assert samples > 20
    refused = [o for o in outcomes if o != "OK"]
    unexpected = [
        o
        for o in refused
        if not o.startswith("RESOURCE_EXHAUSTED") and not (o.startswith("JOB FAILED") and "budget" in o)
    ]
    assert not unexpected, (unexpected[:5], budgeted.log_tail(80))
    assert outcomes.count("OK") >= 3, "the scheduler served almost nothing"


def _expires_in(stub: pb_grpc.InferenceServiceStub, model: str) -> float | None:
    entry = stats(stub)[model]
    return entry.expires_at.ToDatetime().timestamp() - time.time() if entry.HasField("expires_at") else None


def test_a_request_keep_alive_governs_only_the_time_after_that_request(
    bstub: pb_grpc.InferenceServiceStub, budgeted: RunningAdapter
) -> None:
    """0 then unset: only the first request unloads the model; later ones take the server default
    (one load for them all). Negative then unset: kept for good, then the default again."""
    use(bstub, "embedding", keep_alive_s=0)
    deadline = time.monotonic() + 30
    while stats(bstub)["embedding"].state != pb.MODEL_STATE_UNLOADED:
        assert time.monotonic() < deadline, "keep-alive 0 did not unload the model"
        time.sleep(0.1)
    use(bstub, "embedding")
    processes = stub_pids(budgeted, "embedding")
    for _ in range(2):
        use(bstub, "embedding")
        time.sleep(1.5)  # a keep-alive 0 unload would have started by now
        assert stats(bstub)["embedding"].state == pb.MODEL_STATE_LOADED
        expires = _expires_in(bstub, "embedding")
        assert expires is not None and 250 < expires <= 301, expires  # the server default, 300 s
    assert stub_pids(budgeted, "embedding") == processes, "a later request loaded the model again"

    use(bstub, "embedding", keep_alive_s=-5)
    assert _expires_in(bstub, "embedding") is None  # kept loaded
    use(bstub, "embedding")
    expires = _expires_in(bstub, "embedding")
    assert expires is not None and 250 < expires <= 301, expires
