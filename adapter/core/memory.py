"""GetMemoryStats, ClearMemory and ManageVRAM: the scheduler's state and controls over gRPC."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator

from google.protobuf.timestamp_pb2 import Timestamp

from adapter.core import errors, validation
from adapter.gen.inference.v1 import inference_pb2 as pb
from adapter.scheduling.scheduler import EventKind, MemoryProbe, ModelState, Scheduler, SchedulerEvent
from adapter.triton.memory_readings import MemoryReading, freed_bytes

log = logging.getLogger(__name__)

STATES = {
    ModelState.UNLOADED: pb.MODEL_STATE_UNLOADED,
    ModelState.LOADING: pb.MODEL_STATE_LOADING,
    ModelState.LOADED: pb.MODEL_STATE_LOADED,
    ModelState.UNLOADING: pb.MODEL_STATE_UNLOADING,
    ModelState.FAILED: pb.MODEL_STATE_FAILED,
}
EVENTS = {
    EventKind.LOADED: pb.MODEL_EVENT_KIND_LOADED,
    EventKind.UNLOADED: pb.MODEL_EVENT_KIND_UNLOADED,
    EventKind.EVICTED: pb.MODEL_EVENT_KIND_EVICTED,
    EventKind.LOAD_FAILED: pb.MODEL_EVENT_KIND_LOAD_FAILED,
}
MIN_SNAPSHOT_INTERVAL_S = 0.1


# The last second a google.protobuf.Timestamp can hold (9999-12-31T23:59:59Z).
MAX_TIMESTAMP_SECONDS = 253_402_300_799


def _timestamp(seconds: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def _expiry(seconds: float) -> Timestamp | None:
    """When keep-alive unloads a model; None (unset: kept) past what a Timestamp can hold (a keep-alive
    of thousands of years)."""
    return _timestamp(seconds) if seconds <= MAX_TIMESTAMP_SECONDS else None


def _model_name(model: str) -> str:
    if not model.strip():
        raise errors.InvalidArgument("model is required")
    return model


class MemoryService:
    def __init__(self, scheduler: Scheduler, probe: MemoryProbe) -> None:
        self._scheduler = scheduler
        self._probe = probe

    async def snapshot(self) -> pb.MemorySnapshot:
        reading = await self._probe.read()
        scheduler = self._scheduler
        await scheduler.slot_names()
        now_clock, now_wall = time.monotonic(), time.time()
        models = []
        for slot in scheduler.slots():
            model = pb.ModelMemory(
                model=slot.name,
                state=STATES[slot.state],
                memory_bytes=slot.memory_bytes,
                memory_source=slot.memory_source,
                pinned=slot.pinned,
                in_flight=slot.in_flight,
                reason=slot.reason,
            )
            if slot.last_used_wall:
                model.last_used.CopyFrom(_timestamp(slot.last_used_wall))
            expires = scheduler.expires_at(slot)
            expiry = _expiry(now_wall + max(0.0, expires - now_clock)) if expires is not None else None
            if expiry is not None:
                model.expires_at.CopyFrom(expiry)
            models.append(model)
        return pb.MemorySnapshot(
            devices=[
                pb.DeviceMemory(
                    device=d.device,
                    total_bytes=d.total_bytes,
                    used_bytes=d.used_bytes,
                    free_bytes=max(0, d.total_bytes - d.used_bytes),
                )
                for d in reading.devices
            ],
            models=models,
            budget_bytes=scheduler.budget_bytes,
            taken_at=_timestamp(now_wall),
        )

    async def stats(self, request: pb.GetMemoryStatsRequest) -> pb.GetMemoryStatsResponse:
        return pb.GetMemoryStatsResponse(snapshot=await self.snapshot())

    async def clear(self, request: pb.ClearMemoryRequest) -> pb.ClearMemoryResponse:
        wait_s = validation.duration_seconds("wait_for_idle", request.wait_for_idle)
        if wait_s < 0:
            raise errors.InvalidArgument("wait_for_idle must not be negative")
        before = await self._reading_or_none()
        result = await self._scheduler.clear(request.include_pinned, wait_s)
        # On GPUs, once Triton's metrics show the stubs gone (they refresh every 2 s).
        after = await self._scheduler.settled_reading() if result.unloaded else None
        figures = {slot.name: slot.memory_bytes for slot in self._scheduler.slots() if slot.name in result.unloaded}
        return pb.ClearMemoryResponse(
            unloaded_models=result.unloaded,
            skipped_models=result.skipped,
            freed_bytes=freed_bytes(before, after, figures),
        )

    async def _reading_or_none(self) -> MemoryReading | None:
        try:
            return await self._probe.read()
        except errors.AdapterError as err:
            log.warning("no memory reading for ClearMemory: %s", err.message)
            return None

    # ---- ManageVRAM ------------------------------------------------------------------------

    async def manage(self, requests: AsyncIterator[pb.ManageVRAMRequest]) -> AsyncIterator[pb.ManageVRAMResponse]:
        """Answers each command (concurrently: a load does not hold up a status) and pushes every
        scheduler event, plus snapshots at the interval the client subscribed to."""
        out: asyncio.Queue[pb.ManageVRAMResponse | None] = asyncio.Queue()
        remove_listener = self._scheduler.add_listener(lambda e: out.put_nowait(self._event(e)))
        commands: set[asyncio.Task[None]] = set()
        snapshots: list[asyncio.Task[None]] = []

        async def read() -> None:
            try:
                async for request in requests:
                    task = asyncio.get_running_loop().create_task(self._answer(request, out, snapshots))
                    commands.add(task)
                    task.add_done_callback(commands.discard)
            except Exception:
                # A broken request stream (an undecodable message): end the call now, with its status.
                out.put_nowait(None)
                raise
            # The client half-closed: finish the commands it sent, then end the stream.
            if commands:
                await asyncio.gather(*commands, return_exceptions=True)
            out.put_nowait(None)

        reader = asyncio.get_running_loop().create_task(read())
        try:
            while True:
                item = await out.get()
                if item is None:
                    break
                yield item
            await reader  # surfaces a broken request stream
        finally:
            remove_listener()
            for task in [reader, *commands, *snapshots]:
                task.cancel()
            if reader.done() and not reader.cancelled():
                reader.exception()  # retrieved: its failure is this call's status, not a log line at exit

    @staticmethod
    def _event(event: SchedulerEvent) -> pb.ManageVRAMResponse:
        return pb.ManageVRAMResponse(
            event=pb.ModelEvent(
                model=event.model,
                kind=EVENTS[event.kind],
                reason=event.reason,
                memory_bytes=event.memory_bytes,
                at=_timestamp(event.at),
            )
        )

    async def _answer(
        self,
        request: pb.ManageVRAMRequest,
        out: asyncio.Queue[pb.ManageVRAMResponse | None],
        snapshots: list[asyncio.Task[None]],
    ) -> None:
        result = pb.CommandResult(command_id=request.command_id, ok=True)
        try:
            snapshot = await self._run(request, out, snapshots)
            if snapshot is not None:
                result.snapshot.CopyFrom(snapshot)
        except errors.AdapterError as err:
            err = errors.with_incident(err, "ManageVRAM")
            result.ok, result.error_code, result.error_message = False, err.code.name, err.message
        except Exception as err:  # noqa: BLE001 - answered, and the stream stays open
            incident = uuid.uuid4().hex[:12]
            log.error("ManageVRAM command failed (incident %s)", incident, exc_info=err)
            result.ok, result.error_code = False, "INTERNAL"
            result.error_message = f"internal error; incident {incident} is in the adapter's log"
        out.put_nowait(pb.ManageVRAMResponse(result=result))

    async def _run(
        self,
        request: pb.ManageVRAMRequest,
        out: asyncio.Queue[pb.ManageVRAMResponse | None],
        snapshots: list[asyncio.Task[None]],
    ) -> pb.MemorySnapshot | None:
        kind = request.WhichOneof("command")
        scheduler = self._scheduler
        if kind == "load":
            await scheduler.load(_model_name(request.load.model))
        elif kind == "unload":
            if not await scheduler.unload(_model_name(request.unload.model)):
                raise errors.FailedPrecondition(f"model {request.unload.model!r} is not loaded")
        elif kind == "pin":
            await scheduler.pin(_model_name(request.pin.model), True)
        elif kind == "unpin":
            await scheduler.pin(_model_name(request.unpin.model), False)
        elif kind == "set_keep_alive":
            command = request.set_keep_alive
            if not command.HasField("keep_alive"):
                raise errors.InvalidArgument("set_keep_alive.keep_alive is required (negative keeps the model loaded)")
            seconds = validation.duration_seconds("set_keep_alive.keep_alive", command.keep_alive)
            await scheduler.set_keep_alive(_model_name(command.model), None if seconds < 0 else seconds)
        elif kind == "get_status":
            return await self.snapshot()
        elif kind == "subscribe":
            interval = validation.duration_seconds("subscribe.snapshot_interval", request.subscribe.snapshot_interval)
            if interval < 0:
                raise errors.InvalidArgument("subscribe.snapshot_interval must not be negative")
            for task in snapshots:
                task.cancel()
            snapshots.clear()
            if interval > 0:
                snapshots.append(asyncio.get_running_loop().create_task(self._push_snapshots(out, interval)))
        else:
            raise errors.InvalidArgument(
                "no command given: set one of load, unload, pin, unpin, set_keep_alive, get_status, subscribe"
            )
        return None

    async def _push_snapshots(self, out: asyncio.Queue[pb.ManageVRAMResponse | None], interval: float) -> None:
        interval = max(interval, MIN_SNAPSHOT_INTERVAL_S)
        while True:
            with contextlib.suppress(errors.AdapterError):
                out.put_nowait(pb.ManageVRAMResponse(snapshot=await self.snapshot()))
            await asyncio.sleep(interval)
