"""The embedded Triton's log forwarding keeps draining its output, whatever a model prints."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest

from adapter.triton.embedded import MAX_LOG_LINE_BYTES, EmbeddedTriton, EmbeddedTritonOptions


async def test_a_huge_line_is_cut_and_the_lines_after_it_still_arrive(caplog: pytest.LogCaptureFixture) -> None:
    # A tokenizer warning quoting a 300 kB prompt: a line reader (64 kB limit) would give up on it
    # and stop draining the pipe, and Triton, blocked writing its log, would hang.
    triton = EmbeddedTriton(EmbeddedTritonOptions(Path("."), 0, 0, 1.0))
    stdout = asyncio.StreamReader()
    triton._process = SimpleNamespace(stdout=stdout)  # type: ignore[assignment]
    stdout.feed_data(b"before\n" + b"x" * 300_000 + b"\nafter 1\n")
    stdout.feed_data(b"after 2 without a newline")
    stdout.feed_eof()
    with caplog.at_level(logging.INFO, logger="triton"):
        await asyncio.wait_for(triton._forward_log(), 5)
    lines = [r.getMessage() for r in caplog.records if r.name == "triton"]
    assert lines[0] == "before" and lines[-2:] == ["after 1", "after 2 without a newline"]
    long_parts = lines[1:-2]
    assert long_parts and all(len(part) < MAX_LOG_LINE_BYTES + 100 for part in long_parts)
    assert all("more bytes]" in part or set(part) == {"x"} for part in long_parts)
