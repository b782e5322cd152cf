"""The scheduler's events: each carries its kind and a structured cause, which the unload metric
counts by (never by matching reason text); the reasons people read stay as they were."""

from __future__ import annotations

import pytest

from adapter.core import errors
from adapter.metrics import AdapterMetrics
from adapter.scheduling.scheduler import FAILED, UNLOADED, Cause, EventKind, ModelState, Scheduler, SchedulerEvent
from tests.unit.test_scheduler import make, settle, use_once


def causes(events: list[SchedulerEvent]) -> list[tuple[str, EventKind, Cause, str]]:
    return [(e.model, e.kind, e.cause, e.reason) for e in events]


def unloads(metrics: AdapterMetrics, model: str, label: str) -> float:
    return metrics.registry.get_sample_value("adapter_model_unloads_total", {"model": model, "reason": label}) or 0


def counted(scheduler: Scheduler) -> AdapterMetrics:
    metrics = AdapterMetrics()
    scheduler.add_listener(metrics.model_event)
    return metrics


async def test_states_and_kinds_are_enums_that_still_read_as_their_old_words() -> None:
    assert ModelState.LOADED == "loaded" and UNLOADED is ModelState.UNLOADED and FAILED == "failed"
    assert EventKind.EVICTED == "evicted" and EventKind.LOAD_FAILED == "load_failed"
    scheduler, _, _, events = make()
    await scheduler.load("a")
    assert (await scheduler.slot("a")).state is ModelState.LOADED
    assert causes(events) == [("a", EventKind.LOADED, Cause.REQUESTED, "requested")]


async def test_eviction_clear_and_an_unload_command_each_have_their_cause() -> None:
    scheduler, _, clock, events = make(budget=250)
    await use_once(scheduler, clock, "a")
    await use_once(scheduler, clock, "b")
    await use_once(scheduler, clock, "c")  # evicts a, the least recently used
    assert await scheduler.unload("b")
    await scheduler.clear(include_pinned=False, wait_for_idle_s=0)
    assert causes(events)[2:] == [
        ("a", EventKind.EVICTED, Cause.EVICTED, "evicted to make room for c"),
        ("c", EventKind.LOADED, Cause.REQUESTED, "requested"),
        ("b", EventKind.UNLOADED, Cause.REQUESTED, "requested"),
        ("c", EventKind.UNLOADED, Cause.CLEARED, "ClearMemory"),
    ]


async def test_both_kinds_of_keep_alive_unload_are_keep_alive_expired() -> None:
    scheduler, _, clock, events = make(budget=1000, default_keep_alive_s=60)
    async with scheduler.use("a", keep_alive_s=0):
        pass
    await settle()
    await use_once(scheduler, clock, "b")
    clock.now += 61
    assert await scheduler.expire_idle() == ["b"]
    unloaded = [(e.model, e.kind, e.cause, e.reason) for e in events if e.kind is not EventKind.LOADED]
    assert unloaded == [
        ("a", EventKind.UNLOADED, Cause.KEEP_ALIVE_EXPIRED, "keep-alive 0: unloaded after the request"),
        ("b", EventKind.UNLOADED, Cause.KEEP_ALIVE_EXPIRED, "keep-alive expired"),
    ]


async def test_a_failed_load_is_load_failed_with_triton_s_message() -> None:
    scheduler, triton, _, events = make()
    triton.fail["a"] = "boom"
    with pytest.raises(errors.FailedPrecondition):
        await scheduler.load("a")
    assert causes(events) == [("a", EventKind.LOAD_FAILED, Cause.REQUESTED, "boom")]


async def test_models_triton_lost_are_lost() -> None:
    scheduler, triton, _, events = make(budget=1000)
    await scheduler.load("a")
    await scheduler.load("b")
    scheduler.model_missing("a")  # Triton answered NOT_FOUND for it

    async def index() -> dict[str, tuple[str, str]]:
        return {"c": ("READY", "")}  # restarted: b is gone too

    triton.repository_index = index  # type: ignore[attr-defined]
    assert await scheduler.resync() == ["b"]
    lost = [e for e in events if e.kind is not EventKind.LOADED]
    assert causes(lost) == [
        ("a", EventKind.UNLOADED, Cause.LOST, "Triton reported it not loaded"),
        ("b", EventKind.UNLOADED, Cause.LOST, "Triton no longer has it loaded (restarted?)"),
    ]


async def test_a_model_triton_lost_is_counted_under_its_own_label() -> None:
    scheduler, _, _, _ = make(budget=1000)
    metrics = counted(scheduler)
    await scheduler.load("a")
    scheduler.model_missing("a")
    assert unloads(metrics, "a", "lost") == 1
    assert unloads(metrics, "a", "requested") == 0, "a model Triton lost was not unloaded on request"
    scheduler.model_missing("a")  # already unloaded: nothing more happened
    assert unloads(metrics, "a", "lost") == 1


async def test_the_unload_metric_counts_each_cause_under_its_label() -> None:
    scheduler, triton, clock, _ = make(budget=250, default_keep_alive_s=60)
    metrics = counted(scheduler)
    await use_once(scheduler, clock, "a")
    await use_once(scheduler, clock, "b")
    await use_once(scheduler, clock, "c")  # a evicted
    assert await scheduler.unload("b")  # requested
    await scheduler.clear(include_pinned=False, wait_for_idle_s=0)  # c cleared
    await use_once(scheduler, clock, "a")
    clock.now += 61
    assert await scheduler.expire_idle() == ["a"]  # keep-alive
    triton.fail["b"] = "boom"
    with pytest.raises(errors.FailedPrecondition):  # counted as a failure, not an unload
        await scheduler.load("b")
    await use_once(scheduler, clock, "c")
    scheduler.model_missing("c")  # lost

    assert unloads(metrics, "a", "evicted") == 1
    assert unloads(metrics, "a", "keep_alive") == 1
    assert unloads(metrics, "b", "requested") == 1
    assert unloads(metrics, "c", "clear") == 1
    assert unloads(metrics, "c", "lost") == 1
    total = metrics.registry.get_sample_value
    assert sum(unloads(metrics, model, cause.value) for model in "abc" for cause in Cause) == 5
    assert total("adapter_model_loads_total", {"model": "a"}) == 2
    assert total("adapter_model_loads_total", {"model": "c"}) == 2
    assert total("adapter_model_load_failures_total", {"model": "b"}) == 1
