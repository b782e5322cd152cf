"""The one layer that talks to Triton: readiness, the model repository, loading, streaming inference.

Servicers call this with plain Python values; nothing here knows about the public protobufs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import numpy as np
import tritonclient.grpc.aio as triton_grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from adapter.core import errors
from adapter.triton import errors as triton_errors
from adapter.triton import procfs, text_stream
from adapter.triton.chat_templates import ChatTemplates
from adapter.triton.embedding_coalescer import EmbeddingCoalescer
from adapter.triton.tensors import (
    INTERFACES,
    MESSAGES,
    STREAM_HEADERS,
    TEXT_INPUT,
    TEXT_OUTPUT,
    TEXT_SWITCHES,
    TOKENIZER_PARAMETER,
    raw_bytes,
)
from adapter.triton.types import (
    EmbeddingRows,
    ImageProgress,
    ModelInfo,
    TextChunk,
    TextGenerationRequest,
    TextInterface,
)

log = logging.getLogger(__name__)


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
    def __init__(
        self,
        url: str,
        load_timeout_s: float,
        stub_pids: Callable[[str], set[int]] | None = None,
        chat_templates: ChatTemplates | None = None,
    ) -> None:
        self.url = url
        # The chat templates of models that take a raw prompt (no `messages` input).
        self._chat_templates = chat_templates or ChatTemplates(None)
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
        self._model_info: dict[str, ModelInfo] = {}

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
            raise triton_errors.from_triton(err, "reading the model repository") from err
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
            code = triton_errors.triton_status(err)
            if code in (triton_errors.Code.UNAVAILABLE, triton_errors.Code.DEADLINE_EXCEEDED):
                raise triton_errors.from_triton(err, f"loading model {model!r}") from err
            reason = triton_errors.triton_message(err)
            raise errors.FailedPrecondition(f"model {model!r} failed to load: {reason}") from err
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
            raise triton_errors.from_triton(err, f"unloading model {model!r}") from err
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

    async def model_info(self, model: str) -> ModelInfo:
        """The loaded model's config (parameters, max_batch_size), read once per load."""
        info = self._model_info.get(model)
        if info is None:
            info = self._model_info[model] = await self._read_model_info(model)
        return info

    async def _read_model_info(self, model: str) -> ModelInfo:
        try:
            config = await self._client.get_model_config(model, as_json=True)
        except InferenceServerException as err:
            raise triton_errors.from_triton(err, f"reading the config of {model!r}") from err
        body = config.get("config", {})
        raw = body.get("parameters", {})
        return ModelInfo(
            parameters={key: value.get("string_value", "") for key, value in raw.items()},
            max_batch_size=int(body.get("max_batch_size", 0) or 0),
            outputs=frozenset(str(output.get("name", "")) for output in body.get("output", [])),
            inputs=frozenset(str(tensor.get("name", "")) for tensor in body.get("input", [])),
        )

    async def require_interface(self, model: str, call: str) -> ModelInfo:
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

    async def text_interface(self, model: str, call: str) -> tuple[ModelInfo, TextInterface]:
        """How to drive `model` for `call` (a key of tensors.INTERFACES), from its loaded
        config: the vLLM-backend dialect's switches it declares, and whether it renders chats itself
        (`messages`) or the adapter renders them with its tokenizer's chat template. INVALID_ARGUMENT
        for a model that is no text model (no text_output); FAILED_PRECONDITION for a text model
        this call cannot drive, naming what its config lacks."""
        info = await self.model_info(model)
        if TEXT_OUTPUT not in info.outputs or call.startswith("chat with "):
            await self.require_interface(model, call)  # refuses it, naming what it lacks
        switches = tuple(name for name in TEXT_SWITCHES if name in info.inputs)
        if call != "generate" and MESSAGES in info.inputs:
            return info, TextInterface(switches, messages=True)
        if TEXT_INPUT not in info.inputs:
            raise errors.FailedPrecondition(
                f"model {model!r} declares {TEXT_OUTPUT} but takes neither {TEXT_INPUT} (a prompt, as Triton's LLM "
                f"backends do) nor {MESSAGES} (a chat, our extension): its inputs are {sorted(info.inputs)}"
            )
        if call != "generate" and not info.parameters.get(TOKENIZER_PARAMETER):
            raise errors.FailedPrecondition(
                f"model {model!r} takes a raw prompt ({TEXT_INPUT}, no {MESSAGES} input) and its config.pbtxt names no "
                "tokenizer whose chat template would render the conversation: add parameters { key: "
                '"tokenizer" value: { string_value: "<hub id or folder>" } } to it, or use GenerateStream'
            )
        return info, TextInterface(switches, messages=False)

    async def chat_prompt(self, model: str, info: ModelInfo, messages: list[dict[str, Any]]) -> str:
        """The conversation rendered with the chat template of the model's `tokenizer` parameter."""
        return await self._chat_templates.render(model, info.parameters[TOKENIZER_PARAMETER], messages)

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
        request.raw_input_contents.append(raw_bytes(encoded))
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
            code = triton_errors.triton_status(err)
            if code is None:
                raise
            raise self._inference_error(err, model, f"streaming from {model!r}") from err
        finally:
            if not final_seen:
                responses.cancel()
            else:
                # Read the call to its end (Triton closes it): dropped, it would be cancelled
                # when garbage-collected, which is the cancel after the final response.
                text_stream.read_to_end_in_background(responses)

    def _inference_error(self, err: BaseException, model: str, doing: str) -> errors.AdapterError:
        """An inference failure as our error. NOT_FOUND means Triton unloaded the model behind our
        back (the scheduler holds it loaded otherwise): retryable, and our cache of it is stale."""
        if triton_errors.triton_status(err) == triton_errors.Code.NOT_FOUND:
            self.forget(model)
            if self.on_model_missing is not None:
                self.on_model_missing(model)
            return errors.Unavailable(f"model {model!r} was unloaded while the request started; retry it")
        return triton_errors.from_triton(err, doing)

    def forget(self, model: str) -> None:
        """Drops what we cached about a model (it was unloaded or reloaded)."""
        self._model_info.pop(model, None)
        self._chat_templates.forget(model)

    def stream_text(self, request: TextGenerationRequest, interface: TextInterface) -> AsyncIterator[TextChunk]:
        """Streams the LLM model's responses (adapter/triton/text_stream.py) in its dialect
        (`text_interface`); closing or cancelling the consumer cancels the Triton request."""
        return text_stream.stream_text(self._stub, request, interface, self._inference_error)
