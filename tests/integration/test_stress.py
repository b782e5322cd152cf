"""Many rounds of concurrent streams, some cancelled mid-way or right after their last chunk.

Guards the crash docs/triton-notes.md describes (concurrent pb_utils calls in one stub kill
tritonserver after a few dozen rounds) and checks that every stream is accounted for, from both
sides.
"""

from __future__ import annotations

import asyncio
import random

import grpc
import pytest

from adapter.gen.inference.v1 import inference_pb2 as pb
from adapter.gen.inference.v1 import inference_pb2_grpc as pb_grpc
from tests.harness import RunningAdapter
from tests.integration.triton_direct import metric_total, triton_is_live

ROUNDS = 50
STREAMS_PER_ROUND = 4


async def _one_stream(stub: pb_grpc.InferenceServiceStub, mode: str, seed: int) -> str:
    request = pb.ChatStreamRequest(
        model="llm",
        messages=[pb.ChatMessage(role="user", content=f"stream {seed}")],
        options=pb.GenerationOptions(max_tokens=24 if mode != "cancel_mid" else 400, seed=seed),
    )
    call = stub.ChatStream(request, timeout=120)
    chunks = 0
    async for response in call:
        chunks += 1
        if mode == "cancel_mid" and chunks == 2:
            call.cancel()
            return "cancelled"
        if response.done:
            assert response.usage.completion_tokens > 0
            if mode == "cancel_after_last":
                call.cancel()  # racing the end of the stream must be harmless
            return "completed"
    raise AssertionError(f"stream ended without a final message ({mode}, {chunks} chunks)")


async def test_concurrent_and_cancelled_streams_leave_triton_alive(adapter: RunningAdapter) -> None:
    metrics = adapter.triton_metrics_url
    finished_before = metric_total(metrics, "llm_generation_requests_total")
    rng = random.Random(2024)
    outcomes: dict[str, int] = {}
    async with grpc.aio.insecure_channel(adapter.address) as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        for round_number in range(ROUNDS):
            modes = [rng.choice(["complete", "cancel_mid", "cancel_after_last"]) for _ in range(STREAMS_PER_ROUND)]
            results = await asyncio.gather(
                *(_one_stream(stub, mode, round_number * 10 + i) for i, mode in enumerate(modes)),
                return_exceptions=True,
            )
            for mode, result in zip(modes, results, strict=True):
                if isinstance(result, BaseException):
                    pytest.fail(f"round {round_number}: {mode} stream failed: {result!r}\n{adapter.log_tail()}")
                outcomes[result] = outcomes.get(result, 0) + 1

        assert triton_is_live(adapter.triton_grpc_url), adapter.log_tail()
        assert sum(outcomes.values()) == ROUNDS * STREAMS_PER_ROUND
        assert outcomes.get("cancelled", 0) > 0 and outcomes.get("completed", 0) > 0

        # The model ended every request it was given, one way or another, and nothing runs on.
        expected = finished_before + ROUNDS * STREAMS_PER_ROUND
        for _ in range(100):
            if metric_total(metrics, "llm_generation_requests_total") >= expected:
                break
            await asyncio.sleep(0.1)
        assert metric_total(metrics, "llm_generation_requests_total") == expected
        assert metric_total(metrics, "llm_active_generations") == 0
        assert metric_total(metrics, "llm_generation_requests_total", finish_reason="error") == 0

        # And it still serves.
        final = [
            r
            async for r in stub.ChatStream(
                pb.ChatStreamRequest(
                    model="llm",
                    messages=[pb.ChatMessage(role="user", content="still there?")],
                    options=pb.GenerationOptions(max_tokens=4),
                ),
                timeout=60,
            )
        ]
        assert final[-1].done
