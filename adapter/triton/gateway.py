"""The one layer that talks to Triton: readiness, the model repository, loading, streaming inference.

Servicers call this with plain Python values; nothing here knows about the public protobufs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import struct
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt
import tritonclient.grpc.aio as triton_grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from adapter.core import errors
from adapter.triton import procfs
from adapter.triton.embedding_coalescer import EmbeddingCoalescer

log = logging.getLogger(__name__)

# Makes Triton end a failed stream with a real gRPC status instead of an error string in a message.
STREAM_HEADERS = {"triton_grpc_error": "true"}


@dataclass(frozen=True)
class TextGenerationRequest:
    model: str
    sampling: dict[str, Any]
    prompt: str | None = None
    messages: list[dict[str, str]] | None = None


@dataclass(frozen=True)
class TextChunk:
    """One response of the LLM model; the last one has finish_reason set."""

    text: str
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(frozen=True)
class ImageProgress:
    """One response of the image model: progress, and on the last one the PNGs."""

    step: int
    total_steps: int
    images: list[bytes] | None = None  # set only on the final response


@dataclass(frozen=True)
class EmbeddingRows:
    """The embedding model's answer for a list of texts, row i for text i."""

    vectors: npt.NDArray[np.float32]  # [n, dimension]
    token_counts: npt.NDArray[np.int32]  # [n]
    truncated: npt.NDArray[np.bool_]  # [n]

    def slice(self, start: int, end: int) -> EmbeddingRows:
        return EmbeddingRows(self.vectors[start:end], self.token_counts[start:end], self.truncated[start:end])


@dataclass
class _ModelInfo:
    parameters: dict[str, str] = field(default_factory=dict)
    max_batch_size: int = 0
    outputs: frozenset[str] = frozenset()  # the names of the model's output tensors
    inputs: frozenset[str] = frozenset()  # the names of the model's input tensors


# What each kind of call needs a model to declare (inputs, outputs): checked against the loaded
# model's config before anything is sent, so a model of the wrong kind (an embedding model asked to
# chat) is refused by what it declares, not by how Triton words its refusal.
INTERFACES: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "chat": (frozenset({"messages"}), frozenset({"text_output"})),
    "generate": (frozenset({"text_input"}), frozenset({"text_output"})),
    "embedding": (frozenset({"text_input"}), frozenset({"embedding"})),
}


def _bytes_input(name: str, value: str) -> triton_grpc.InferInput:
    tensor = triton_grpc.InferInput(name, [1], "BYTES")
    tensor.set_data_from_numpy(np.array([value.encode("utf-8")], dtype=np.object_))
    return tensor


def _first_int(result: Any, name: str) -> int:
    array = result.as_numpy(name)
    return int(array.reshape(-1)[0]) if array is not None else 0


CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", -1),
    ("grpc.max_receive_message_length", -1),
    # Reconnect within a second of a restarted Triton (gRPC's default backoff grows to 120 s).
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


