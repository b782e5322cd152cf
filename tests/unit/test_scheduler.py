"""The scheduler's decisions, with a fake Triton, fake memory readings and a fake clock."""

from __future__ import annotations

import asyncio

import pytest

from adapter.core import errors
from adapter.scheduling.scheduler import LOADED, UNLOADED, Scheduler, SchedulerEvent
from adapter.triton.memory_readings import DeviceReading, MemoryReading

SIZE = {"a": 100, "b": 100, "c": 100, "big": 500}


class FakeTriton:
    def __init__(self, scheduler_ref: list[Scheduler], load_delay: float = 0.0) -> None:
        self.loaded: set[str] = set()
        self.loads: list[str] = []
        self.unloads: list[str] = []
        self.fail: dict[str, str] = {}
        self.load_delay = load_delay
        self._scheduler = scheduler_ref
        self.peak_used = 0

    async def model_names(self) -> list[str]:
        return sorted(SIZE)

    async def load(self, model: str) -> None:
        scheduler = self._scheduler[0]
        # The budget is never passed: what is loaded or loading fits, this model included.
        self.peak_used = max(self.peak_used, scheduler.used_bytes())
        assert scheduler.used_bytes() <= scheduler.budget_bytes, "budget passed"
        self.loads.append(model)
        await asyncio.sleep(self.load_delay)
        if model in self.fail:
            raise errors.FailedPrecondition(self.fail[model])
        self.loaded.add(model)

    async def unload(self, model: str) -> None:
        self.unloads.append(model)
        self.loaded.discard(model)


class FakeProbe:
    def __init__(self, triton: FakeTriton) -> None:
        self.triton = triton

    async def read(self) -> MemoryReading:
        used = sum(SIZE[m] for m in self.triton.loaded)
        return MemoryReading([DeviceReading("cpu", 10_000, used)], {m: SIZE[m] for m in self.triton.loaded})


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(budget: int = 250, **kwargs: object) -> tuple[Scheduler, FakeTriton, Clock, list[SchedulerEvent]]:
    ref: list[Scheduler] = []
    triton = FakeTriton(ref, load_delay=float(kwargs.pop("load_delay", 0.0)))  # type: ignore[arg-type]
    clock = Clock()
    scheduler = Scheduler(
        triton,
        FakeProbe(triton),
        budget_bytes=budget,
        budget_fraction=0.9,
        clock=clock,
        **{"declared_memory": lambda name: SIZE[name], **kwargs},  # type: ignore[arg-type]
    )
    ref.append(scheduler)
    events: list[SchedulerEvent] = []
    scheduler.add_listener(events.append)
    return scheduler, triton, clock, events


async def use_once(scheduler: Scheduler, clock: Clock, model: str) -> None:
    clock.now += 1
    async with scheduler.use(model):
        pass


async def test_many_waiting_requests_share_one_load() -> None:
    scheduler, triton, _, _ = make(load_delay=0.05)

    async def request() -> float:
        async with scheduler.use("a") as waited:
            return waited

    waits = await asyncio.gather(*(request() for _ in range(20)))
    assert triton.loads == ["a"]
    assert all(w >= 0 for w in waits)


async def test_the_least_recently_used_idle_model_is_evicted_first() -> None:
    scheduler, triton, clock, events = make(budget=250)
    await use_once(scheduler, clock, "a")
    await use_once(scheduler, clock, "b")
    await use_once(scheduler, clock, "a")  # now b is the least recently used
    await use_once(scheduler, clock, "c")
    assert triton.unloads == ["b"]
    assert triton.loaded == {"a", "c"}
    assert [e.kind for e in events if e.model == "b"] == ["loaded", "evicted"]
    assert "c" in next(e.reason for e in events if e.kind == "evicted")


async def test_a_model_with_requests_in_flight_is_never_evicted() -> None:
    scheduler, triton, clock, _ = make(budget=250)
    await use_once(scheduler, clock, "b")
    async with scheduler.use("a"):  # a is busy and older than... a is used now, b idle
        clock.now -= 100  # make a look least recently used: busy must still win
        await use_once(scheduler, clock, "c")
        assert "a" not in triton.unloads and triton.unloads == ["b"]


async def test_nothing_idle_to_evict_is_resource_exhausted_with_needed_and_free() -> None:
    scheduler, triton, _, _ = make(budget=250)
    async with scheduler.use("a"), scheduler.use("b"):
        with pytest.raises(errors.ResourceExhausted) as caught:
            async with scheduler.use("c"):
                pass
    assert "needs 100 bytes" in caught.value.message and "only 50" in caught.value.message
    assert triton.unloads == []


