"""The embedding coalescer: immediate at low load, merged while the model is busy."""

from __future__ import annotations

import asyncio

import pytest

from adapter.triton.embedding_coalescer import EmbeddingCoalescer


class HeldSender:
    """Records each send; every send waits for `release`, then echoes "text/flag" per row."""

    def __init__(self) -> None:
        self.sends: list[tuple[list[str], list[bool]]] = []
        self.release = asyncio.Event()
        self.fail_with: Exception | None = None

    async def __call__(self, model: str, texts: list[str], flags: list[bool]) -> list[str]:
        self.sends.append((texts, flags))
        await self.release.wait()
        if self.fail_with:
            raise self.fail_with
        return [f"{t}/{f}" for t, f in zip(texts, flags, strict=True)]


def _coalescer(sender: HeldSender, max_in_flight: int = 1) -> EmbeddingCoalescer[list[str]]:
    return EmbeddingCoalescer(sender, lambda rows, start, end: rows[start:end], max_in_flight=max_in_flight)


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_an_idle_model_gets_the_call_at_once() -> None:
    sender = HeldSender()
    sender.release.set()
    assert await _coalescer(sender).embed("m", ["a", "b"], True, max_rows=8) == ["a/True", "b/True"]
    assert sender.sends == [(["a", "b"], [True, True])]


async def test_calls_waiting_behind_a_busy_model_leave_together_and_get_their_own_rows() -> None:
    sender = HeldSender()
    coalescer = _coalescer(sender, max_in_flight=1)
    first = asyncio.create_task(coalescer.embed("m", ["a"], False, max_rows=8))
    await _settle()
    waiting = [asyncio.create_task(coalescer.embed("m", [f"x{i}", f"y{i}"], i % 2 == 0, max_rows=8)) for i in range(3)]
    await _settle()
    assert len(sender.sends) == 1  # the model is busy: nothing else sent yet
    sender.release.set()
    assert await first == ["a/False"]
    results = await asyncio.gather(*waiting)
    assert results == [["x0/True", "y0/True"], ["x1/False", "y1/False"], ["x2/True", "y2/True"]]
    assert sender.sends[1] == (["x0", "y0", "x1", "y1", "x2", "y2"], [True, True, False, False, True, True])
    assert len(sender.sends) == 2


async def test_a_merged_request_never_passes_max_rows() -> None:
    sender = HeldSender()
    coalescer = _coalescer(sender)
    blocker = asyncio.create_task(coalescer.embed("m", ["busy"], False, max_rows=4))
    await _settle()
    calls = [asyncio.create_task(coalescer.embed("m", ["a", "b", "c"], False, max_rows=4)) for _ in range(3)]
    await _settle()
    sender.release.set()
    await asyncio.gather(blocker, *calls)
    assert [len(texts) for texts, _ in sender.sends] == [1, 3, 3, 3]


async def test_a_failure_reaches_every_caller_of_the_batch_and_the_queue_goes_on() -> None:
    sender = HeldSender()
    coalescer = _coalescer(sender)
    blocker = asyncio.create_task(coalescer.embed("m", ["busy"], False, max_rows=8))
    await _settle()
    doomed = [asyncio.create_task(coalescer.embed("m", [str(i)], False, max_rows=8)) for i in range(2)]
    sender.fail_with = RuntimeError("triton down")
    sender.release.set()
    for task in [blocker, *doomed]:
        with pytest.raises(RuntimeError, match="triton down"):
            await task
    sender.fail_with = None
    assert await coalescer.embed("m", ["again"], False, max_rows=8) == ["again/False"]


async def test_a_caller_that_gave_up_while_waiting_is_left_out() -> None:
    sender = HeldSender()
    coalescer = _coalescer(sender)
    blocker = asyncio.create_task(coalescer.embed("m", ["busy"], False, max_rows=8))
    await _settle()
    gone = asyncio.create_task(coalescer.embed("m", ["gone"], False, max_rows=8))
    kept = asyncio.create_task(coalescer.embed("m", ["kept"], False, max_rows=8))
    await _settle()
    gone.cancel()
    sender.release.set()
    await blocker
    assert await kept == ["kept/False"]
    assert sender.sends[1][0] == ["kept"]


async def test_models_do_not_wait_for_each_other() -> None:
    sender = HeldSender()
    coalescer = _coalescer(sender)
    busy = asyncio.create_task(coalescer.embed("a", ["1"], False, max_rows=8))
    other = asyncio.create_task(coalescer.embed("b", ["2"], False, max_rows=8))
    await _settle()
    assert len(sender.sends) == 2
    sender.release.set()
    await asyncio.gather(busy, other)
