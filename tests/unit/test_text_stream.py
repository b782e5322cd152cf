"""The gateway's text stream on a fake Triton call: order, merging of ready responses (never into
the final one), cancel before the final response, and no cancel after it."""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import grpc
import pytest
from tritonclient.grpc import service_pb2

from adapter.core import errors
from adapter.triton.gateway import TritonGateway
from adapter.triton.types import TextGenerationRequest


def _bytes(value: str) -> bytes:
    encoded = value.encode()
    return struct.pack("<I", len(encoded)) + encoded


def _response(text: str, final: bool = False) -> service_pb2.ModelStreamInferResponse:
    response = service_pb2.ModelStreamInferResponse()
    infer = response.infer_response
    outputs: list[tuple[str, str, bytes]] = [("text_output", "BYTES", _bytes(text))]
    if final:
        outputs += [
            ("finish_reason", "BYTES", _bytes("length")),
            ("prompt_tokens", "INT32", struct.pack("<i", 3)),
            ("completion_tokens", "INT32", struct.pack("<i", 7)),
        ]
    for name, datatype, raw in outputs:
        tensor = infer.outputs.add()
        tensor.name, tensor.datatype = name, datatype
        tensor.shape.append(1)
        infer.raw_output_contents.append(raw)
    return response


class FakeCall:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.written: list[Any] = []
        self.cancelled = False
        self.half_closed = False

    async def write(self, request: Any) -> None:
        self.written.append(request)

    async def done_writing(self) -> None:
        self.half_closed = True

    async def read(self) -> Any:
        item = await self.queue.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def cancel(self) -> bool:
        self.cancelled = True
        return True


class FakeStub:
    def __init__(self) -> None:
        self.calls: list[FakeCall] = []

    def ModelStreamInfer(self, metadata: Any = None) -> FakeCall:  # noqa: N802 - gRPC's name
        self.calls.append(FakeCall())
        return self.calls[-1]


@pytest.fixture
def gateway() -> TritonGateway:
    gw = TritonGateway.__new__(TritonGateway)
    gw._stub = FakeStub()  # type: ignore[assignment]
    gw._model_info = {}
    gw.on_model_missing = None
    return gw


REQUEST = TextGenerationRequest(model="llm", sampling={"max_tokens": 7}, messages=[{"role": "user", "content": "hi"}])


async def test_responses_ready_together_are_merged_in_order_and_the_final_stays_separate(
    gateway: TritonGateway,
) -> None:
    stream = gateway.stream_text(REQUEST)
    first = asyncio.ensure_future(stream.__anext__())
    await asyncio.sleep(0.01)
    call = gateway._stub.calls[0]  # type: ignore[attr-defined]
    assert call.half_closed and call.written[0].inputs[1].name == "messages"
    call.queue.put_nowait(_response("a"))
    assert (await first).text == "a"  # the first response is never held
    for text in ("b", "c", "d"):
        call.queue.put_nowait(_response(text))
    call.queue.put_nowait(_response("e", final=True))
    await asyncio.sleep(0.02)
    rest = [chunk async for chunk in stream]
    assert [c.text for c in rest] == ["bcd", "e"]
    assert rest[-1].finish_reason == "length" and (rest[-1].prompt_tokens, rest[-1].completion_tokens) == (3, 7)
    assert all(c.finish_reason is None for c in rest[:-1])
    call.queue.put_nowait(grpc.aio.EOF)
    await asyncio.sleep(0)
    assert not call.cancelled  # never after the final response: the call is read to its end instead


async def test_leaving_before_the_final_response_cancels_the_triton_call(gateway: TritonGateway) -> None:
    stream = gateway.stream_text(REQUEST)
    first = asyncio.ensure_future(stream.__anext__())
    await asyncio.sleep(0.01)
    call = gateway._stub.calls[0]  # type: ignore[attr-defined]
    call.queue.put_nowait(_response("a"))
    await first
    await stream.aclose()  # type: ignore[attr-defined]
    assert call.cancelled


async def test_a_triton_error_after_some_chunks_comes_after_them_mapped(gateway: TritonGateway) -> None:
    stream = gateway.stream_text(REQUEST)
    first = asyncio.ensure_future(stream.__anext__())
    await asyncio.sleep(0.01)
    call = gateway._stub.calls[0]  # type: ignore[attr-defined]
    call.queue.put_nowait(_response("a"))
    call.queue.put_nowait(
        grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "gone")
    )
    assert (await first).text == "a"
    with pytest.raises(errors.Unavailable):
        await stream.__anext__()


async def test_a_stream_that_ends_without_a_final_response_is_internal(gateway: TritonGateway) -> None:
    stream = gateway.stream_text(REQUEST)
    first = asyncio.ensure_future(stream.__anext__())
    await asyncio.sleep(0.01)
    call = gateway._stub.calls[0]  # type: ignore[attr-defined]
    call.queue.put_nowait(_response("a"))
    call.queue.put_nowait(grpc.aio.EOF)
    assert (await first).text == "a"
    with pytest.raises(errors.Internal):
        await stream.__anext__()


async def test_an_error_response_ends_its_request_and_is_never_followed_by_a_cancel(gateway: TritonGateway) -> None:
    # Triton refuses a request it cannot run (inputs of another kind of model) with an error
    # response inside the stream. That response is the request's last: a cancel after it makes
    # Triton 2.51 count the request in flight forever, and the model can no longer be unloaded.
    stream = gateway.stream_text(REQUEST)
    first = asyncio.ensure_future(stream.__anext__())
    await asyncio.sleep(0.01)
    call = gateway._stub.calls[0]  # type: ignore[attr-defined]
    refusal = service_pb2.ModelStreamInferResponse(error_message="unexpected inference input 'messages' for model 'x'")
    call.queue.put_nowait(refusal)
    with pytest.raises(errors.InvalidArgument, match="not a model of the kind"):
        await first
    call.queue.put_nowait(grpc.aio.EOF)
    await asyncio.sleep(0)
    assert not call.cancelled