async def test_a_model_larger_than_the_budget_is_refused_without_evicting() -> None:
    scheduler, triton, clock, _ = make(budget=250)
    await use_once(scheduler, clock, "a")
    with pytest.raises(errors.ResourceExhausted, match="needs 500"):
        await scheduler.load("big")
    assert triton.loaded == set() or "big" not in triton.loaded


async def test_pinned_models_stay_and_are_skipped_by_clear_unless_included() -> None:
    scheduler, triton, clock, _ = make(budget=250)
    await use_once(scheduler, clock, "a")
    await scheduler.pin("a")
    await use_once(scheduler, clock, "b")
    await use_once(scheduler, clock, "c")  # must evict b, not the older but pinned a
    assert triton.unloads == ["b"]
    result = await scheduler.clear(include_pinned=False, wait_for_idle_s=0)
    assert result.unloaded == ["c"] and result.skipped == ["a (pinned)"] and result.freed_bytes == 100
    result = await scheduler.clear(include_pinned=True, wait_for_idle_s=0)
    assert result.unloaded == ["a"]
    assert triton.loaded == set()


async def test_keep_alive_unloads_idle_models_after_their_time_only() -> None:
    scheduler, triton, clock, _ = make(budget=1000, default_keep_alive_s=60)
    await use_once(scheduler, clock, "a")
    await scheduler.set_keep_alive("b", None)
    await use_once(scheduler, clock, "b")  # a was last used one second before b
    clock.now += 58
    assert await scheduler.expire_idle() == []
    clock.now += 1.5
    assert await scheduler.expire_idle() == ["a"]
    clock.now += 10_000
    assert await scheduler.expire_idle() == []  # b is kept forever
    assert triton.loaded == {"b"}


async def test_keep_alive_zero_unloads_right_after_the_request() -> None:
    scheduler, triton, _, events = make(budget=1000)
    async with scheduler.use("a", keep_alive_s=0):
        assert triton.loaded == {"a"}
    for _ in range(10):
        await asyncio.sleep(0)
    assert triton.loaded == set()
    assert events[-1].kind == "unloaded"


async def test_a_busy_model_does_not_expire() -> None:
    scheduler, triton, clock, _ = make(budget=1000, default_keep_alive_s=1)
    async with scheduler.use("a"):
        clock.now += 100
        assert await scheduler.expire_idle() == []
    assert "a" in triton.loaded


async def test_the_wait_queue_is_bounded() -> None:
    scheduler, triton, _, _ = make(load_delay=0.2, max_waiting=3)

    async def request() -> None:
        async with scheduler.use("a"):
            pass

    results = await asyncio.gather(*(request() for _ in range(5)), return_exceptions=True)
    refused = [r for r in results if isinstance(r, errors.ResourceExhausted)]
    assert len(refused) == 2 and all(r is None for r in results if not isinstance(r, Exception))


async def test_a_failed_load_is_failed_precondition_and_a_later_request_retries() -> None:
    scheduler, triton, _, events = make()
    triton.fail["a"] = "load failed for model 'a': RuntimeError: boom"
    with pytest.raises(errors.FailedPrecondition, match="boom"):
        await scheduler.load("a")
    assert (await scheduler.slot("a")).state == "failed"
    assert events[-1].kind == "load_failed"
    del triton.fail["a"]
    await scheduler.load("a")
    assert (await scheduler.slot("a")).state == LOADED


async def test_unknown_model_is_not_found() -> None:
    scheduler, _, _, _ = make()
    with pytest.raises(errors.NotFound, match="available: a, b, big, c"):
        await scheduler.load("zzz")


async def test_memory_comes_from_the_models_own_metric_after_a_load() -> None:
    scheduler, _, _, _ = make(budget=1000, declared_memory=lambda name: 1)  # type: ignore[arg-type]
    slot = await scheduler.slot("a")
    assert (slot.memory_bytes, slot.memory_source) == (1, "declared")
    await scheduler.load("a")
    assert (slot.memory_bytes, slot.memory_source) == (100, "metric")


async def test_unload_waits_for_in_flight_requests() -> None:
    scheduler, triton, _, _ = make(budget=1000)
    release = asyncio.Event()

    async def busy() -> None:
        async with scheduler.use("a"):
            await release.wait()

    task = asyncio.create_task(busy())
    await asyncio.sleep(0.01)
    unload = asyncio.create_task(scheduler.unload("a", wait_s=5))
    await asyncio.sleep(0.05)
    assert "a" in triton.loaded and not unload.done()
    release.set()
    await task
    assert await unload is True
    assert (await scheduler.slot("a")).state == UNLOADED


