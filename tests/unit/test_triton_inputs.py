"""model_runtime/triton_inputs.py: the models' input readers and cancel watchers (no Triton: a fake
pb_utils and fake requests)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from model_runtime.triton_inputs import (
    bool_input,
    bool_values,
    bytes_input,
    decode_text,
    string_input,
    string_values,
    watch_cancellation,
    watch_cancellations,
)


class FakeRequest:
    def __init__(self, **inputs: Any) -> None:
        self.inputs = {
            name: np.array(value, dtype=np.object_ if _is_text(value) else None) for name, value in inputs.items()
        }
        self.cancelled = False
        self.polls = 0

    def is_cancelled(self) -> bool:
        self.polls += 1
        return self.cancelled


def _is_text(value: Any) -> bool:
    return any(isinstance(item, bytes | str) for item in np.array(value, dtype=np.object_).reshape(-1))


def _get_input_tensor_by_name(request: FakeRequest, name: str) -> Any:
    array = request.inputs.get(name)
    return None if array is None else SimpleNamespace(as_numpy=lambda: array)


pb_utils = SimpleNamespace(get_input_tensor_by_name=_get_input_tensor_by_name)


def test_string_input_decodes_the_first_element() -> None:
    request = FakeRequest(text_input=[["héllo".encode()]])
    assert string_input(pb_utils, request, "text_input") == "héllo"
    assert string_input(pb_utils, request, "messages") is None


def test_string_input_refuses_invalid_utf8() -> None:
    with pytest.raises(UnicodeDecodeError):
        string_input(pb_utils, FakeRequest(text_input=[b"\xff"]), "text_input")


def test_bytes_input_keeps_bytes_and_encodes_text() -> None:
    assert bytes_input(pb_utils, FakeRequest(image=[b"\x89PNG"]), "image") == b"\x89PNG"
    assert bytes_input(pb_utils, FakeRequest(prompt=["é"]), "prompt") == "é".encode()
    assert bytes_input(pb_utils, FakeRequest(), "mask") is None


def test_bool_input_defaults_when_absent() -> None:
    assert bool_input(pb_utils, FakeRequest(stream=[False]), "stream", True) is False
    assert bool_input(pb_utils, FakeRequest(), "stream", True) is True


def test_batch_inputs_read_every_row() -> None:
    request = FakeRequest(text_input=[[b"a"], [b"b"]], normalize=[[True], [False]])
    assert string_values(pb_utils, request, "text_input") == ["a", "b"]
    assert bool_values(pb_utils, request, "normalize") == [True, False]
    assert bool_values(pb_utils, request, "other") is None
    with pytest.raises(ValueError, match="missing"):
        string_values(pb_utils, request, "other")


def test_decode_text_of_a_non_bytes_element() -> None:
    assert decode_text(np.str_("x")) == "x"


async def test_watch_cancellation_stops_at_the_cancel() -> None:
    request = FakeRequest()
    until: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    calls: list[int] = []
    watcher = asyncio.create_task(watch_cancellation(request, until, lambda: calls.append(1), poll_seconds=0.001))
    await asyncio.sleep(0.01)
    assert not watcher.done()
    request.cancelled = True
    assert await asyncio.wait_for(watcher, 1) is True
    assert calls == [1]


async def test_watch_cancellation_ends_with_its_job() -> None:
    request = FakeRequest()
    until: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    watcher = asyncio.create_task(watch_cancellation(request, until, pytest.fail, poll_seconds=0.001))
    await asyncio.sleep(0.005)
    until.set_result(None)
    assert await asyncio.wait_for(watcher, 1) is False
    assert request.polls > 0


async def test_watch_cancellations_reports_each_cancelled_open_request() -> None:
    requests = {1: FakeRequest(), 2: FakeRequest(), 3: FakeRequest()}
    requests[2].cancelled = True
    requests[3].cancelled = True
    open_ids = {1, 2}  # 3 is done already: its flag is not read
    cancelled: list[int] = []
    watcher = asyncio.create_task(
        watch_cancellations(lambda: [(k, requests[k]) for k in sorted(open_ids)], cancelled.append, poll_seconds=0.001)
    )
    try:
        while not cancelled:
            await asyncio.sleep(0.001)
    finally:
        watcher.cancel()
    assert set(cancelled) == {2}
    assert requests[3].polls == 0
