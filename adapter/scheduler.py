"""The model scheduler: which models Triton keeps loaded, within a memory budget.

Rules (as Ollama and LocalAI users expect them):
- a request for a model that is not loaded loads it first; however many requests wait, there is
  one load, and waiting is bounded in time and in number;
- before a load that would pass the budget, idle unpinned models are unloaded, least recently
  used first; a model with requests in flight is never unloaded under them; if the model still
  does not fit, RESOURCE_EXHAUSTED says how much it needs and how much is free;
- keep-alive unloads models idle for longer than theirs (default 5 minutes; 0 unloads right after
  the request, None keeps the model loaded); pinned models stay unless named or ClearMemory says so.

Its effects on Triton and its memory readings are injected (`ModelControl`, `MemoryProbe`), so the
decisions are unit-tested with fakes and a fake clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Protocol

from adapter import errors
from adapter.memory_readings import MemoryReading

log = logging.getLogger(__name__)

UNLOADED, LOADING, LOADED, UNLOADING, FAILED = "unloaded", "loading", "loaded", "unloading", "failed"


class ModelControl(Protocol):
    async def model_names(self) -> list[str]: ...
    async def repository_index(self) -> dict[str, tuple[str, str]]:
        """name -> (state, reason) as Triton's repository index shows them."""

    async def load(self, model: str) -> None: ...
    async def unload(self, model: str) -> None:
        """Returns once Triton's repository index no longer shows the model READY."""


class MemoryProbe(Protocol):
    async def read(self) -> MemoryReading: ...


@dataclass(frozen=True)
class SchedulerEvent:
    model: str
    kind: str  # loaded | unloaded | evicted | load_failed
    reason: str
    memory_bytes: int
    at: float  # wall clock
    duration_s: float = 0.0  # how long the load or unload took


