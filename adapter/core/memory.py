"""GetMemoryStats, ClearMemory and ManageVRAM: the scheduler's state and controls."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator

from adapter.core import errors, validation
from adapter.core import types as t
from adapter.scheduling.scheduler import MemoryProbe, Scheduler, SchedulerEvent
from adapter.triton.memory_readings import MemoryReading, freed_bytes

log = logging.getLogger(__name__)

MIN_SNAPSHOT_INTERVAL_S = 0.1


class MemoryService:
    def __init__(self, scheduler: Scheduler, probe: MemoryProbe) -> None:
        self._scheduler = scheduler
        self._probe = probe

    async def snapshot(self) -> t.MemorySnapshot:
        reading = await self._probe.read()
        scheduler = self._scheduler
        await scheduler.slot_names()
        now_clock, now_wall = time.monotonic(), time.time()
        models = []
        for slot in scheduler.slots():
            expires = scheduler.expires_at(slot)
            models.append(
                t.ModelMemory(
                    model=slot.name,
                    state=slot.state,
                    memory_bytes=slot.memory_bytes,
                    memory_source=slot.memory_source,
                    pinned=slot.pinned,
                    in_flight=slot.in_flight,
                    reason=slot.reason,
                    last_used=slot.last_used_wall or None,
                    expires_at=now_wall + max(0.0, expires - now_clock) if expires is not None else None,
                )
            )
        return t.MemorySnapshot(
            devices=[t.DeviceMemory(d.device, d.total_bytes, d.used_bytes) for d in reading.devices],
            models=models,
            budget_bytes=scheduler.budget_bytes,
            taken_at=now_wall,
        )

    async def clear(self, request: t.ClearMemoryRequest) -> t.ClearMemoryResult:
        if request.wait_for_idle_s < 0:
            raise errors.InvalidArgument("wait_for_idle must not be negative")
        before = await self._reading_or_none()
        result = await self._scheduler.clear(request.include_pinned, request.wait_for_idle_s)
        # On GPUs, once Triton's metrics show the stubs gone (they refresh every 2 s).
        after = await self._scheduler.settled_reading() if result.unloaded else None
        figures = {slot.name: slot.memory_bytes for slot in self._scheduler.slots() if slot.name in result.unloaded}
        return t.ClearMemoryResult(
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

    async def manage(self, requests: AsyncIterator[t.VramRequest]) -> AsyncIterator[t.VramMessage]:
        """Answers each command (concurrently: a load does not hold up a status) and pushes every
        scheduler event, plus snapshots at the interval the client subscribed to."""
        out: asyncio.Queue[t.VramMessage | None] = asyncio.Queue()
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
    def _event(event: SchedulerEvent) -> t.ModelEvent:
        return t.ModelEvent(
            model=event.model, kind=event.kind, reason=event.reason, memory_bytes=event.memory_bytes, at=event.at
        )

    async def _answer(
        self,
        request: t.VramRequest,
        out: asyncio.Queue[t.VramMessage | None],
        snapshots: list[asyncio.Task[None]],
    ) -> None:
        try:
            snapshot = await self._run(request.command, out, snapshots)
            result = t.CommandResult(command_id=request.command_id, ok=True, snapshot=snapshot)
        except errors.AdapterError as err:
            err = errors.with_incident(err, "ManageVRAM")
            result = t.CommandResult(request.command_id, False, err.code.value, err.message)
        except Exception as err:  # noqa: BLE001 - answered, and the stream stays open
            incident = uuid.uuid4().hex[:12]
            log.error("ManageVRAM command failed (incident %s)", incident, exc_info=err)
            result = t.CommandResult(
                request.command_id, False, "INTERNAL", f"internal error; incident {incident} is in the adapter's log"
            )
        out.put_nowait(result)

    async def _run(
        self,
        command: t.VramCommand,
        out: asyncio.Queue[t.VramMessage | None],
        snapshots: list[asyncio.Task[None]],
    ) -> t.MemorySnapshot | None:
        scheduler = self._scheduler
        if isinstance(command, t.LoadModel):
            await scheduler.load(validation.require_model(command.model))
        elif isinstance(command, t.UnloadModel):
            if not await scheduler.unload(validation.require_model(command.model)):
                raise errors.FailedPrecondition(f"model {command.model!r} is not loaded")
        elif isinstance(command, t.PinModel):
            await scheduler.pin(validation.require_model(command.model), command.pinned)
        elif isinstance(command, t.SetKeepAlive):
            if command.keep_alive == "default":
                raise errors.InvalidArgument("set_keep_alive.keep_alive is required (negative keeps the model loaded)")
            await scheduler.set_keep_alive(validation.require_model(command.model), command.keep_alive)
        elif isinstance(command, t.GetStatus):
            return await self.snapshot()
        elif isinstance(command, t.Subscribe):
            interval = command.snapshot_interval_s
            if interval < 0:
                raise errors.InvalidArgument("subscribe.snapshot_interval must not be negative")
            for task in snapshots:
                task.cancel()
            snapshots.clear()
            if interval > 0:
                snapshots.append(asyncio.get_running_loop().create_task(self._push_snapshots(out, interval)))
        else:
            raise errors.InvalidArgument(command.message)
        return None

    async def _push_snapshots(self, out: asyncio.Queue[t.VramMessage | None], interval: float) -> None:
        interval = max(interval, MIN_SNAPSHOT_INTERVAL_S)
        while True:
            with contextlib.suppress(errors.AdapterError):
                out.put_nowait(await self.snapshot())
            await asyncio.sleep(interval)
