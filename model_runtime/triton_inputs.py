"""Reading a Triton request's inputs, and watching its cancel flag, for the python models.

Takes the `triton_python_backend_utils` module as an argument so this package stays importable
without Triton (like `model_runtime.metrics`). Each function calls pb_utils (or a request's
`is_cancelled`, which is pb_utils IPC too): call them on the stub's asyncio loop only, never from a
worker thread, since Triton 2.51 crashes when several threads of one stub call pb_utils at once
(docs/triton-notes.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

# How often a model reads Triton's cancel flags: cancellation takes effect within this (plus the
# model's own step).
CANCEL_POLL_SECONDS = 0.02

Key = TypeVar("Key")


def decode_text(value: Any) -> str:
    """One element of a BYTES tensor as text (UTF-8; UnicodeDecodeError when it is not)."""
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _values(pb_utils: Any, request: Any, name: str) -> Any:
    """The input's elements, flattened; None when the request does not carry it."""
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy().reshape(-1)


def bytes_input(pb_utils: Any, request: Any, name: str) -> bytes | None:
    """The first element of a BYTES input as bytes; None when the input is absent."""
    values = _values(pb_utils, request, name)
    if values is None:
        return None
    value = values[0]
    return value if isinstance(value, bytes) else str(value).encode("utf-8")


def string_input(pb_utils: Any, request: Any, name: str) -> str | None:
    """The first element of a BYTES input as text; None when the input is absent."""
    values = _values(pb_utils, request, name)
    return None if values is None else decode_text(values[0])


def bool_input(pb_utils: Any, request: Any, name: str, default: bool) -> bool:
    """The first element of a BOOL input; `default` when the input is absent."""
    values = _values(pb_utils, request, name)
    return default if values is None else bool(values[0])


def string_values(pb_utils: Any, request: Any, name: str) -> list[str]:
    """Every element of a BYTES input (a batch: one text per row), as text. ValueError when the
    input is absent, UnicodeDecodeError when an element is not UTF-8."""
    values = _values(pb_utils, request, name)
    if values is None:
        raise ValueError(f"input {name} is missing")
    return [decode_text(value) for value in values]


def bool_values(pb_utils: Any, request: Any, name: str) -> list[bool] | None:
    """Every element of a BOOL input; None when the input is absent."""
    values = _values(pb_utils, request, name)
    return None if values is None else [bool(value) for value in values.astype(bool)]


async def watch_cancellation(
    request: Any,
    until: asyncio.Future[Any],
    on_cancel: Callable[[], None],
    poll_seconds: float = CANCEL_POLL_SECONDS,
) -> bool:
    """Reads one request's cancel flag every poll_seconds until `until` is done (also while the
    request waits its turn). On a cancel: calls on_cancel once and returns True; False when
    `until` finished first. Run it as a task on the stub's loop."""
    while not until.done():
        if request.is_cancelled():
            on_cancel()
            return True
        await asyncio.sleep(poll_seconds)
    return False


async def watch_cancellations(
    open_requests: Callable[[], Iterable[tuple[Key, Any]]],
    on_cancel: Callable[[Key], None],
    poll_seconds: float = CANCEL_POLL_SECONDS,
) -> None:
    """One task for every open request: each poll_seconds, calls on_cancel(key) for each (key,
    request) that open_requests() lists whose cancel flag is set (at every poll, for as long as it
    is listed: on_cancel must not mind being called again). Runs until the task is cancelled."""
    while True:
        await asyncio.sleep(poll_seconds)
        _poll_cancellations(open_requests, on_cancel)


def _poll_cancellations(
    open_requests: Callable[[], Iterable[tuple[Key, Any]]], on_cancel: Callable[[Key], None]
) -> None:
    # A frame of its own, so that the suspended task above never holds a request: a cancelled
    # task keeps its frame in the CancelledError's traceback, and a pb_utils InferRequest freed
    # late (at the stub's exit, after its shared memory is gone) segfaults the stub.
    for key, request in list(open_requests()):
        if request.is_cancelled():
            on_cancel(key)