@dataclass
class ModelSlot:
    name: str
    state: str = UNLOADED
    memory_bytes: int = 0
    memory_source: str = "declared"  # declared | measured | metric
    pinned: bool = False
    in_flight: int = 0
    waiting: int = 0  # requests waiting for this model to load
    queued: int = 0  # accepted work not started yet (image jobs in their queue)
    last_used: float = 0.0  # scheduler clock
    last_used_wall: float = 0.0
    keep_alive_s: float | None = 300.0  # the model's own (server default or set_keep_alive); None: forever
    # The latest request's keep_alive, which governs the idle time after it: DEFAULT takes keep_alive_s.
    request_keep_alive: float | None | str = "default"
    reason: str = ""
    load_task: asyncio.Task[None] | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)  # set on every state/in-flight change
    observer: Callable[[ModelSlot], None] | None = None  # told of every change (metrics)

    @property
    def busy(self) -> bool:
        """Requests in flight, waiting for it, or queued for it: such a model is never evicted or
        expired (evicting a model its waiters have just loaded is how swaps turn into thrashing)."""
        return bool(self.in_flight or self.waiting or self.queued)

    def describe_work(self) -> str:
        return f"busy: {self.in_flight} in flight, {self.waiting} waiting, {self.queued} queued"

    def touch(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()
        if self.observer is not None:
            self.observer(self)


@dataclass(frozen=True)
class ClearResult:
    unloaded: list[str]
    skipped: list[str]  # "name (why)"
    freed_bytes: int


class Scheduler:
    def __init__(
        self,
        control: ModelControl,
        probe: MemoryProbe,
        *,
        budget_bytes: int | None,
        budget_fraction: float,
        declared_memory: Callable[[str], int],
        default_keep_alive_s: float | None = 300.0,
        load_timeout_s: float = 600.0,
        max_waiting: int = 256,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._control = control
        self._probe = probe
        self._fixed_budget = budget_bytes
        self._budget_fraction = budget_fraction
        self.budget_bytes = budget_bytes or 0
        self._declared = declared_memory
        self.default_keep_alive_s = default_keep_alive_s
        self._load_timeout_s = load_timeout_s
        self._max_waiting = max_waiting
        self._clock = clock
        self._wall = wall_clock
        self._slots: dict[str, ModelSlot] = {}
        self._budget_lock = asyncio.Lock()  # one budget decision (and load) at a time
        self._listeners: list[Callable[[SchedulerEvent], None]] = []
        self.slot_observer: Callable[[ModelSlot], None] | None = None

    # ---- set-up and observation -------------------------------------------------------------

    async def refresh_budget(self) -> int:
        """The budget: VRAM_BUDGET_BYTES, else a fraction of the device memory Triton reports."""
        if self._fixed_budget:
            self.budget_bytes = self._fixed_budget
            return self.budget_bytes
        # Triton publishes device memory on its first metrics pass, shortly after start-up.
        for _ in range(50):
            reading = await self._probe.read()
            if reading.total_bytes > 0:
                self.budget_bytes = int(reading.total_bytes * self._budget_fraction)
                return self.budget_bytes
            await asyncio.sleep(0.2)
        raise errors.Unavailable("Triton's metrics report no device memory yet: no budget to load models into")

    def add_listener(self, listener: Callable[[SchedulerEvent], None]) -> Callable[[], None]:
        """Calls listener for every event; returns the function that removes it."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def _emit(self, slot: ModelSlot, kind: str, reason: str, duration_s: float = 0.0) -> None:
        event = SchedulerEvent(slot.name, kind, reason, slot.memory_bytes, self._wall(), duration_s)
        log.info("model %s %s (%s)", slot.name, kind, reason)
        for listener in list(self._listeners):
            listener(event)

    def slots(self) -> list[ModelSlot]:
        return sorted(self._slots.values(), key=lambda s: s.name)

    def used_bytes(self, excluding: str | None = None) -> int:
        """Memory counted against the budget: loaded, loading and unloading models."""
        return sum(
            s.memory_bytes
            for s in self._slots.values()
            if s.state in (LOADED, LOADING, UNLOADING) and s.name != excluding
        )

    async def slot_names(self) -> list[str]:
        """Every model of the repository (makes their slots exist, so stats list unloaded ones too)."""
        names = await self._control.model_names()
        for name in names:
            if name not in self._slots:
                self._slots[name] = ModelSlot(
                    name=name,
                    memory_bytes=self._declared(name),
                    keep_alive_s=self.default_keep_alive_s,
                    observer=self.slot_observer,
                )
        return names

    async def slot(self, model: str) -> ModelSlot:
        """The model's slot; NotFound when Triton's repository does not have it."""
        slot = self._slots.get(model)
        if slot is not None:
            return slot
        names = await self.slot_names()
        if model not in self._slots:
            available = ", ".join(sorted(names)) or "none"
            raise errors.NotFound(f"model {model!r} is not in Triton's model repository (available: {available})")
        return self._slots[model]

    # ---- requests ------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def use(self, model: str, keep_alive_s: float | None | str = "default") -> AsyncIterator[float]:
        """Holds the model loaded for the body; yields the seconds this call spent waiting for a load.

        keep_alive_s governs only the idle time after this request (the latest request's choice wins,
        as in Ollama): "default" takes the model's keep-alive (the server's default unless
        set_keep_alive changed it); a number of seconds (0: unload right after this request); None
        keeps the model loaded until a later request or set_keep_alive says otherwise.
        """
        slot = await self.slot(model)
        slot.request_keep_alive = keep_alive_s
        waited = await self._wait_loaded(slot)
        slot.in_flight += 1
        slot.touch()
        try:
            yield waited
        finally:
            slot.in_flight -= 1
            slot.last_used, slot.last_used_wall = self._clock(), self._wall()
            slot.touch()
            if not slot.busy and self.keep_alive_of(slot) == 0 and not slot.pinned:
                asyncio.get_running_loop().create_task(
                    self._unload_quietly(slot, "keep-alive 0: unloaded after the request")
                )

    async def _wait_loaded(self, slot: ModelSlot) -> float:
        started = self._clock()
        deadline = started + self._load_timeout_s
        waited = False
        while slot.state != LOADED:
            waited = True
            if slot.waiting >= self._max_waiting:
                raise errors.ResourceExhausted(
                    f"{slot.waiting} requests are already waiting for model {slot.name!r} to load; retry later"
                )
            slot.waiting += 1
            try:
                remaining = deadline - self._clock()
                if remaining <= 0:
                    raise errors.Unavailable(f"model {slot.name!r} is still loading after {self._load_timeout_s:.0f}s")
                if slot.state == UNLOADING:
                    await asyncio.wait_for(slot.changed.wait(), remaining)
                    continue
                await asyncio.wait_for(asyncio.shield(self._load_task(slot)), remaining)
            except TimeoutError:
                raise errors.Unavailable(
                    f"model {slot.name!r} is still loading after {self._load_timeout_s:.0f}s"
                ) from None
            finally:
                slot.waiting -= 1
        return self._clock() - started if waited else 0.0

    def _load_task(self, slot: ModelSlot) -> asyncio.Task[None]:
        if slot.load_task is None or slot.load_task.done():
            slot.load_task = asyncio.get_running_loop().create_task(self._load(slot))
        return slot.load_task

    # ---- loading and unloading -------------------------------------------------------------

    async def _load(self, slot: ModelSlot) -> None:
        async with self._budget_lock:
            if slot.state == LOADED:
                return
            await self._make_room(slot)
            slot.state, slot.reason = LOADING, ""
            slot.touch()
            before = await self._safe_read()
            started = self._clock()
            try:
                await self._control.load(slot.name)
            except errors.AdapterError as err:
                slot.state, slot.reason = FAILED, err.message
                slot.touch()
                self._emit(slot, "load_failed", err.message)
                raise
            after = await self._safe_read()
            self._measure(slot, before, after)
            slot.state = LOADED
            slot.last_used, slot.last_used_wall = self._clock(), self._wall()
            slot.touch()
            self._emit(slot, "loaded", "requested", self._clock() - started)

    async def _make_room(self, slot: ModelSlot) -> None:
        if not self.budget_bytes:
            await self.refresh_budget()
        need = slot.memory_bytes
        free = self.budget_bytes - self.used_bytes(excluding=slot.name)
        if need <= free:
            return
        idle = [
            s for s in self._slots.values() if s.state == LOADED and not s.busy and not s.pinned and s.name != slot.name
        ]
        for victim in sorted(idle, key=lambda s: s.last_used):
            await self._unload(victim, f"evicted to make room for {slot.name}", kind="evicted")
            free = self.budget_bytes - self.used_bytes(excluding=slot.name)
            if need <= free:
                return
        held = [f"{s.name} ({'pinned' if s.pinned else 'busy'})" for s in self._slots.values() if s.state == LOADED]
        raise errors.ResourceExhausted(
            f"model {slot.name!r} needs {need} bytes but only {max(free, 0)} of the {self.budget_bytes}-byte budget "
            f"are free after evicting every idle model; still loaded: {', '.join(held) or 'none'}"
        )

    async def _safe_read(self) -> MemoryReading | None:
        try:
            return await self._probe.read()
        except errors.AdapterError as err:
            log.warning("no memory reading: %s", err.message)
            return None

    def _measure(self, slot: ModelSlot, before: MemoryReading | None, after: MemoryReading | None) -> None:
        """The model's own metric, else the device's growth over the load, else the declared figure."""
        if after is not None and after.models.get(slot.name, 0) > 0:
            slot.memory_bytes, slot.memory_source = after.models[slot.name], "metric"
        elif before is not None and after is not None and after.used_bytes > before.used_bytes:
            slot.memory_bytes, slot.memory_source = after.used_bytes - before.used_bytes, "measured"

    async def _unload(self, slot: ModelSlot, reason: str, kind: str = "unloaded") -> None:
        """Unloads an idle model (callers check). Done only once Triton's index says so."""
        slot.state = UNLOADING
        slot.touch()
        try:
            await self._control.unload(slot.name)
        except errors.AdapterError as err:
            slot.state, slot.reason = FAILED, err.message
            slot.touch()
            raise
        slot.state = UNLOADED
        slot.touch()
        self._emit(slot, kind, reason)

    async def _unload_quietly(self, slot: ModelSlot, reason: str) -> None:
        try:
            async with self._budget_lock:
                if slot.state == LOADED and not slot.busy:
                    await self._unload(slot, reason)
        except errors.AdapterError as err:
            log.error("could not unload %s: %s", slot.name, err.message)

    # ---- commands ------------------------------------------------------------------------------

    async def load(self, model: str) -> float:
        """Loads the model (evicting idle ones if the budget needs it); returns seconds waited."""
        async with self.use(model) as waited:
            return waited

    async def unload(self, model: str, reason: str = "requested", wait_s: float = 30.0) -> bool:
        """Unloads the model, pinned or not, once its in-flight requests are done (up to wait_s).
        Returns False if it was not loaded."""
        slot = await self.slot(model)
        deadline = self._clock() + wait_s
        while slot.in_flight > 0 or slot.state in (LOADING, UNLOADING):
            remaining = deadline - self._clock()
            if remaining <= 0:
                raise errors.FailedPrecondition(
                    f"model {model!r} still has {slot.in_flight} requests in flight after {wait_s:.0f}s; not unloaded"
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(slot.changed.wait(), remaining)
        if slot.state != LOADED:
            return False
        async with self._budget_lock:
            if slot.state != LOADED or slot.in_flight > 0:
                return False
            await self._unload(slot, reason)
        return True

    def add_queued(self, model: str, count: int) -> None:
        """Counts work accepted for a model (+1) or started (-1); the model must have a slot."""
        slot = self._slots[model]
        slot.queued += count
        slot.touch()

    async def pin(self, model: str, pinned: bool = True) -> None:
        slot = await self.slot(model)
        slot.pinned = pinned
        slot.touch()

    async def set_keep_alive(self, model: str, keep_alive_s: float | None) -> None:
        slot = await self.slot(model)
        slot.keep_alive_s = keep_alive_s
        slot.request_keep_alive = "default"  # applies from now, until a request chooses otherwise
        slot.touch()

    async def clear(self, include_pinned: bool, wait_for_idle_s: float) -> ClearResult:
        """Unloads every loaded model that is idle (waiting up to wait_for_idle_s for busy ones)
        and not pinned (unless include_pinned)."""
        unloaded, skipped, freed = [], [], 0
        for slot in self.slots():
            if slot.state != LOADED:
                continue
            if slot.pinned and not include_pinned:
                skipped.append(f"{slot.name} (pinned)")
                continue
            if slot.busy and wait_for_idle_s <= 0:
                skipped.append(f"{slot.name} ({slot.describe_work()})")
                continue
            try:
                if await self.unload(slot.name, "ClearMemory", wait_s=wait_for_idle_s):
                    unloaded.append(slot.name)
                    freed += slot.memory_bytes
            except errors.FailedPrecondition:
                skipped.append(f"{slot.name} ({slot.describe_work()})")
        return ClearResult(unloaded, skipped, freed)

    # ---- Triton's own view ----------------------------------------------------------------------

    async def resync(self) -> list[str]:
        """After Triton came back (a restart loads nothing): every model we hold as loaded that
        Triton no longer shows READY becomes unloaded; returns those models. Requests load them
        again on demand."""
        index = await self._control.repository_index()
        lost = []
        async with self._budget_lock:
            for slot in self.slots():
                if slot.state == LOADED and index.get(slot.name, ("", ""))[0] != "READY":
                    self._lost(slot, "Triton no longer has it loaded (restarted?)")
                    lost.append(slot.name)
        return lost

    def model_missing(self, model: str) -> None:
        """Triton answered NOT_FOUND for a model we hold as loaded: it lost it behind our back."""
        slot = self._slots.get(model)
        if slot is not None and slot.state == LOADED:
            self._lost(slot, "Triton reported it not loaded")

    def _lost(self, slot: ModelSlot, reason: str) -> None:
        slot.state = UNLOADED
        slot.touch()
        self._emit(slot, "unloaded", reason)

    # ---- keep-alive ------------------------------------------------------------------------

    @staticmethod
    def keep_alive_of(slot: ModelSlot) -> float | None:
        """The keep-alive that governs the model's idle time now: its latest request's, else its own."""
        chosen = slot.request_keep_alive
        return slot.keep_alive_s if isinstance(chosen, str) else chosen

    def expires_at(self, slot: ModelSlot) -> float | None:
        """Scheduler-clock time at which keep-alive unloads the model if it stays idle."""
        keep_alive = self.keep_alive_of(slot)
        if slot.state != LOADED or slot.pinned or keep_alive is None or slot.busy:
            return None
        return slot.last_used + keep_alive

    async def expire_idle(self) -> list[str]:
        """Unloads the models whose keep-alive has run out; returns them."""
        now = self._clock()
        expired = [s for s in self.slots() if (at := self.expires_at(s)) is not None and at <= now]
        done = []
        for slot in expired:
            await self._unload_quietly(slot, "keep-alive expired")
            if slot.state == UNLOADED:
                done.append(slot.name)
        return done

    async def run_keep_alive(self, interval_s: float = 1.0) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.expire_idle()
            except Exception as err:  # noqa: BLE001 - keep the loop alive
                log.error("keep-alive sweep failed: %s", err)
