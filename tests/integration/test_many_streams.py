"""1,000 concurrent streams through the adapter against chunk_counter, the deterministic test model
that numbers its chunks ("0,", "1,", ... each padded with '.'): no chunk may be lost, duplicated or
reordered, and every stream ends with its final message.

Chunks are counted by parsing each stream's concatenated text, never by counting messages: the
adapter may join chunks that arrived together into one message.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator

import grpc
import pytest

from adapter.gen.inference.v1 import inference_pb2 as pb
from adapter.gen.inference.v1 import inference_pb2_grpc as pb_grpc
from tests.harness import RunningAdapter, start_adapter, stop_adapter

STREAMS = 1000
CHUNKS = 50
CHANNELS = 4  # separate connections (local subchannel pools), 250 streams each
CHUNK = re.compile(r"(\d+),\.*")


@pytest.fixture(scope="module")
def many_streams_adapter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningAdapter]:
    workdir = tmp_path_factory.mktemp("many-streams")
    running = start_adapter(
        workdir / "adapter.log",
        env={
            "IMAGE_DIR": str(workdir / "images"),
            "PRELOAD_MODELS": "chunk_counter",
            # Above the 1,000 streams (the default, 100, answers the rest RESOURCE_EXHAUSTED).
            "GRPC_MAX_CONCURRENT_RPCS": "2000",
        },
        test_models=True,
    )
    try:
        yield running
    finally:
        stop_adapter(running)


def chunk_numbers(text: str) -> list[int]:
    """The numbers of the chunks in a stream's text; fails on anything that is not a chunk."""
    numbers, position = [], 0
    for match in CHUNK.finditer(text):
        assert match.start() == position, f"unexpected text {text[position : match.start()]!r} at {position}"
        numbers.append(int(match.group(1)))
        position = match.end()
    assert position == len(text), f"unexpected text {text[position:]!r} at the end"
    return numbers


async def one_stream(stub: pb_grpc.InferenceServiceStub, index: int) -> tuple[str, pb.ChatStreamResponse | None]:
    options = pb.GenerationOptions(max_tokens=CHUNKS)
    if index % 2:
        call = stub.GenerateStream(
            pb.GenerateStreamRequest(model="chunk_counter", prompt=f"stream {index}", options=options), timeout=300
        )
    else:
        call = stub.ChatStream(
            pb.ChatStreamRequest(
                model="chunk_counter",
                messages=[pb.ChatMessage(role="user", content=f"stream {index}")],
                options=options,
            ),
            timeout=300,
        )
    text: list[str] = []
    final = None
    async for response in call:
        assert final is None, f"stream {index}: a message after the final one"
        text.append(response.delta)
        if response.done:
            final = response
    return "".join(text), final


async def test_thousand_concurrent_streams_lose_no_chunk(many_streams_adapter: RunningAdapter) -> None:
    channels = [
        grpc.aio.insecure_channel(many_streams_adapter.address, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(CHANNELS)
    ]
    try:
        stubs = [pb_grpc.InferenceServiceStub(channel) for channel in channels]
        started = time.monotonic()
        results = await asyncio.gather(
            *(one_stream(stubs[i % CHANNELS], i) for i in range(STREAMS)), return_exceptions=True
        )
        elapsed = time.monotonic() - started
    finally:
        for channel in channels:
            await channel.close()

    failures = [(i, r) for i, r in enumerate(results) if isinstance(r, BaseException)]
    assert not failures, (
        f"{len(failures)} of {STREAMS} streams failed, first: {failures[0][1]!r}\n{many_streams_adapter.log_tail()}"
    )
    expected = list(range(CHUNKS))
    for index, result in enumerate(results):
        assert not isinstance(result, BaseException)
        text, final = result
        numbers = chunk_numbers(text)
        if numbers != expected:
            missing = sorted(set(expected) - set(numbers))
            duplicated = sorted({n for n in numbers if numbers.count(n) > 1})
            pytest.fail(
                f"stream {index}: chunks wrong (missing {missing}, duplicated {duplicated}, "
                f"in order: {numbers == sorted(numbers)}): {numbers}"
            )
        assert final is not None, f"stream {index} ended without a final done message"
        assert final.finish_reason == pb.FINISH_REASON_LENGTH, f"stream {index}: {final}"
        assert final.usage.completion_tokens == CHUNKS, f"stream {index}: {final.usage}"
    print(f"{STREAMS} streams x {CHUNKS} chunks in {elapsed:.1f}s")


def test_chunk_numbers_parser() -> None:
    assert chunk_numbers("0,......1,......10,.....") == [0, 1, 10]
    assert chunk_numbers("") == []
    with pytest.raises(AssertionError):
        chunk_numbers("0,......x1,......")