class TritonGateway:
    def __init__(self, url: str, load_timeout_s: float, stub_pids: Callable[[str], set[int]] | None = None) -> None:
        self.url = url
        # Embedded Triton only: the processes serving a model, to wait for their exit on unload.
        self._stub_pids = stub_pids
        self._client = triton_grpc.InferenceServerClient(url, channel_args=CHANNEL_OPTIONS)
        # Hot unary paths use Triton's generated stub with raw tensors: tritonclient's InferInput /
        # InferResult wrappers cost more CPU per call than the rest of the adapter (measured).
        self._channel = grpc.aio.insecure_channel(url, options=CHANNEL_OPTIONS)
        # Told when Triton answers NOT_FOUND for a model (it lost it: restarted, unloaded elsewhere).
        self.on_model_missing: Callable[[str], None] | None = None
        self._stub = service_pb2_grpc.GRPCInferenceServiceStub(self._channel)
        self._embeddings = EmbeddingCoalescer(self._embed_part, EmbeddingRows.slice, max_in_flight=1)
        self._load_timeout_s = load_timeout_s
        self._model_info: dict[str, _ModelInfo] = {}

    async def close(self) -> None:
        await self._client.close()
        await self._channel.close()

    async def is_ready(self) -> bool:
        """Triton answers and is live. Not Triton's own "ready": with strict readiness (its
        default) that turns false whenever a model is unloading or unloaded, which here is
        routine, not a fault."""
        try:
            return bool(await self._client.is_server_live())
        except Exception:  # noqa: BLE001 - any failure means "not ready"
            return False

    async def repository_index(self) -> dict[str, tuple[str, str]]:
        """Every model in Triton's repository: name -> (state, reason); state "" = never loaded."""
        try:
            index = await self._client.get_model_repository_index(as_json=True)
        except (InferenceServerException, OSError) as err:
            raise errors.from_triton(err, "reading the model repository") from err
        return {entry["name"]: (entry.get("state", ""), entry.get("reason", "")) for entry in index.get("models", [])}

    # ---- model control (the scheduler's ModelControl) ----------------------------------------

    async def model_names(self) -> list[str]:
        return sorted(await self.repository_index())

    async def load(self, model: str) -> None:
        """Loads the model; FailedPrecondition with Triton's reason when it cannot."""
        started = time.monotonic()
        try:
            await self._client.load_model(model, client_timeout=self._load_timeout_s)
        except InferenceServerException as err:
            code = errors.triton_status(err)
            if code in (errors.Code.UNAVAILABLE, errors.Code.DEADLINE_EXCEEDED):
                raise errors.from_triton(err, f"loading model {model!r}") from err
            raise errors.FailedPrecondition(f"model {model!r} failed to load: {errors.triton_message(err)}") from err
        self.forget(model)
        log.info("loaded model %s in %.1fs", model, time.monotonic() - started)

    async def unload(self, model: str, timeout_s: float = 120.0) -> None:
        """Unloads the model and returns once the repository index no longer shows it READY
        (Triton's unload is asynchronous: the stub process exits afterwards)."""
        self.forget(model)
        processes = self._stub_pids(model) if self._stub_pids else set()
        try:
            await self._client.unload_model(model)
        except InferenceServerException as err:
            raise errors.from_triton(err, f"unloading model {model!r}") from err
        deadline = time.monotonic() + timeout_s
        while (await self.repository_index()).get(model, ("", ""))[0] == "READY":
            if time.monotonic() > deadline:
                raise errors.Unavailable(f"model {model!r} still READY {timeout_s:.0f}s after its unload")
            await asyncio.sleep(0.05)
        # Its stub exits 1-3 s after the index changes; only then is the memory really back.
        while any(procfs.alive(pid) for pid in processes):
            if time.monotonic() > deadline:
                log.warning("model %s: stub processes %s outlived its unload", model, processes)
                break
            await asyncio.sleep(0.05)

    async def model_info(self, model: str) -> _ModelInfo:
        """The loaded model's config (parameters, max_batch_size), read once per load."""
        info = self._model_info.get(model)
        if info is None:
            info = self._model_info[model] = await self._read_model_info(model)
        return info

    async def _read_model_info(self, model: str) -> _ModelInfo:
        try:
            config = await self._client.get_model_config(model, as_json=True)
        except InferenceServerException as err:
            raise errors.from_triton(err, f"reading the config of {model!r}") from err
        body = config.get("config", {})
        raw = body.get("parameters", {})
        return _ModelInfo(
            parameters={key: value.get("string_value", "") for key, value in raw.items()},
            max_batch_size=int(body.get("max_batch_size", 0) or 0),
            outputs=frozenset(str(output.get("name", "")) for output in body.get("output", [])),
            inputs=frozenset(str(tensor.get("name", "")) for tensor in body.get("input", [])),
        )

    async def require_interface(self, model: str, call: str) -> _ModelInfo:
        """The loaded model's config, after checking it declares what `call` (a key of INTERFACES)
        sends and reads; INVALID_ARGUMENT naming what it lacks otherwise."""
        info = await self.model_info(model)
        inputs, outputs = INTERFACES[call]
        missing = sorted((inputs - info.inputs) | (outputs - info.outputs))
        if missing:
            raise errors.InvalidArgument(
                f"model {model!r} cannot serve {call}: it does not declare {', '.join(missing)} "
                f"(its inputs: {sorted(info.inputs)}, outputs: {sorted(info.outputs)}); "
                "pick a model of that kind"
            )
        return info

    async def embed(self, model: str, texts: list[str], normalize: bool) -> EmbeddingRows:
        """Embeds texts in order, in requests of at most the model's max_batch_size, sent at once
        so Triton's dynamic batcher can run them together; concurrent calls are coalesced."""
        info = await self.require_interface(model, "embedding")
        step = info.max_batch_size if info.max_batch_size > 0 else len(texts)
        parts = await asyncio.gather(
            *(self._embeddings.embed(model, texts[i : i + step], normalize, step) for i in range(0, len(texts), step))
        )
        return EmbeddingRows(
            vectors=np.concatenate([p.vectors for p in parts]),
            token_counts=np.concatenate([p.token_counts for p in parts]),
            truncated=np.concatenate([p.truncated for p in parts]),
        )

    async def _embed_part(self, model: str, texts: list[str], normalize: list[bool]) -> EmbeddingRows:
        request = service_pb2.ModelInferRequest(model_name=model)
        for name, datatype in (("text_input", "BYTES"), ("normalize", "BOOL")):
            tensor = request.inputs.add()
            tensor.name, tensor.datatype = name, datatype
            tensor.shape.extend((len(texts), 1))
        # Triton's raw BYTES layout: each element is a little-endian uint32 length, then the bytes.
        encoded = [text.encode("utf-8") for text in texts]
        request.raw_input_contents.append(b"".join(struct.pack("<I", len(e)) + e for e in encoded))
        request.raw_input_contents.append(bytes(normalize))  # one byte per BOOL
        try:
            response = await self._stub.ModelInfer(request)
        except grpc.aio.AioRpcError as err:
            raise self._inference_error(err, model, f"embedding with {model!r}") from err
        raw = {out.name: (tuple(out.shape), response.raw_output_contents[i]) for i, out in enumerate(response.outputs)}
        try:
            (vector_shape, vectors), (_, counts), (_, truncated) = (
                raw["embedding"],
                raw["token_count"],
                raw["truncated"],
            )
        except KeyError as err:
            raise errors.Internal(f"model {model!r} did not return output {err}") from None
        return EmbeddingRows(
            vectors=np.frombuffer(vectors, dtype=np.float32).reshape(vector_shape),
            token_counts=np.frombuffer(counts, dtype=np.int32),
            truncated=np.frombuffer(truncated, dtype=np.bool_),
        )

    async def stream_image(
        self,
        model: str,
        prompt: str,
        negative_prompt: str,
        parameters: dict[str, Any],
        image: bytes = b"",
        mask: bytes = b"",
    ) -> AsyncIterator[ImageProgress]:
        """Streams the image model's progress; the last item carries the images."""
        inputs = [_bytes_input("prompt", prompt), _bytes_input("parameters", json.dumps(parameters))]
        if negative_prompt:
            inputs.append(_bytes_input("negative_prompt", negative_prompt))
        for name, data in (("image", image), ("mask", mask)):
            if data:
                tensor = triton_grpc.InferInput(name, [1], "BYTES")
                tensor.set_data_from_numpy(np.array([data], dtype=np.object_))
                inputs.append(tensor)
        stream = self._stream(model, inputs, lambda r: r.as_numpy("images") is not None)
        async with contextlib.aclosing(stream) as results:  # type: ignore[type-var]
            async for result in results:
                step, total = _first_int(result, "step"), _first_int(result, "total_steps")
                images = result.as_numpy("images")
                if images is not None:
                    yield ImageProgress(step, total, [bytes(png) for png in images.reshape(-1)])
                    return
                yield ImageProgress(step, total)

    async def _stream(
        self, model: str, inputs: list[triton_grpc.InferInput], is_final: Callable[[Any], bool]
    ) -> AsyncIterator[Any]:
        """One request on a Triton stream, up to its final response. Left early (our caller went
        away), it cancels the request. Never cancelled after the final response: Triton 2.51 then
        keeps counting the request in flight, and the model can no longer be unloaded."""

        async def one_request() -> AsyncIterator[dict[str, Any]]:
            yield {"model_name": model, "inputs": inputs}

        responses = self._client.stream_infer(one_request(), headers=STREAM_HEADERS)
        final_seen = False
        try:
            async for result, error in responses:
                if error is not None:
                    final_seen = True  # an error response ends its request: no cancel after it
                    raise error
                final_seen = is_final(result)
                yield result
                if final_seen:
                    return
        except Exception as err:
            code = errors.triton_status(err)
            if code is None:
                raise
            raise self._inference_error(err, model, f"streaming from {model!r}") from err
        finally:
            if not final_seen:
                responses.cancel()
            else:
                # Read the call to its end (Triton closes it): dropped, it would be cancelled
                # when garbage-collected, which is the cancel after the final response.
                drain = asyncio.get_running_loop().create_task(_read_to_end(responses))
                _DRAINING.add(drain)
                drain.add_done_callback(_DRAINING.discard)

    def _inference_error(self, err: BaseException, model: str, doing: str) -> errors.AdapterError:
        """An inference failure as our error. NOT_FOUND means Triton unloaded the model behind our
        back (the scheduler holds it loaded otherwise): retryable, and our cache of it is stale."""
        if errors.triton_status(err) == errors.Code.NOT_FOUND:
            self.forget(model)
            if self.on_model_missing is not None:
                self.on_model_missing(model)
            return errors.Unavailable(f"model {model!r} was unloaded while the request started; retry it")
        return errors.from_triton(err, doing)

    def forget(self, model: str) -> None:
        """Drops what we cached about a model (it was unloaded or reloaded)."""
        self._model_info.pop(model, None)

    async def stream_text(self, request: TextGenerationRequest) -> AsyncIterator[TextChunk]:
        """Streams the LLM model's responses; cancelling the consumer cancels the Triton request.

        Responses that arrived while the consumer was busy (it writes to a slower client) come as one
        chunk, their texts joined in order; the final response (finish_reason) is always a chunk of
        its own. On a raw `ModelStreamInfer` call: tritonclient's InferInput/InferResult wrappers
        (numpy per tensor, three `as_numpy` per response) cost more CPU per chunk than the rest of
        the adapter (py-spy; see benchmarks/results/streaming.md).
        """
        stream = _TextStream(self._stub, _text_request(request))
        final_seen = False
        try:
            while True:
                try:
                    responses = await stream.next_batch()
                except Exception as err:
                    if errors.triton_status(err) is None:
                        raise
                    raise self._inference_error(err, request.model, f"streaming from {request.model!r}") from err
                if not responses:
                    break
                texts: list[bytes] = []
                for response in responses:
                    if response.error_message:
                        # An error response ends its request: it is final (no cancel after it).
                        final_seen = True
                        refusal = InferenceServerException(msg=response.error_message)
                        raise errors.from_triton(refusal, f"streaming from {request.model!r}") from None
                    text, final = _text_response(response)
                    if final is None:
                        texts.append(text)
                        continue
                    if texts:
                        yield TextChunk(text=b"".join(texts).decode("utf-8"))
                        texts = []
                    final_seen = True
                    reason, prompt_tokens, completion_tokens = final
                    yield TextChunk(
                        text=text.decode("utf-8"),
                        finish_reason=reason,
                        prompt_tokens=prompt_tokens,
                        completion_tokens=completion_tokens,
                    )
                    return
                yield TextChunk(text=texts[0].decode("utf-8") if len(texts) == 1 else b"".join(texts).decode("utf-8"))
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


