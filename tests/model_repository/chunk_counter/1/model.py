"""Test-only Triton model: streams `max_tokens` numbered chunks ("0,", "1,", ...) with no compute.

Deterministic, so a client can check that no chunk was lost, duplicated or reordered; cheap, so a
benchmark of it measures the hops (adapter, gRPC) and not a model.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from model_runtime.metrics import ModelMetrics
from model_runtime.model_config import ModelParameters
from model_runtime.text_generation import InvalidRequest, parse_sampling_parameters
from model_runtime.triton_inputs import string_input

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


def _response(text: str, **final: Any) -> Any:
    tensors = [pb_utils.Tensor("text_output", np.array([text.encode()], dtype=np.object_))]
    if final:
        tensors += [
            pb_utils.Tensor("finish_reason", np.array([final["finish_reason"].encode()], dtype=np.object_)),
            pb_utils.Tensor("prompt_tokens", np.array([final["prompt_tokens"]], dtype=np.int32)),
            pb_utils.Tensor("completion_tokens", np.array([final["completion_tokens"]], dtype=np.int32)),
        ]
    return pb_utils.InferenceResponse(output_tensors=tensors)


def chunk_text(index: int, chunk_bytes: int) -> str:
    return f"{index},".ljust(chunk_bytes, ".")


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

    async def _serve(self, request: Any) -> None:
        sender = request.get_response_sender()
        try:
            params = parse_sampling_parameters(
                string_input(pb_utils, request, "sampling_parameters"), self.default_max_tokens, self.max_tokens_limit
            )
            prompt = string_input(pb_utils, request, "text_input") or string_input(pb_utils, request, "messages") or ""
        except (InvalidRequest, json.JSONDecodeError) as err:
            error = pb_utils.TritonError(str(err), pb_utils.TritonError.INVALID_ARG)
            sender.send(pb_utils.InferenceResponse(error=error), flags=FINAL)
            return
        sent = 0
        reason = "length"
        for index in range(params.max_tokens):
            if request.is_cancelled():
                reason = "cancelled"
                break
            sender.send(_response(chunk_text(index, self.chunk_bytes)))
            sent += 1
            # Yield to the stub's loop so concurrent requests interleave (and pause if asked to).
            await asyncio.sleep(self.interval_s)
        sender.send(_response("", finish_reason=reason, prompt_tokens=len(prompt), completion_tokens=sent), flags=FINAL)