async def test_under_random_load_the_budget_is_never_passed() -> None:
    scheduler, triton, _, _ = make(budget=250, load_delay=0.001)
    import random

    rng = random.Random(7)

    async def request(i: int) -> None:
        try:
            async with scheduler.use(rng.choice("abc")):
                await asyncio.sleep(rng.random() * 0.01)
        except errors.ResourceExhausted:
            pass

    await asyncio.gather(*(request(i) for i in range(200)))
    assert triton.peak_used <= 250


async def test_a_model_its_waiters_just_loaded_is_not_evicted_before_they_use_it() -> None:
    # Budget for one: requests for a and b arrive together. Without the rule, b's load evicts a
    # the moment it is loaded (its waiters have not run yet), and the waiters of a reload it,
    # evicting b: the swaps never end. With it, b is refused and a's requests are served.
    scheduler, triton, _, _ = make(budget=150, load_delay=0.01)

    async def request(model: str) -> str:
        try:
            async with scheduler.use(model):
                await asyncio.sleep(0)
            return "ok"
        except errors.ResourceExhausted:
            return "refused"

    outcomes = await asyncio.wait_for(asyncio.gather(*(request(m) for m in "abababab")), 5)
    assert outcomes.count("ok") >= 4
    assert len(triton.loads) <= 2, triton.loads
    assert set(outcomes) <= {"ok", "refused"}


async def test_queued_work_keeps_its_model_from_eviction_keep_alive_and_clear() -> None:
    scheduler, triton, clock, _ = make(budget=250, default_keep_alive_s=10)
    await use_once(scheduler, clock, "a")
    await use_once(scheduler, clock, "b")
    scheduler.add_queued("a", 1)  # e.g. an image job waiting for its turn
    clock.now += 60
    assert await scheduler.expire_idle() == ["b"]  # a's keep-alive ran out too, but work waits for it
    await use_once(scheduler, clock, "b")
    await use_once(scheduler, clock, "c")  # a is the least recently used, but b is the idle one
    assert triton.loaded == {"a", "c"} and "a" not in triton.unloads
    result = await scheduler.clear(include_pinned=False, wait_for_idle_s=0)
    assert result.unloaded == ["c"] and result.skipped == ["a (busy: 0 in flight, 0 waiting, 1 queued)"]
    scheduler.add_queued("a", -1)
    assert (await scheduler.clear(include_pinned=False, wait_for_idle_s=0)).unloaded == ["a"]


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


async def test_a_request_keep_alive_of_zero_governs_only_the_time_after_that_request() -> None:
    scheduler, triton, clock, _ = make(budget=1000, default_keep_alive_s=60)
    async with scheduler.use("a", keep_alive_s=0):
        pass
    await settle()
    assert triton.loaded == set()  # unloaded right after the request that asked for it
    for _ in range(3):  # later requests without keep_alive take the server default: no unload each time
        async with scheduler.use("a"):
            pass
        await settle()
        assert triton.loaded == {"a"}
    assert triton.loads == ["a", "a"]
    clock.now += 59
    assert await scheduler.expire_idle() == []
    clock.now += 2
    assert await scheduler.expire_idle() == ["a"]


async def test_a_negative_request_keep_alive_is_undone_by_the_next_request_without_one() -> None:
    scheduler, triton, clock, _ = make(budget=1000, default_keep_alive_s=60)
    async with scheduler.use("a", keep_alive_s=None):  # negative on the wire: kept loaded
        pass
    clock.now += 10_000
    assert await scheduler.expire_idle() == []
    assert (await scheduler.slot("a")).keep_alive_s == 60  # the model's own setting is untouched
    await use_once(scheduler, clock, "a")  # unset: the server default governs again
    clock.now += 61
    assert await scheduler.expire_idle() == ["a"]


async def test_the_latest_request_chooses_the_expiry() -> None:
    scheduler, triton, clock, _ = make(budget=1000, default_keep_alive_s=60)
    async with scheduler.use("a", keep_alive_s=600):
        pass
    slot = await scheduler.slot("a")
    assert scheduler.expires_at(slot) == clock.now + 600
    async with scheduler.use("a", keep_alive_s=5):
        pass
    assert scheduler.expires_at(slot) == clock.now + 5
    await scheduler.set_keep_alive("a", 30)  # ManageVRAM: the model's own keep-alive, from now on
    assert scheduler.expires_at(slot) == clock.now + 30
    async with scheduler.use("a"):
        pass
    assert scheduler.expires_at(slot) == clock.now + 30