def _text_stream_closed(_: asyncio.Task[None]) -> None:
    global _open_text_streams
    _open_text_streams -= 1


def _raw_bytes_element(raw: bytes) -> bytes:
    """The first element of a raw BYTES tensor: a little-endian uint32 length, then the bytes."""
    return raw[4 : 4 + int.from_bytes(raw[:4], "little")]


def _text_request(request: TextGenerationRequest) -> service_pb2.ModelInferRequest:
    triton_request = service_pb2.ModelInferRequest(model_name=request.model)
    if request.messages is not None:
        second = ("messages", json.dumps(request.messages))
    else:
        second = ("text_input", request.prompt or "")
    for name, value in (("sampling_parameters", json.dumps(request.sampling)), second):
        tensor = triton_request.inputs.add()
        tensor.name, tensor.datatype = name, "BYTES"
        tensor.shape.append(1)
        encoded = value.encode("utf-8")
        triton_request.raw_input_contents.append(struct.pack("<I", len(encoded)) + encoded)
    return triton_request


def _text_response(response: Any) -> tuple[bytes, tuple[str, int, int] | None]:
    """(text, None) for a chunk; (text, (finish_reason, prompt_tokens, completion_tokens)) for the
    final one (the caller handles error responses first)."""
    infer = response.infer_response
    outputs = infer.outputs
    raw = infer.raw_output_contents
    if len(outputs) == 1 and outputs[0].name == "text_output":  # the usual chunk: nothing else to look at
        return _raw_bytes_element(raw[0]), None
    text = b""
    reason: str | None = None
    prompt_tokens = completion_tokens = 0
    for i, output in enumerate(outputs):
        name = output.name
        if name == "text_output":
            text = _raw_bytes_element(raw[i])
        elif name == "finish_reason":
            reason = _raw_bytes_element(raw[i]).decode("utf-8")
        elif name == "prompt_tokens":
            prompt_tokens = int.from_bytes(raw[i][:4], "little", signed=True)
        elif name == "completion_tokens":
            completion_tokens = int.from_bytes(raw[i][:4], "little", signed=True)
    return text, (None if reason is None else (reason, prompt_tokens, completion_tokens))


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
