"""Triton python-backend model: streaming text generation with transformers.

Every pb_utils call (send, is_cancelled, metrics) happens on the stub's asyncio loop, never from
the generation threads: Triton 2.51 crashes when several threads of one stub call pb_utils at once.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
import triton_python_backend_utils as pb_utils
from transformers import AsyncTextIteratorStreamer, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from model_runtime.metrics import ModelMetrics
from model_runtime.model_config import ModelParameters, pick_device
from model_runtime.text_generation import (
    InvalidRequest,
    SamplingParams,
    SeededSampler,
    StopOnEvent,
    StopSequenceBuffer,
    parse_messages,
    parse_sampling_parameters,
)

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
CANCEL_POLL_SECONDS = 0.02


def _string_input(request: Any, name: str) -> str | None:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return None
    value = tensor.as_numpy().reshape(-1)[0]
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _bool_input(request: Any, name: str, default: bool) -> bool:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return default if tensor is None else bool(tensor.as_numpy().reshape(-1)[0])


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        params = ModelParameters(args["model_config"])
        self.model_name = args["model_name"]
        model_id = params.string("model_id", "", env="LLM_MODEL_ID")
        if not model_id:
            raise ValueError("no weights configured: set parameter model_id or LLM_MODEL_ID")
        self.max_tokens_limit = params.integer("max_tokens_limit", 4096, minimum=1)
        self.default_max_tokens = params.integer("default_max_tokens", 128, minimum=1)
        self.device = pick_device()
        dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        self.tokenizer = AutoTokenizer.from_pretrained(model_id)
        self.model = AutoModelForCausalLM.from_pretrained(model_id, dtype=dtype).to(self.device).eval()
        self.context_length = int(getattr(self.model.config, "max_position_embeddings", 0) or 0)
        self.executor = ThreadPoolExecutor(
            max_workers=params.integer("max_concurrent_generations", 4, minimum=1),
            thread_name_prefix="generate",
        )
        self._define_metrics()
        self.metrics.publish_memory()

    def _define_metrics(self) -> None:
        self.metrics = ModelMetrics(pb_utils, self.model_name)
        self.finished = {
            reason: self.metrics.counter(
                "llm_generation_requests_total", "Generation requests finished, by finish reason", finish_reason=reason
            )
            for reason in ("stop", "length", "cancelled", "error")
        }
        self.tokens = self.metrics.counter(
            "llm_generated_tokens_total", "Tokens generated (counted when a request ends)"
        )
        self.active = self.metrics.gauge("llm_active_generations", "Generations running now inside the model")

    async def execute(self, requests: list[Any]) -> None:
        # Decoupled + async execute: the stub keeps taking requests while these run.
        await asyncio.gather(*(self._serve(request) for request in requests))

    async def _serve(self, request: Any) -> None:
        sender = request.get_response_sender()
        try:
            prompt_ids, params, stream = self._parse(request)
        except InvalidRequest as err:
            error = pb_utils.TritonError(str(err), pb_utils.TritonError.INVALID_ARG)
            sender.send(pb_utils.InferenceResponse(error=error), flags=FINAL)
            return
        self.active.increment(1)
        try:
            await self._generate_and_send(request, sender, prompt_ids, params, stream)
        except Exception as err:  # noqa: BLE001 - any failure must still end the request
            self.finished["error"].increment(1)
            error = pb_utils.TritonError(
                f"generation failed: {type(err).__name__}: {err}", pb_utils.TritonError.INTERNAL
            )
            sender.send(pb_utils.InferenceResponse(error=error), flags=FINAL)
        finally:
            self.active.increment(-1)
            self.metrics.publish_memory()  # what a generation grew is what an unload gives back

    def _parse(self, request: Any) -> tuple[torch.Tensor, SamplingParams, bool]:
        params = parse_sampling_parameters(
            _string_input(request, "sampling_parameters"), self.default_max_tokens, self.max_tokens_limit
        )
        messages_json = _string_input(request, "messages")
        text = _string_input(request, "text_input")
        if (messages_json is None) == (text is None):
            raise InvalidRequest("exactly one of text_input and messages must be given")
        if messages_json is not None:
            encoded = self.tokenizer.apply_chat_template(
                parse_messages(messages_json), add_generation_prompt=True, return_tensors="pt", return_dict=True
            )
            prompt_ids = encoded["input_ids"]
        else:
            if not text:
                raise InvalidRequest("text_input must not be empty")
            prompt_ids = self.tokenizer(text, return_tensors="pt")["input_ids"]
        prompt_length = int(prompt_ids.shape[1])
        if self.context_length and prompt_length + params.max_tokens > self.context_length:
            raise InvalidRequest(
                f"prompt ({prompt_length} tokens) plus max_tokens ({params.max_tokens}) exceeds the "
                f"model's context of {self.context_length} tokens"
            )
        return prompt_ids, params, _bool_input(request, "stream", True)

    async def _generate_and_send(
        self, request: Any, sender: Any, prompt_ids: torch.Tensor, params: SamplingParams, stream: bool
    ) -> None:
        loop = asyncio.get_running_loop()
        prompt_length = int(prompt_ids.shape[1])
        streamer = AsyncTextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        stop_event = threading.Event()  # asks the generation thread to stop at its next token
        cancelled = asyncio.Event()
        generation = loop.run_in_executor(self.executor, self._generate, prompt_ids, params, streamer, stop_event)
        watcher = loop.create_task(self._watch_cancellation(request, generation, stop_event, cancelled))
        stops = StopSequenceBuffer(params.stop)
        collected: list[str] = []
        stop_met = False
        try:
            async for text in streamer:
                if not text or cancelled.is_set():
                    # Empty deltas happen; after a cancel, drain without sending.
                    continue
                emit, stop_met = stops.push(text)
                if stop_met:
                    stop_event.set()
                if emit:
                    if stream:
                        sender.send(self._chunk(emit))
                    else:
                        collected.append(emit)
                if stop_met:
                    break
            output = await generation
        finally:
            watcher.cancel()
        was_cancelled = cancelled.is_set()
        completion_ids = output[0, prompt_length:]
        completion_tokens = int(completion_ids.shape[0])
        tail = "" if stop_met or was_cancelled else stops.flush()
        if was_cancelled:
            reason = "cancelled"
        elif stop_met or (completion_tokens and int(completion_ids[-1]) == self.tokenizer.eos_token_id):
            reason = "stop"
        else:
            reason = "length" if completion_tokens >= params.max_tokens else "stop"
        last_text = "".join(collected) + tail if not stream else tail
        self.finished[reason].increment(1)
        self.tokens.increment(completion_tokens)
        sender.send(self._final(last_text, reason, prompt_length, completion_tokens), flags=FINAL)

    async def _watch_cancellation(
        self, request: Any, generation: asyncio.Future[Any], stop_event: threading.Event, cancelled: asyncio.Event
    ) -> None:
        """Polls Triton's cancel flag from the loop thread while the generation runs."""
        while not generation.done():
            if request.is_cancelled():
                cancelled.set()
                stop_event.set()
                return
            await asyncio.sleep(CANCEL_POLL_SECONDS)

    def _generate(
        self,
        prompt_ids: torch.Tensor,
        params: SamplingParams,
        streamer: AsyncTextIteratorStreamer,
        stop_event: threading.Event,
    ) -> torch.Tensor:
        """Runs in a worker thread; touches no pb_utils."""
        prompt_ids = prompt_ids.to(self.device)
        config = GenerationConfig(
            max_new_tokens=params.max_tokens,
            do_sample=False,  # SeededSampler already chose the token: greedy takes its one-hot row
            eos_token_id=self.tokenizer.eos_token_id,
            pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
        )
        try:
            with torch.inference_mode():
                return self.model.generate(
                    prompt_ids,
                    attention_mask=torch.ones_like(prompt_ids),
                    generation_config=config,
                    logits_processor=[SeededSampler(params, int(prompt_ids.shape[1]), self.device)],
                    stopping_criteria=[StopOnEvent(stop_event)],
                    streamer=streamer,
                ).cpu()
        except BaseException:
            streamer.end()  # unblock the consumer before the error surfaces through the future
            raise

    def _chunk(self, text: str) -> Any:
        return pb_utils.InferenceResponse(
            output_tensors=[pb_utils.Tensor("text_output", np.array([text.encode("utf-8")], dtype=np.object_))]
        )

    def _final(self, text: str, reason: str, prompt_tokens: int, completion_tokens: int) -> Any:
        return pb_utils.InferenceResponse(
            output_tensors=[
                pb_utils.Tensor("text_output", np.array([text.encode("utf-8")], dtype=np.object_)),
                pb_utils.Tensor("finish_reason", np.array([reason.encode("utf-8")], dtype=np.object_)),
                pb_utils.Tensor("prompt_tokens", np.array([prompt_tokens], dtype=np.int32)),
                pb_utils.Tensor("completion_tokens", np.array([completion_tokens], dtype=np.int32)),
            ]
        )

    def finalize(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)
        del self.model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
