"""Test-only Triton model: streams `max_tokens` numbered chunks ("0,", "1,", ...) with no compute.

Deterministic, so a client can check that no chunk was lost, duplicated or reordered; cheap, so a
benchmark of it measures the hops (adapter, gRPC) and not a model. Speaks the llm model's dialect
(Triton's vLLM backend's, model_runtime/llm_dialect.py): each chunk is one output token, a prompt
token is one character; finish_reason "None" until the last response; a cancelled stream ends with
a CANCELLED error.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from model_runtime.llm_dialect import SWITCHES, UNFINISHED, Switches, resolve_switches, without_neutral_options
from model_runtime.metrics import ModelMetrics
from model_runtime.model_config import ModelParameters
from model_runtime.requests import InvalidRequest
from model_runtime.triton_inputs import string_input

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


def _response(switches: Switches, text: str, reason: str, prompt_tokens: int, output_tokens: int) -> Any:
    tensors = [pb_utils.Tensor("text_output", np.array([text.encode()], dtype=np.object_))]
    if switches.finish_reason:
        tensors.append(pb_utils.Tensor("finish_reason", np.array([reason.encode()], dtype=np.object_)))
    if switches.num_input_tokens:
        tensors.append(pb_utils.Tensor("num_input_tokens", np.array([prompt_tokens], dtype=np.uint32)))
    if switches.num_output_tokens:
        tensors.append(pb_utils.Tensor("num_output_tokens", np.array([output_tokens], dtype=np.uint32)))
    return pb_utils.InferenceResponse(output_tensors=tensors)


def chunk_text(index: int, chunk_bytes: int) -> str:
    return f"{index},".ljust(chunk_bytes, ".")


def _max_tokens(sampling_json: str | None, default: int, limit: int) -> int:
    """max_tokens of the sampling parameters (the only option this model reads)."""
    try:
        raw = json.loads(without_neutral_options(sampling_json) or "{}")
    except json.JSONDecodeError as err:
        raise InvalidRequest(f"sampling_parameters is not valid JSON: {err}") from None
    value = raw.get("max_tokens", default) if isinstance(raw, dict) else None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
        raise InvalidRequest(f"max_tokens must be in [1, {limit}], got {value!r}")
    return value


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        params = ModelParameters(args["model_config"])
        self.max_tokens_limit = params.integer("max_tokens_limit", 100_000, minimum=1)
        self.default_max_tokens = params.integer("default_max_tokens", 16, minimum=1)
        self.chunk_bytes = int(params.string("chunk_bytes", "8", env="CHUNK_COUNTER_CHUNK_BYTES"))
        self.interval_s = int(params.string("chunk_interval_ms", "0", env="CHUNK_COUNTER_INTERVAL_MS")) / 1000
        self.metrics = ModelMetrics(pb_utils, args["model_name"])
        self.metrics.publish_memory()  # its own memory, like the served models (no torch here)

    async def execute(self, requests: list[Any]) -> None:
        await asyncio.gather(*(self._serve(request) for request in requests))

    def _switches(self, request: Any) -> Switches:
        flags: dict[str, bool | None] = {}
        for name in ("stream", "exclude_input_in_output", *SWITCHES):
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            flags[name] = None if tensor is None else bool(tensor.as_numpy().reshape(-1)[0])
        returns = {name: bool(flags[name]) for name in SWITCHES}
        return resolve_switches(flags["stream"], flags["exclude_input_in_output"], returns)

    async def _serve(self, request: Any) -> None:
        sender = request.get_response_sender()
        try:
            switches = self._switches(request)
            max_tokens = _max_tokens(
                string_input(pb_utils, request, "sampling_parameters"), self.default_max_tokens, self.max_tokens_limit
            )
            prompt = string_input(pb_utils, request, "text_input") or string_input(pb_utils, request, "messages") or ""
        except (InvalidRequest, UnicodeDecodeError) as err:
            error = pb_utils.TritonError(str(err), pb_utils.TritonError.INVALID_ARG)
            sender.send(pb_utils.InferenceResponse(error=error), flags=FINAL)
            return
        chunks: list[str] = []
        for index in range(max_tokens):
            if request.is_cancelled():
                if switches.stream:
                    error = pb_utils.TritonError("Request was cancelled", pb_utils.TritonError.CANCELLED)
                    sender.send(pb_utils.InferenceResponse(error=error), flags=FINAL)
                    return
                text = (prompt if switches.prepend_input else "") + "".join(chunks)
                sender.send(_response(switches, text, "abort", len(prompt), len(chunks)), flags=FINAL)
                return
            chunk = chunk_text(index, self.chunk_bytes)
            last = index == max_tokens - 1
            if switches.stream:
                reason = "length" if last else UNFINISHED
                sender.send(_response(switches, chunk, reason, len(prompt), 1), flags=FINAL if last else 0)
            else:
                chunks.append(chunk)
            # Yield to the stub's loop so concurrent requests interleave (and pause if asked to).
            await asyncio.sleep(self.interval_s)
        if not switches.stream:
            text = (prompt if switches.prepend_input else "") + "".join(chunks)
            sender.send(_response(switches, text, "length", len(prompt), len(chunks)), flags=FINAL)
