"""Which models the adapter serves: every model of Triton's repository, whatever its state."""

from __future__ import annotations

import time

from adapter.core import types as t
from adapter.scheduling.scheduler import ModelState, Scheduler


class ModelService:
    def __init__(self, scheduler: Scheduler) -> None:
        self._scheduler = scheduler
        # When this adapter first saw each model (Unix seconds): Triton's repository keeps no date.
        self._first_seen: dict[str, float] = {}

    async def list(self) -> list[t.ModelDescription]:
        """Every model of the repository, loaded or not, by name."""
        await self._scheduler.slot_names()  # reads the repository again: a model added since shows up
        return [self._describe(slot.name, slot.state, slot.reason) for slot in self._scheduler.slots()]

    async def get(self, model: str) -> t.ModelDescription:
        """One model; NotFound (naming the ones there are) when the repository lacks it."""
        slot = await self._scheduler.slot(model)
        return self._describe(slot.name, slot.state, slot.reason)

    def _describe(self, name: str, state: ModelState, reason: str) -> t.ModelDescription:
        seen = self._first_seen.setdefault(name, time.time())
        return t.ModelDescription(id=name, state=state, reason=reason, created=seen)
