"""The Triton health watcher: flips on real outages, not on one slow answer; reacts once per change."""

from __future__ import annotations

import asyncio

from adapter.triton_health import TritonHealthWatcher


class Triton:
    def __init__(self) -> None:
        self.answers: list[bool | str] = []  # True/False, "hang" or "raise"

    async def is_ready(self) -> bool:
        answer = self.answers.pop(0)
        if answer == "hang":
            await asyncio.sleep(10)
        if answer == "raise":
            raise ConnectionError("refused")
        return bool(answer)


async def test_two_failures_in_a_row_flip_to_not_serving_and_one_success_flips_back() -> None:
    triton, changes = Triton(), []

    async def changed(ready: bool) -> None:
        changes.append(ready)

    watcher = TritonHealthWatcher(triton.is_ready, changed, timeout_s=0.05)
    triton.answers = [True, "hang", True, "raise", False, False, True, True]
    seen = [await watcher.check_once() for _ in range(8)]
    assert seen == [True, True, True, True, False, False, True, True]
    assert changes == [False, True]


async def test_a_failing_reaction_does_not_stop_the_watcher() -> None:
    triton = Triton()

    async def changed(ready: bool) -> None:
        raise RuntimeError("resync failed")

    watcher = TritonHealthWatcher(triton.is_ready, changed, failures_to_flip=1)
    triton.answers = [False, True]
    assert await watcher.check_once() is False
    assert await watcher.check_once() is True
