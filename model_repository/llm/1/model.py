"""Triton python-backend model: streaming text generation, continuously batched.

A thin shell over `model_runtime.batching.BatchingEngine`: `execute` parses each request (tokenizing
in a worker thread, so a huge prompt never stalls the others), submits it to the engine, and sends
what the engine delivers, in Triton's vLLM-backend dialect (`model_runtime.llm_dialect`). The
engine runs every active request in one forward pass per step on its own thread. Every pb_utils
call (send, is_cancelled, metrics) happens on the stub's asyncio loop, never on the engine's or a
worker's thread: Triton 2.51 crashes when several threads of one stub call pb_utils at once.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils
from transformers import AutoModelForCausalLM, AutoTokenizer

from model_runtime.batching import BatchingEngine, StepOutput, merge_outputs
from model_runtime.constrained import Constraint, Grammars
from model_runtime.llm_dialect import (
    FINISH_REASONS,
    SWITCHES,
    UNFINISHED,
    Switches,
    resolve_switches,
    without_neutral_options,
)
from model_runtime.metrics import ModelMetrics
from model_runtime.model_config import ModelParameters, preferred_dtype, require_cuda_if_expected, triton_device
from model_runtime.text_generation import (
    InvalidRequest,
    SamplingParams,
    generation_defaults,
    parse_sampling_parameters,
)
from model_runtime.tool_calls import ToolCallDelta, tool_calls_json
from model_runtime.triton_inputs import bool_values, string_input, watch_cancellations

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
# The gauges the Kubernetes Gateway API Inference Extension routes on are refreshed at most this often.
GAUGE_INTERVAL_SECONDS = 0.1


@dataclass
class _Stream:
    """One request being served: where its outputs go, and what it asked them to carry."""

    request: Any
    sender: Any
    switches: Switches
    prompt: str  # as the model saw it (the rendered chat template for messages)
    prompt_tokens: int
    done: asyncio.Future[None]
    collected: list[str] = field(default_factory=list)  # the text, when not streaming
    collected_calls: list[ToolCallDelta] = field(default_factory=list)  # tool-call deltas, when not streaming
    unsent_tokens: int = 0  # generated since the last response
    sent_tokens: int = 0  # reported in num_output_tokens so far


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        require_cuda_if_expected()  # the GPU image must not fall back to the CPU silently
        params = ModelParameters(args["model_config"])
        self.model_name = args["model_name"]
        model_id = params.string("model_id", "", env="LLM_MODEL_ID")
        if not model_id:
            raise ValueError("no weights configured: set parameter model_id or LLM_MODEL_ID")
        self.max_tokens_limit = params.integer("max_tokens_limit", 4096, minimum=1)
        self.default_max_tokens = params.integer("default_max_tokens", 128, minimum=1)
        # The GPU Triton assigned (KIND_GPU), else cuda (KIND_MODEL), else the CPU; bf16 where the
        # GPU computes it (today's LLMs are trained in it), fp16 on older GPUs, fp32 on the CPU.
        self.device = triton_device(args)
        self.tokenizer = AutoTokenizer.from_pretrained(model_id)
        self.model = (
            AutoModelForCausalLM.from_pretrained(model_id, dtype=preferred_dtype(self.device)).to(self.device).eval()
        )
        self.context_length = int(getattr(self.model.config, "max_position_embeddings", 0) or 0)
        # Options a request leaves unset take the weights' own recommendation (generation_config.json).
        self.sampling_defaults = generation_defaults(getattr(self.model, "generation_config", None))
        self.loop: asyncio.AbstractEventLoop | None = None
        self.streams: dict[int, _Stream] = {}
        self.ids = itertools.count(1)
        self.pending: list[StepOutput] = []  # from the engine thread, not yet sent
        self.pending_lock = threading.Lock()
        self.send_scheduled = False
        self.engine = BatchingEngine(
            self.model,
            self.tokenizer,
            self.device,
            max_num_seqs=params.integer("max_num_seqs", 64, minimum=1),
            kv_cache_tokens=params.integer("kv_cache_tokens", 16384, minimum=1),
            max_prefill_tokens=params.integer("max_prefill_tokens", 4096, minimum=1),
            deliver=self._deliver_from_engine,
        )
        # Constrained decoding (guided_decoding, tools): the vocabulary as the grammars see it.
        self.grammars = Grammars(self.tokenizer, int(self.model.config.vocab_size), self.engine.eos_token_ids)
        self.engine.warm_up()
        self.engine.check_budget_fits()
        # Tokenizing (and rendering chat templates) off the loop that sends every stream's tokens,
        # in a few threads (the Rust tokenizer releases the GIL): a huge prompt holds up one of them,
        # not the short requests behind it.
        self.tokenizing = ThreadPoolExecutor(max_workers=4, thread_name_prefix="tokenize")
        self.watcher: asyncio.Task[None] | None = None
        self._define_metrics()
        self.engine.start()
        self.metrics.publish_memory(headroom_bytes=self.engine.kv_headroom_bytes())

    def _define_metrics(self) -> None:
        self.metrics = ModelMetrics(pb_utils, self.model_name, self.device)
        self.finished = {
            reason: self.metrics.counter(
                "llm_generation_requests_total", "Generation requests finished, by finish reason", finish_reason=reason
            )
            for reason in ("stop", "length", "tool_calls", "cancelled", "error")
        }
        self.tokens = self.metrics.counter(
            "llm_generated_tokens_total", "Tokens generated (counted when a request ends)"
        )
        self.active = self.metrics.gauge("llm_active_generations", "Generations inside the model (waiting or running)")
        # vLLM's names for what the Gateway API Inference Extension's model-server protocol reads
        # (vllm:num_requests_waiting, vllm:num_requests_running, vllm:gpu_cache_usage_perc).
        self.waiting = self.metrics.gauge("llm_num_requests_waiting", "Requests waiting for a place in the batch")
        self.running = self.metrics.gauge("llm_num_requests_running", "Requests in the running batch")
        self.cache_usage = self.metrics.gauge(
            "llm_kv_cache_usage_perc", "Share of the KV cache budget (kv_cache_tokens) held by running requests, 0-1"
        )
        self._gauges_at = 0.0

    # --- the stub's loop -------------------------------------------------------------------------

    async def execute(self, requests: list[Any]) -> None:
        # Decoupled + async execute: the stub keeps taking requests while these run.
        self.loop = asyncio.get_running_loop()
        if self.watcher is None or self.watcher.done():
            # One task reads every open request's cancel flag (every 20 ms); the engine drops a
            # cancelled request at its next step.
            self.watcher = self.loop.create_task(
                watch_cancellations(
                    lambda: [(rid, s.request) for rid, s in self.streams.items() if not s.done.done()],
                    self.engine.cancel,
                )
            )
        await asyncio.gather(*(self._serve(request) for request in requests))

    async def _serve(self, request: Any) -> None:
        sender = request.get_response_sender()
        assert self.loop is not None
        try:
            try:
                inputs = self._read_inputs(request)
            except UnicodeDecodeError as err:
                raise InvalidRequest(f"an input is not valid UTF-8: {err}") from None
            switches = self._read_switches(request)
            prompt, prompt_ids, params, constraint = await self.loop.run_in_executor(
                self.tokenizing, self._parse, *inputs
            )
            request_id = next(self.ids)
            state = _Stream(request, sender, switches, prompt, len(prompt_ids), self.loop.create_future())
            self.streams[request_id] = state
            try:
                self.engine.submit(request_id, prompt_ids, params, constraint)
            except InvalidRequest:
                del self.streams[request_id]
                raise
        except InvalidRequest as err:
            error = pb_utils.TritonError(str(err), pb_utils.TritonError.INVALID_ARG)
            sender.send(pb_utils.InferenceResponse(error=error), flags=FINAL)
            return
        self.active.increment(1)
        try:
            await state.done
        finally:
            self.active.increment(-1)
            self.streams.pop(request_id, None)

    def _read_inputs(self, request: Any) -> tuple[str | bool | None, ...]:
        """On the loop (pb_utils): the request's string inputs, and parallel_tool_calls."""
        strings = tuple(
            string_input(pb_utils, request, name)
            for name in ("sampling_parameters", "messages", "text_input", "tools", "tool_choice")
        )
        parallel = bool_values(pb_utils, request, "parallel_tool_calls")
        return (*strings, parallel is None or all(parallel))

    def _read_switches(self, request: Any) -> Switches:
        """On the loop (pb_utils): stream, exclude_input_in_output and the return_* switches."""
        flags: dict[str, bool | None] = {}
        for name in ("stream", "exclude_input_in_output", *SWITCHES):
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            flags[name] = None if tensor is None else bool(tensor.as_numpy().reshape(-1)[0])
        returns = {name: bool(flags[name]) for name in SWITCHES}
        return resolve_switches(flags["stream"], flags["exclude_input_in_output"], returns)

    def _parse(
        self,
        sampling_json: str | None,
        messages_json: str | None,
        text: str | None,
        tools_json: str | None,
        tool_choice_json: str | None,
        parallel_tool_calls: bool = True,
    ) -> tuple[str, list[int], SamplingParams, Constraint | None]:
        """On the tokenizing thread (no pb_utils): options checked, grammar compiled (cached per
        schema), prompt tokenized. Returns the prompt as the model sees it (a chat rendered with the
        template), its tokens, the options and the request's constraint."""
        structured = self.grammars.prepare(
            sampling_json, tools_json, tool_choice_json, chat=messages_json is not None, parallel=parallel_tool_calls
        )
        params = parse_sampling_parameters(
            without_neutral_options(structured.sampling_parameters),
            self.default_max_tokens,
            self.max_tokens_limit,
            self.sampling_defaults,
        )
        if (messages_json is None) == (text is None):
            raise InvalidRequest("exactly one of text_input and messages must be given")
        if messages_json is not None:
            prompt_ids = structured.chat_prompt_ids(self.tokenizer, messages_json)
            # The text a non-streamed answer repeats when the input is not excluded.
            text = self.tokenizer.decode(prompt_ids)
        else:
            if not text or not text.strip():
                raise InvalidRequest("text_input must not be empty or only whitespace")
            prompt_ids = list(self.tokenizer(text)["input_ids"])
        if self.context_length and len(prompt_ids) + params.max_tokens > self.context_length:
            raise InvalidRequest(
                f"prompt ({len(prompt_ids)} tokens) plus max_tokens ({params.max_tokens}) exceeds the "
                f"model's context of {self.context_length} tokens"
            )
        return text, prompt_ids, params, structured.constraint

    def _deliver_from_engine(self, outputs: list[StepOutput]) -> None:
        """Engine thread: queues one step's outputs for the loop (no pb_utils here). While the loop
        is still busy with earlier ones, they wait together and go out merged."""
        loop = self.loop
        if loop is None or loop.is_closed():
            return
        with self.pending_lock:
            self.pending.extend(outputs)
            if self.send_scheduled:
                return
            self.send_scheduled = True
        loop.call_soon_threadsafe(self._send_pending)

    def _send_pending(self) -> None:
        with self.pending_lock:
            outputs, self.pending = self.pending, []
            self.send_scheduled = False
        # Each unfinished output is one generated token (the engine delivers one per row and step):
        # counted before merging, for num_output_tokens.
        for output in outputs:
            state = self.streams.get(output.request_id)
            if state is not None and not output.finished:
                state.unsent_tokens += 1
        self._send(merge_outputs(outputs))

    def _send(self, outputs: list[StepOutput]) -> None:
        """On the loop: one response per output with text (a token whose text is held back, a stop
        sequence's possible start or part of a character, waits for the next), the final one with
        the totals."""
        for output in outputs:
            state = self.streams.get(output.request_id)
            if state is None or state.done.done():
                continue
            if not output.finished:
                if output.text or output.tool_calls:
                    if state.switches.stream:
                        response = self._response(
                            state, output.text, UNFINISHED, state.unsent_tokens, output.tool_calls
                        )
                        state.sender.send(response)
                        state.sent_tokens += state.unsent_tokens
                        state.unsent_tokens = 0
                    else:
                        state.collected.append(output.text)
                        state.collected_calls.extend(output.tool_calls)
                continue
            self._send_final(state, output)
            state.done.set_result(None)
        # When a request ends the gauges move at once (an idle model must not show stale load).
        self._refresh_gauges(force=any(output.finished for output in outputs))

    def _send_final(self, state: _Stream, output: StepOutput) -> None:
        reason = output.finish_reason or "error"
        self.finished[reason].increment(1)
        self.tokens.increment(output.completion_tokens)
        if reason == "error":
            error = pb_utils.TritonError(f"generation failed: {output.error}", pb_utils.TritonError.INTERNAL)
            state.sender.send(pb_utils.InferenceResponse(error=error), flags=FINAL)
        elif reason == "cancelled" and state.switches.stream:
            # As vLLM's: a cancelled stream ends with an error, not with an answer.
            error = pb_utils.TritonError("Request was cancelled", pb_utils.TritonError.CANCELLED)
            state.sender.send(pb_utils.InferenceResponse(error=error), flags=FINAL)
        elif state.switches.stream:
            tokens = output.completion_tokens - state.sent_tokens
            final = self._response(state, output.text, FINISH_REASONS.get(reason, reason), tokens, output.tool_calls)
            state.sender.send(final, flags=FINAL)
        else:
            text = "".join(state.collected) + output.text
            if state.switches.prepend_input:
                text = state.prompt + text
            calls = [*state.collected_calls, *output.tool_calls]
            final = self._response(state, text, FINISH_REASONS.get(reason, reason), output.completion_tokens, calls)
            state.sender.send(final, flags=FINAL)
        # What the process holds now, plus the KV budget not in use (it may fill at any moment).
        self.metrics.publish_memory(at_most_every_s=1.0, headroom_bytes=self.engine.kv_headroom_bytes())

    def _refresh_gauges(self, force: bool = False) -> None:
        assert self.loop is not None
        now = self.loop.time()
        if not force and now - self._gauges_at < GAUGE_INTERVAL_SECONDS:
            return
        self._gauges_at = now
        stats = self.engine.stats()
        self.waiting.set(stats.waiting)
        self.running.set(stats.running)
        self.cache_usage.set(stats.kv_cache_usage)

    def _response(
        self,
        state: _Stream,
        text: str,
        finish_reason: str,
        output_tokens: int,
        calls: tuple[ToolCallDelta, ...] | list[ToolCallDelta] = (),
    ) -> Any:
        """text_output, the outputs the request switched on, and any tool-call deltas."""
        tensors = [pb_utils.Tensor("text_output", np.array([text.encode("utf-8")], dtype=np.object_))]
        switches = state.switches
        if switches.finish_reason:
            tensors.append(pb_utils.Tensor("finish_reason", np.array([finish_reason.encode()], dtype=np.object_)))
        if switches.num_input_tokens:
            tensors.append(pb_utils.Tensor("num_input_tokens", np.array([state.prompt_tokens], dtype=np.uint32)))
        if switches.num_output_tokens:
            tensors.append(pb_utils.Tensor("num_output_tokens", np.array([output_tokens], dtype=np.uint32)))
        return pb_utils.InferenceResponse(output_tensors=[*tensors, *self._tool_calls_tensor(calls)])

    def _tool_calls_tensor(self, calls: tuple[ToolCallDelta, ...] | list[ToolCallDelta]) -> list[Any]:
        """The `tool_calls` output (OpenAI delta objects, JSON), only on responses that carry some."""
        if not calls:
            return []
        value = tool_calls_json(list(calls)).encode("utf-8")
        return [pb_utils.Tensor("tool_calls", np.array([value], dtype=np.object_))]

    def finalize(self) -> None:
        self.engine.stop()
        self.tokenizing.shutdown(wait=True, cancel_futures=True)
        if self.watcher is not None:
            self.watcher.cancel()
        # No pb_utils object (a request, a sender, a metric) may outlive the stub's shared memory:
        # freed at the interpreter's exit instead, it segfaults the stub (seen on every unload
        # before this). The cancelled watcher's frame, left on a loop that never runs again,
        # still reaches this object: so it lets go of everything it holds, and they are freed now.
        vars(self).clear()
        gc.collect()
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
