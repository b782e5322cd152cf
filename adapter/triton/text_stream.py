"""The LLM model's text stream on a raw Triton `ModelStreamInfer` call: one request per call, its
responses coalesced while the consumer is busy, cancelled when the consumer leaves early.

The request and its responses speak Triton's vLLM-backend dialect (adapter/triton/tensors.py): the
switches a model declares are sent true (streamed, without the prompt, with finish_reason and
token counts), Triton marks the final response (triton_final_response), the counts are summed
over the responses, and vLLM's finish reasons are said in ours.

tritonclient's InferInput/InferResult wrappers (numpy per tensor, three `as_numpy` per response) cost
more CPU per chunk than the rest of the adapter (py-spy; see benchmarks/results/streaming.md), so the
request and responses are built and read here from Triton's generated protobufs directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from adapter.core import errors
from adapter.triton import errors as triton_errors
from adapter.triton.tensors import (
    ENABLE_EMPTY_FINAL_RESPONSE,
    FINAL_RESPONSE,
    FINISH_REASON,
    MESSAGES,
    NUM_INPUT_TOKENS,
    NUM_OUTPUT_TOKENS,
    PARALLEL_TOOL_CALLS,
    SAMPLING_PARAMETERS,
    STREAM_HEADERS,
    TEXT_INPUT,
    TEXT_OUTPUT,
    TOOL_CALLS,
    TOOL_CHOICE,
    TOOLS,
    raw_bytes_element,
    raw_uint32,
)
from adapter.triton.types import TextChunk, TextGenerationRequest, TextInterface

# vLLM's finish reasons in ours; a reason not listed passes as it is (stop, length, tool_calls, ...).
_FINISH_REASONS = {"abort": "cancelled"}
# What a vLLM model puts in finish_reason before the last response (str(None)).
_UNFINISHED = b"None"


async def stream_text(
    stub: service_pb2_grpc.GRPCInferenceServiceStub,
    request: TextGenerationRequest,
    interface: TextInterface,
    inference_error: Callable[[BaseException, str, str], errors.AdapterError],
) -> AsyncIterator[TextChunk]:
    """Streams the LLM model's responses; cancelling the consumer cancels the Triton request.

    Responses that arrived while the consumer was busy (it writes to a slower client) come as one
    chunk, their texts joined in order; the final response (finish_reason) is always a chunk of
    its own. On a raw `ModelStreamInfer` call: tritonclient's InferInput/InferResult wrappers
    (numpy per tensor, three `as_numpy` per response) cost more CPU per chunk than the rest of
    the adapter (py-spy; see benchmarks/results/streaming.md).
    """
    stream = _TextStream(stub, _text_request(request, interface))
    final_seen = False
    prompt_tokens = completion_tokens = 0
    try:
        while True:
            try:
                responses = await stream.next_batch()
            except Exception as err:
                if triton_errors.triton_status(err) is None:
                    raise
                raise inference_error(err, request.model, f"streaming from {request.model!r}") from err
            if not responses:
                break
            texts: list[bytes] = []
            calls: list[dict[str, Any]] = []  # tool-call deltas of the merged responses, in order
            for response in responses:
                if response.error_message:
                    # An error response ends its request: it is final (no cancel after it).
                    final_seen = True
                    refusal = InferenceServerException(msg=response.error_message)
                    raise triton_errors.from_triton(refusal, f"streaming from {request.model!r}") from None
                text, tool_calls, reason, input_tokens, output_tokens = _text_response(response)
                completion_tokens += output_tokens
                if input_tokens is not None:
                    prompt_tokens = input_tokens  # the same on every response that carries it
                if not response.infer_response.parameters[FINAL_RESPONSE].bool_param:
                    texts.append(text)
                    calls.extend(tool_calls)
                    continue
                if texts or calls:
                    yield TextChunk(text=b"".join(texts).decode("utf-8"), tool_calls=tuple(calls))
                    texts, calls = [], []
                final_seen = True
                yield TextChunk(
                    text=text.decode("utf-8"),
                    finish_reason=_FINISH_REASONS.get(reason, reason) if reason else "unknown",
                    prompt_tokens=prompt_tokens,
                    completion_tokens=completion_tokens,
                    tool_calls=tuple(tool_calls),
                )
                return
            joined = texts[0].decode("utf-8") if len(texts) == 1 else b"".join(texts).decode("utf-8")
            yield TextChunk(text=joined, tool_calls=tuple(calls)) if calls else TextChunk(text=joined)
    finally:
        # Left early (our caller went away or failed): cancel the Triton request. Never after
        # the final response (Triton 2.51 would keep counting the request in flight): the call
        # is then read to its end in the background instead.
        stream.finish(cancel=not final_seen)
    raise errors.Internal(f"model {request.model!r} ended its stream without a final response")


# ---- the text stream's raw Triton call ---------------------------------------------------------

# Makes Triton end a failed stream with a real gRPC status instead of an error string in a message.
_STREAM_METADATA = tuple(STREAM_HEADERS.items())
# Coalescing window: a stream whose responses come less than a window apart has the ones that follow
# a response held up to one window, and written with it as one message. A gRPC message costs the
# adapter (and its client) far more CPU than a response's bytes: py-spy put grpc's write at half of
# the event loop's time at 16 streams of the no-compute chunk_counter model. The window is
# COALESCE_WINDOW_S per text stream open in the adapter (under load, fewer messages), at most
# COALESCE_MAX_WINDOW_S. A stream slower than its window (an LLM's tokens, 10+ ms apart at low
# concurrency) is never held; the first response of a stream never is.
COALESCE_WINDOW_S = 0.001
COALESCE_MAX_WINDOW_S = 0.010
# Calls whose final response was seen, read to their end in the background; held here so that the
# garbage collector (which would cancel them) leaves them alone.
_DRAINING: set[asyncio.Task[None]] = set()
_open_text_streams = 0


async def _read_to_end(responses: AsyncIterator[Any]) -> None:
    with contextlib.suppress(Exception):
        async for _ in responses:
            pass


def read_to_end_in_background(responses: AsyncIterator[Any]) -> None:
    """Reads a call whose final response was seen to its end (Triton closes it): dropped, it would
    be cancelled when garbage-collected, which is a cancel after the final response."""
    drain = asyncio.get_running_loop().create_task(_read_to_end(responses))
    _DRAINING.add(drain)
    drain.add_done_callback(_DRAINING.discard)


def _text_stream_closed(_: asyncio.Task[None]) -> None:
    global _open_text_streams
    _open_text_streams -= 1


# Raw BOOL tensors of one element.
_TRUE = b"\x01"
_FALSE = b"\x00"


def _text_request(request: TextGenerationRequest, interface: TextInterface) -> service_pb2.ModelInferRequest:
    triton_request = service_pb2.ModelInferRequest(model_name=request.model)
    triton_request.parameters[ENABLE_EMPTY_FINAL_RESPONSE].bool_param = True
    inputs = [(SAMPLING_PARAMETERS, json.dumps(request.sampling))]
    if request.messages is not None:
        inputs.append((MESSAGES, json.dumps(request.messages)))
    else:
        inputs.append((TEXT_INPUT, request.prompt or ""))
    if request.tools:
        inputs.append((TOOLS, json.dumps(request.tools)))
    if request.tool_choice is not None:
        inputs.append((TOOL_CHOICE, json.dumps(request.tool_choice)))
    for name, value in inputs:
        tensor = triton_request.inputs.add()
        tensor.name, tensor.datatype = name, "BYTES"
        tensor.shape.append(1)
        encoded = value.encode("utf-8")
        triton_request.raw_input_contents.append(struct.pack("<I", len(encoded)) + encoded)
    flags = [(name, _TRUE) for name in interface.switches]
    if not request.parallel_tool_calls:
        flags.append((PARALLEL_TOOL_CALLS, _FALSE))
    for flag, raw in flags:
        tensor = triton_request.inputs.add()
        tensor.name, tensor.datatype = flag, "BOOL"
        tensor.shape.append(1)
        triton_request.raw_input_contents.append(raw)
    return triton_request


_NO_CALLS: list[dict[str, Any]] = []


def _text_response(response: Any) -> tuple[bytes, list[dict[str, Any]], str | None, int | None, int]:
    """(text, tool-call deltas, finish reason or None, num_input_tokens or None, num_output_tokens
    of this response) of one response (the caller handles error responses first)."""
    infer = response.infer_response
    outputs = infer.outputs
    raw = infer.raw_output_contents
    if len(outputs) == 1 and outputs[0].name == TEXT_OUTPUT:  # a chunk without counts: nothing else to read
        return raw_bytes_element(raw[0]), _NO_CALLS, None, None, 0
    text = b""
    calls = _NO_CALLS
    reason: str | None = None
    input_tokens: int | None = None
    output_tokens = 0
    for i, output in enumerate(outputs):
        name = output.name
        if name == TEXT_OUTPUT:
            text = raw_bytes_element(raw[i])
        elif name == NUM_OUTPUT_TOKENS:
            output_tokens = raw_uint32(raw[i])
        elif name == FINISH_REASON:
            value = raw_bytes_element(raw[i])
            reason = value.decode("utf-8") if value and value != _UNFINISHED else None
        elif name == NUM_INPUT_TOKENS:
            input_tokens = raw_uint32(raw[i])
        elif name == TOOL_CALLS:
            calls = json.loads(raw_bytes_element(raw[i]))
    return text, calls, reason, input_tokens, output_tokens


class _TextStream:
    """One request on a raw Triton `ModelStreamInfer` call. A reader task keeps taking responses
    off the call while the consumer is busy, so the consumer gets everything that is ready at once
    (and can merge it) instead of one response per wake-up."""

    __slots__ = ("_call", "_pending", "_error", "_ended", "_waiter", "_reader", "_arrived", "_gap")

    def __init__(self, stub: service_pb2_grpc.GRPCInferenceServiceStub, request: service_pb2.ModelInferRequest):
        self._call = stub.ModelStreamInfer(metadata=_STREAM_METADATA)
        self._pending: list[Any] = []
        self._error: BaseException | None = None
        self._ended = False
        self._waiter: asyncio.Future[None] | None = None
        self._arrived = 0.0  # when the last response arrived (loop time)
        self._gap = float("inf")  # the time between the last two responses
        self._reader = asyncio.get_running_loop().create_task(self._read(request))
        global _open_text_streams
        _open_text_streams += 1
        self._reader.add_done_callback(_text_stream_closed)  # also when cancelled before it ran

    async def _read(self, request: service_pb2.ModelInferRequest) -> None:
        call = self._call
        clock = asyncio.get_running_loop().time
        try:
            await call.write(request)
            await call.done_writing()
            while True:
                response = await call.read()
                if response is grpc.aio.EOF:
                    break
                self._pending.append(response)
                now = clock()
                self._gap, self._arrived = now - self._arrived, now
                waiter = self._waiter
                if waiter is not None:
                    self._waiter = None
                    if not waiter.done():
                        waiter.set_result(None)
        except asyncio.CancelledError:
            self._error = self._error or errors.Cancelled("the Triton stream was cancelled")
        except Exception as err:  # noqa: BLE001 - handed to the consumer, which maps it
            self._error = err
        finally:
            self._ended = True
            waiter, self._waiter = self._waiter, None
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    async def next_batch(self) -> list[Any]:
        """Every response that arrived since the last call, in order (waits for one); [] at the
        call's end; raises the call's error once the responses before it were taken."""
        while not self._pending:
            if self._ended:
                if self._error is not None:
                    raise self._error
                return []
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        window = min(COALESCE_WINDOW_S * _open_text_streams, COALESCE_MAX_WINDOW_S)
        if len(self._pending) == 1 and self._gap < window and not self._ended:
            # Responses come fast: give the next ones the rest of the window to join this one.
            hold = self._arrived + window - asyncio.get_running_loop().time()
            if hold > 0:
                await asyncio.sleep(hold)
        batch, self._pending = self._pending, []
        return batch

    def finish(self, cancel: bool) -> None:
        if self._ended:
            return
        if cancel:
            self._call.cancel()
            self._reader.cancel()
            return
        # The final response was seen: let the reader take the call to its end (its status).
        _DRAINING.add(self._reader)
        self._reader.add_done_callback(_DRAINING.discard)
