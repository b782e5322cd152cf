"""The Triton health watcher: flips on real outages, not on one slow answer; reacts once per change."""

from __future__ import annotations

import asyncio

from adapter.triton.health import TritonHealthWatcher


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


async def test_with_one_failure_to_flip_an_outage_between_two_good_probes_is_reported() -> None:
    # An external Triton that restarts within one probe interval: one failed probe is enough.
    triton, changes = Triton(), []

    async def changed(ready: bool) -> None:
        changes.append(ready)

    watcher = TritonHealthWatcher(triton.is_ready, changed, failures_to_flip=1)
    triton.answers = [True, "raise", True]
    assert [await watcher.check_once() for _ in range(3)] == [True, False, True]
    assert changes == [False, True]


async def test_mark_down_reports_the_outage_without_a_probe_and_the_next_good_probe_the_return() -> None:
    triton, changes = Triton(), []

    async def changed(ready: bool) -> None:
        changes.append(ready)

    watcher = TritonHealthWatcher(triton.is_ready, changed)
    await watcher.mark_down("gone (the embedded tritonserver exited)")
    await watcher.mark_down("gone again")  # one change, however many tell it
    assert changes == [False] and watcher.ready is False
    triton.answers = [True]
    assert await watcher.check_once() is True
    assert changes == [False, True]


async def test_recheck_makes_the_next_good_probe_report_ready_again() -> None:
    # A reaction to Triton's return that could not finish (its models failed to load) is retried.
    triton, changes = Triton(), []

    async def changed(ready: bool) -> None:
        changes.append(ready)

    watcher = TritonHealthWatcher(triton.is_ready, changed)
    watcher.recheck()
    triton.answers = [True, True]
    assert await watcher.check_once() is True
    assert await watcher.check_once() is True
    assert changes == [True]
