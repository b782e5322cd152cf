"""The model scheduler: which models Triton keeps loaded, within a memory budget.

Rules (as Ollama and LocalAI users expect them):
- a request for a model that is not loaded loads it first; however many requests wait, there is
  one load, and waiting is bounded in time and in number;
- before a load that would pass the budget, idle unpinned models are unloaded, least recently
  used first; a model with requests in flight is never unloaded under them; if the model still
  does not fit, RESOURCE_EXHAUSTED says how much it needs and how much is free;
- keep-alive unloads models idle for longer than theirs (default 5 minutes; 0 unloads right after
  the request, None keeps the model loaded); pinned models stay unless named or ClearMemory says so.

Memory is budgeted per device: each GPU Triton's metrics show (or the host, without GPUs) has its
own budget, each model counts against the device it sits on (the `device` label of its
model_memory_bytes metric, else the device that grew when it loaded), and eviction frees room on
that device only: with several GPUs visible, a model on cuda:0 gains nothing from unloading one on
cuda:1. A GPU model's memory is the larger of its own figure (CUDA memory torch reserved) and its
device's growth across the load, read once Triton's metrics have caught up (they refresh every 2 s),
because only the growth includes the process's CUDA context (hundreds of MB per stub).

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
from enum import StrEnum
from typing import Protocol

from adapter.core import errors
from adapter.triton.memory_readings import DeviceReading, MemoryReading

log = logging.getLogger(__name__)


class ModelState(StrEnum):
    """Where a model is, as the scheduler holds it."""

    UNLOADED = "unloaded"
    LOADING = "loading"
    LOADED = "loaded"
    UNLOADING = "unloading"
    FAILED = "failed"  # its last load or unload failed (the slot's reason says why)


UNLOADED, LOADING, LOADED, UNLOADING, FAILED = (
    ModelState.UNLOADED,
    ModelState.LOADING,
    ModelState.LOADED,
    ModelState.UNLOADING,
    ModelState.FAILED,
)


class EventKind(StrEnum):
    """What happened to a model."""

    LOADED = "loaded"
    UNLOADED = "unloaded"  # unloaded for any cause but eviction (the event's cause says which)
    EVICTED = "evicted"  # unloaded to make room for another model
    LOAD_FAILED = "load_failed"


class Cause(StrEnum):
    """Why it happened. The values are the `reason` labels of adapter_model_unloads_total."""

    REQUESTED = "requested"  # a request or a command (ManageVRAM load or unload, a preload)
    EVICTED = "evicted"  # room was needed for another model
    KEEP_ALIVE_EXPIRED = "keep_alive"  # idle for longer than its keep-alive (0: right after its request)
    CLEARED = "clear"  # ClearMemory
    LOST = "lost"  # Triton no longer had it loaded (it restarted, or unloaded it behind our back)


# The budget's one device when no reading named any (a fixed budget, Triton's metrics unreachable).
ANY_DEVICE = "any"
# Triton refreshes its GPU metrics every 2 s (--metrics-interval-ms): a reading taken sooner after a
# load or an unload may predate it. An unloaded python model's stub exits 1-3 s after the unload
# returns, and only then is its memory back.
GPU_METRICS_SETTLE_S = 2.5
STUB_EXIT_S = 3.0


class NoGpuMetrics(errors.FailedPrecondition):
    """A GPU host whose Triton publishes no GPU memory metrics, and no fixed budget: the adapter
    refuses to start rather than budget the host's RAM as if it were the GPU's."""


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
    kind: EventKind
    cause: Cause
    reason: str  # for people: the log line, ManageVRAM's event reason
    memory_bytes: int
    at: float  # wall clock
    duration_s: float = 0.0  # how long the load or unload took


@dataclass
class ModelSlot:
    name: str
    state: ModelState = UNLOADED
    memory_bytes: int = 0
    memory_source: str = "declared"  # declared | measured | metric
    device: str = ""  # where it was placed when last loaded (a device of the readings); "" not yet known
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
        gpu_expected: bool = False,
        settle_s: float = GPU_METRICS_SETTLE_S,
        stub_exit_s: float = STUB_EXIT_S,
    ) -> None:
        self._control = control
        self._probe = probe
        self._fixed_budget = budget_bytes
        self._budget_fraction = budget_fraction
        self.budget_bytes = budget_bytes or 0  # all devices together
        self.budgets: dict[str, int] = {ANY_DEVICE: budget_bytes} if budget_bytes else {}  # per device
        self._gpu_expected = gpu_expected  # a GPU host: no GPU metrics is an error, not the host's RAM
        self._on_gpu = False  # the last reading showed GPUs: readings must wait for Triton's refresh
        self._settle_s = settle_s
        self._stub_exit_s = stub_exit_s
        self._settled_at = 0.0  # time.monotonic() from which a GPU reading reflects the last change
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
        """The budget of each device: VRAM_BUDGET_BYTES, else a fraction of that device's memory as
        Triton reports it. Returns the devices' budgets together."""
        reading: MemoryReading | None = None
        # Triton publishes device memory on its first metrics pass, shortly after start-up.
        for attempt in range(50):
            try:
                reading = await self._probe.read()
            except errors.AdapterError:
                if self._fixed_budget:
                    reading = None  # a fixed budget needs no reading
                    break
                raise
            if reading.devices and all(d.total_bytes > 0 for d in reading.devices):
                break
            reading = None
            if attempt < 49:
                await asyncio.sleep(0.2)
        self.budgets = plan_budgets(reading, self._fixed_budget, self._budget_fraction, self._gpu_expected)
        self._on_gpu = reading is not None and reading.on_gpu
        self.budget_bytes = sum(self.budgets.values())
        return self.budget_bytes

    def add_listener(self, listener: Callable[[SchedulerEvent], None]) -> Callable[[], None]:
        """Calls listener for every event; returns the function that removes it."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def _emit(self, slot: ModelSlot, kind: EventKind, cause: Cause, reason: str, duration_s: float = 0.0) -> None:
        event = SchedulerEvent(slot.name, kind, cause, reason, slot.memory_bytes, self._wall(), duration_s)
        log.info("model %s %s (%s)", slot.name, kind, reason)
        for listener in list(self._listeners):
            listener(event)

    def slots(self) -> list[ModelSlot]:
        return sorted(self._slots.values(), key=lambda s: s.name)

    def used_bytes(self, excluding: str | None = None, device: str | None = None) -> int:
        """Memory counted against the budget: loaded, loading and unloading models (on `device`
        only, when given)."""
        return sum(
            s.memory_bytes
            for s in self._slots.values()
            if s.state in (LOADED, LOADING, UNLOADING)
            and s.name != excluding
            and (device is None or self.device_of(s) == device)
        )

    def device_of(self, slot: ModelSlot) -> str:
        """The budgeted device the model counts against: where it was placed, else where models
        land by default (the device holding the most models placed so far, else the first)."""
        if slot.device in self.budgets:
            return slot.device
        placed = [s.device for s in self._slots.values() if s.device in self.budgets]
        if placed:
            return max(sorted(set(placed)), key=placed.count)
        return min(self.budgets) if self.budgets else ANY_DEVICE

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
                    self._unload_quietly(slot, Cause.KEEP_ALIVE_EXPIRED, "keep-alive 0: unloaded after the request")
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
            before = await self.settled_reading()  # after any eviction's memory is back
            started = self._clock()
            try:
                await self._control.load(slot.name)
            except errors.AdapterError as err:
                slot.state, slot.reason = FAILED, err.message
                slot.touch()
                self._changed(self._settle_s)
                self._emit(slot, EventKind.LOAD_FAILED, Cause.REQUESTED, err.message)
                raise
            self._changed(self._settle_s)
            after = await self.settled_reading()
            self._measure(slot, before, after)
            slot.state = LOADED
            slot.last_used, slot.last_used_wall = self._clock(), self._wall()
            slot.touch()
            self._emit(slot, EventKind.LOADED, Cause.REQUESTED, "requested", self._clock() - started)

    async def _make_room(self, slot: ModelSlot) -> None:
        if not self.budget_bytes:
            await self.refresh_budget()
        device = self.device_of(slot)
        budget = self.budgets.get(device, self.budget_bytes)
        need = slot.memory_bytes
        free = budget - self.used_bytes(excluding=slot.name, device=device)
        if need <= free:
            return
        # Only models on the same device give this one room.
        idle = [
            s
            for s in self._slots.values()
            if s.state == LOADED and not s.busy and not s.pinned and s.name != slot.name and self.device_of(s) == device
        ]
        for victim in sorted(idle, key=lambda s: s.last_used):
            await self._unload(victim, Cause.EVICTED, f"evicted to make room for {slot.name}")
            free = budget - self.used_bytes(excluding=slot.name, device=device)
            if need <= free:
                return
        held = [
            f"{s.name} ({'pinned' if s.pinned else 'busy'})"
            for s in self._slots.values()
            if s.state == LOADED and self.device_of(s) == device
        ]
        where = f" of device {device}" if len(self.budgets) > 1 else ""
        raise errors.ResourceExhausted(
            f"model {slot.name!r} needs {need} bytes but only {max(free, 0)} of the {budget}-byte budget{where} "
            f"are free after evicting every idle model; still loaded: {', '.join(held) or 'none'}"
        )

    async def _safe_read(self) -> MemoryReading | None:
        try:
            return await self._probe.read()
        except errors.AdapterError as err:
            log.warning("no memory reading: %s", err.message)
            return None

    def _changed(self, settle_s: float) -> None:
        """A load or unload just finished: GPU readings reflect it only settle_s from now."""
        self._settled_at = max(self._settled_at, time.monotonic() + settle_s)

    async def settled_reading(self) -> MemoryReading | None:
        """A reading that reflects every finished load and unload: on GPUs it waits for Triton's
        next metrics refresh (and an unloaded stub's exit) first; None when Triton cannot be read."""
        if self._on_gpu:
            wait = self._settled_at - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        reading = await self._safe_read()
        if reading is not None:
            self._on_gpu = reading.on_gpu
        return reading

    def _measure(self, slot: ModelSlot, before: MemoryReading | None, after: MemoryReading | None) -> None:
        placement = measure_load(slot.name, before, after)
        if placement.device and placement.device in self.budgets:
            slot.device = placement.device
        elif placement.device and set(self.budgets) == {ANY_DEVICE}:
            slot.device = ANY_DEVICE
        if placement.memory_bytes > 0:
            slot.memory_bytes, slot.memory_source = placement.memory_bytes, placement.source

    async def _unload(self, slot: ModelSlot, cause: Cause, reason: str) -> None:
        """Unloads an idle model (callers check). Done only once Triton's index says so."""
        slot.state = UNLOADING
        slot.touch()
        try:
            await self._control.unload(slot.name)
        except errors.AdapterError as err:
            slot.state, slot.reason = FAILED, err.message
            slot.touch()
            raise
        finally:
            self._changed(self._settle_s + self._stub_exit_s)
        slot.state = UNLOADED
        slot.touch()
        self._emit(slot, EventKind.EVICTED if cause is Cause.EVICTED else EventKind.UNLOADED, cause, reason)

    async def _unload_quietly(self, slot: ModelSlot, cause: Cause, reason: str) -> None:
        try:
            async with self._budget_lock:
                if slot.state == LOADED and not slot.busy:
                    await self._unload(slot, cause, reason)
        except errors.AdapterError as err:
            log.error("could not unload %s: %s", slot.name, err.message)

    # ---- commands ------------------------------------------------------------------------------

    async def load(self, model: str) -> float:
        """Loads the model (evicting idle ones if the budget needs it); returns seconds waited."""
        async with self.use(model) as waited:
            return waited

    async def unload(self, model: str, wait_s: float = 30.0, cause: Cause = Cause.REQUESTED) -> bool:
        """Unloads the model, pinned or not, once its in-flight requests are done (up to wait_s).
        Returns False if it was not loaded. `cause`: REQUESTED (a command) or CLEARED (ClearMemory)."""
        reason = "ClearMemory" if cause is Cause.CLEARED else "requested"
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
            await self._unload(slot, cause, reason)
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
                if await self.unload(slot.name, wait_s=wait_for_idle_s, cause=Cause.CLEARED):
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
        self._emit(slot, EventKind.UNLOADED, Cause.LOST, reason)

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
            await self._unload_quietly(slot, Cause.KEEP_ALIVE_EXPIRED, "keep-alive expired")
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


# ---- pure decisions (unit-tested) ------------------------------------------------------------------


def plan_budgets(
    reading: MemoryReading | None, fixed_bytes: int | None, fraction: float, gpu_expected: bool
) -> dict[str, int]:
    """Each device's budget. GPUs when Triton's metrics show any: VRAM_BUDGET_BYTES each, else
    `fraction` of each GPU's memory (never their sum: a model lives on one GPU). No GPU metrics:
    the host's memory, except on a GPU host (gpu_expected), where the GPUs exist but Triton cannot
    see them (MIG devices, or a DCGM agent on the host holding them) and the host's RAM says nothing
    about what fits on them: refused unless VRAM_BUDGET_BYTES is set."""
    gpus = [d for d in reading.devices if d.device.startswith("gpu:")] if reading is not None else []
    if fixed_bytes:
        names = [d.device for d in gpus]
        if not names and reading is not None and not gpu_expected:
            names = [d.device for d in reading.devices]  # the host, on a host without GPUs
        return {name: fixed_bytes for name in names} or {ANY_DEVICE: fixed_bytes}
    if reading is None or not reading.devices:
        raise errors.Unavailable("Triton's metrics report no device memory yet: no budget to load models into")
    if gpus:
        return {d.device: int(d.total_bytes * fraction) for d in gpus}
    if gpu_expected:
        raise NoGpuMetrics(
            "this is a GPU host (INFERENCE_REQUIRE_CUDA, or /dev/nvidia* present) but Triton's metrics show no "
            "GPU memory (nv_gpu_memory_*: missing under MIG, or when a DCGM agent on the host holds the GPUs): "
            "set VRAM_BUDGET_BYTES to the bytes the models may use on each GPU"
        )
    return {d.device: int(d.total_bytes * fraction) for d in reading.devices}


@dataclass(frozen=True)
class Placement:
    device: str  # "" when the readings cannot tell
    memory_bytes: int  # 0 when nothing was measured
    source: str  # metric | measured


def measure_load(model: str, before: MemoryReading | None, after: MemoryReading | None) -> Placement:
    """Where a model that just loaded sits and how much memory it takes, from readings taken before
    and after the load (after Triton's metrics refresh).

    Device: the `device` label of its model_memory_bytes, else the GPU that grew most.
    Memory on a GPU: the larger of its own figure (torch's reserved memory, which leaves out the CUDA
    context) and its device's growth (which includes it, and whatever else changed meanwhile: the
    budget lock keeps our own loads apart). On the host, whose memory every process shares, its own
    figure (resident memory), else the growth."""
    if after is None:
        return Placement("", 0, "metric")
    own = after.models.get(model, 0)
    device = after.model_devices.get(model, "")
    growth: dict[str, int] = {}
    if before is not None:
        for reading in after.devices:
            previous = before.device(reading.device)
            if previous is not None:
                growth[reading.device] = reading.used_bytes - previous.used_bytes
    if not after.on_gpu:
        if own > 0:
            return Placement(device or _only(after.devices), own, "metric")
        total = sum(growth.values())
        return Placement(_only(after.devices), total if total > 0 else 0, "measured")
    if not device and growth:
        grown = max(sorted(growth), key=lambda name: growth[name])
        device = grown if growth[grown] > 0 else ""
    grew = growth.get(device, 0) if device else 0
    if grew > own:
        return Placement(device, grew, "measured")
    return Placement(device, own, "metric")


def _only(devices: list[DeviceReading]) -> str:
    return devices[0].device if len(devices) == 1 else ""
