"""The gateway's text stream on a fake Triton call: the vLLM-backend dialect both ways (switches sent,
per-response counts summed, Triton's final mark, vLLM's finish reasons), order, merging of ready
responses (never into the final one), cancel before the final response, and no cancel after it."""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import grpc
import pytest
from tritonclient.grpc import service_pb2

from adapter.core import errors
from adapter.triton.gateway import TritonGateway
from adapter.triton.tensors import TEXT_SWITCHES
from adapter.triton.types import TextGenerationRequest, TextInterface


def _bytes(value: str) -> bytes:
    encoded = value.encode()
    return struct.pack("<I", len(encoded)) + encoded


def _response(
    text: str, final: bool = False, reason: str | None = "length", tokens: int = 1, counts: bool = True
) -> service_pb2.ModelStreamInferResponse:
    """A vLLM-style response: finish_reason "None" until the last one, num_input_tokens on every
    one, num_output_tokens = this response's tokens; Triton's triton_final_response mark."""
    response = service_pb2.ModelStreamInferResponse()
    infer = response.infer_response
    infer.parameters["triton_final_response"].bool_param = final
    outputs: list[tuple[str, str, bytes]] = [("text_output", "BYTES", _bytes(text))]
    if reason is not None:
        outputs.append(("finish_reason", "BYTES", _bytes(reason if final else "None")))
    if counts:
        outputs += [
            ("num_input_tokens", "UINT32", struct.pack("<I", 3)),
            ("num_output_tokens", "UINT32", struct.pack("<I", tokens)),
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
DIALECT = TextInterface(switches=TEXT_SWITCHES, messages=True)


async def _started(gateway: TritonGateway, request: TextGenerationRequest = REQUEST) -> tuple[Any, Any, Any]:
    stream = gateway.stream_text(request, DIALECT)
    first = asyncio.ensure_future(stream.__anext__())
    await asyncio.sleep(0.01)
    return stream, first, gateway._stub.calls[0]  # type: ignore[attr-defined]


async def test_the_request_switches_on_every_dialect_input_and_asks_triton_to_mark_the_final_response(
    gateway: TritonGateway,
) -> None:
    stream, first, call = await _started(gateway)
    sent = call.written[0]
    booleans = {t.name: sent.raw_input_contents[i] for i, t in enumerate(sent.inputs) if t.datatype == "BOOL"}
    assert booleans == dict.fromkeys(TEXT_SWITCHES, b"\x01")
    assert sent.parameters["triton_enable_empty_final_response"].bool_param
    call.queue.put_nowait(_response("a", final=True, reason="stop"))
    assert (await first).finish_reason == "stop"


async def test_vllms_abort_is_a_cancel_and_a_final_response_without_a_reason_is_unknown(
    gateway: TritonGateway,
) -> None:
    stream, first, call = await _started(gateway)
    call.queue.put_nowait(_response("x", final=True, reason="abort"))
    assert (await first).finish_reason == "cancelled"
    gateway._stub.calls.clear()  # type: ignore[attr-defined]
    stream, first, call = await _started(gateway)
    call.queue.put_nowait(_response("x", final=True, reason=None, counts=False))
    last = await first
    assert (last.finish_reason, last.prompt_tokens, last.completion_tokens) == ("unknown", 0, 0)


async def test_a_flags_only_final_response_ends_the_stream(gateway: TritonGateway) -> None:
    stream, first, call = await _started(gateway)
    call.queue.put_nowait(_response("a", reason="stop"))
    empty = service_pb2.ModelStreamInferResponse()
    empty.infer_response.parameters["triton_final_response"].bool_param = True
    call.queue.put_nowait(empty)
    assert (await first).text == "a"
    last = await stream.__anext__()
    assert (last.text, last.finish_reason, last.completion_tokens) == ("", "unknown", 1)


async def test_responses_ready_together_are_merged_in_order_and_the_final_stays_separate(
    gateway: TritonGateway,
) -> None:
    stream, first, call = await _started(gateway)
    assert call.half_closed and call.written[0].inputs[1].name == "messages"
    call.queue.put_nowait(_response("a"))
    assert (await first).text == "a"  # the first response is never held
    for text in ("b", "c", "d"):
        call.queue.put_nowait(_response(text))
    call.queue.put_nowait(_response("e", final=True, tokens=3))  # num_output_tokens are summed: 7
    await asyncio.sleep(0.02)
    rest = [chunk async for chunk in stream]
    assert [c.text for c in rest] == ["bcd", "e"]
    assert rest[-1].finish_reason == "length" and (rest[-1].prompt_tokens, rest[-1].completion_tokens) == (3, 7)
    assert all(c.finish_reason is None for c in rest[:-1])
    call.queue.put_nowait(grpc.aio.EOF)
    await asyncio.sleep(0)
    assert not call.cancelled  # never after the final response: the call is read to its end instead


async def test_leaving_before_the_final_response_cancels_the_triton_call(gateway: TritonGateway) -> None:
    stream, first, call = await _started(gateway)
    call.queue.put_nowait(_response("a"))
    await first
    await stream.aclose()  # type: ignore[attr-defined]
    assert call.cancelled


async def test_a_triton_error_after_some_chunks_comes_after_them_mapped(gateway: TritonGateway) -> None:
    stream, first, call = await _started(gateway)
    call.queue.put_nowait(_response("a"))
    call.queue.put_nowait(
        grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "gone")
    )
    assert (await first).text == "a"
    with pytest.raises(errors.Unavailable):
        await stream.__anext__()


async def test_a_stream_that_ends_without_a_final_response_is_internal(gateway: TritonGateway) -> None:
    stream, first, call = await _started(gateway)
    call.queue.put_nowait(_response("a"))
    call.queue.put_nowait(grpc.aio.EOF)
    assert (await first).text == "a"
    with pytest.raises(errors.Internal):
        await stream.__anext__()


async def test_an_error_response_ends_its_request_and_is_never_followed_by_a_cancel(gateway: TritonGateway) -> None:
    # Triton refuses a request it cannot run (inputs of another kind of model) with an error
    # response inside the stream. That response is the request's last: a cancel after it makes
    # Triton 2.51 count the request in flight forever, and the model can no longer be unloaded.
    stream, first, call = await _started(gateway)
    refusal = service_pb2.ModelStreamInferResponse(error_message="unexpected inference input 'messages' for model 'x'")
    call.queue.put_nowait(refusal)
    with pytest.raises(errors.InvalidArgument, match="not a model of the kind"):
        await first
    call.queue.put_nowait(grpc.aio.EOF)
    await asyncio.sleep(0)
    assert not call.cancelled
