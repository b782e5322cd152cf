"""Test-only Triton model: behaves as a model of Triton's vLLM backend does, without vLLM or torch.

What a client sees is what `triton-inference-server/vllm_backend` (src/model.py, src/utils/request.py)
does, down to its quirks; only the text is made up: NATO-alphabet words chosen by a seeded RNG.

- Inputs: `text_input` (the prompt, required), `stream` (default false), `sampling_parameters` (JSON
  with vLLM's SamplingParams names), `exclude_input_in_output` (absent: the prompt is prepended to a
  non-streamed answer only; false while streaming is an error), and the switches
  `return_finish_reason`, `return_cumulative_logprob`, `return_logprobs`, `return_num_input_tokens`,
  `return_num_output_tokens` (default false: their outputs are left out).
- Streaming: one response per generated token carrying the text since the previous response (empty
  while a possible stop string is held back), `finish_reason` "None" until the last one (vLLM sends
  `str(None)`), `num_input_tokens` on every response and `num_output_tokens` = this response's tokens;
  the last response carries the final flag with its outputs. Not streaming: one response with the
  whole text and the totals.
- Finish reasons: `stop` (its own end of answer after `answer_tokens` words, the end-of-sequence token
  counted as an output token as vLLM does; or a stop string, left out of the text), `length`
  (`max_tokens`, default 16 as in vLLM, or `max_model_len` reached), `abort` (cancelled while not
  streaming). Cancelled while streaming: a CANCELLED error ends the request.
- Tokens: a prompt token is one UTF-8 byte of `text_input`; an output token is one word (" alpha").
- Errors as vLLM reports them: an error response (code INTERNAL, Triton's default) whose message
  starts "Error generating stream: ", carrying a `text_output` of "N/A".
- Deterministic: temperature 0 picks the words from the prompt alone; a seed picks them from the
  seed, the sampling options and the prompt; else they are random.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from model_runtime.metrics import ModelMetrics
from model_runtime.model_config import ModelParameters
from model_runtime.stop_sequences import StopSequenceBuffer
from model_runtime.triton_inputs import string_input

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
WORDS = tuple(
    " " + word
    for word in (
        "alpha bravo charlie delta echo foxtrot golf hotel india juliett kilo lima mike november oscar papa "
        "quebec romeo sierra tango uniform victor whiskey xray yankee zulu"
    ).split()
)
SWITCHES = (
    "return_finish_reason",
    "return_cumulative_logprob",
    "return_logprobs",
    "return_num_input_tokens",
    "return_num_output_tokens",
)
# vLLM's SamplingParams fields: any other key is refused, as SamplingParams(**params) refuses it.
SAMPLING_FIELDS = frozenset(
    "n best_of presence_penalty frequency_penalty repetition_penalty temperature top_p top_k min_p seed stop "
    "stop_token_ids bad_words ignore_eos max_tokens min_tokens logprobs prompt_logprobs detokenize "
    "skip_special_tokens spaces_between_special_tokens include_stop_str_in_output truncate_prompt_tokens "
    "logit_bias allowed_token_ids guided_decoding structured_outputs lora_name extra_args".split()
)
LOGPROB_PER_TOKEN = -0.25  # every word is equally likely: a fixed, made-up log probability


class RequestError(ValueError):
    """What vLLM would raise for this request (its message goes to the client)."""


@dataclass(frozen=True)
class Options:
    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    seed: int | None
    stop: tuple[str, ...]
    ignore_eos: bool
    min_tokens: int
    logprobs: int | None


def _number(raw: dict[str, Any], key: str, default: float) -> float:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise RequestError(f"{key} must be a number, got {value!r}")
    return float(value)


def _integer(raw: dict[str, Any], key: str, default: int | None) -> int | None:
    value = raw.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(f"{key} must be an integer, got {value!r}")
    return int(value)


def parse_options(text: str | None) -> Options:
    """vLLM's checks of SamplingParams (vllm/sampling_params.py `_verify_args`), for the fields this
    stand-in reads; the others are accepted and have no effect (no penalties, no logits here)."""
    try:
        raw = json.loads(text) if text else {}
    except json.JSONDecodeError as err:
        raise RequestError(f"sampling_parameters is not valid JSON: {err}") from None
    if not isinstance(raw, dict):
        raise RequestError("sampling_parameters must be a JSON object")
    raw = {key: value for key, value in raw.items() if value is not None}  # vLLM drops nulls first
    if isinstance(raw.get("logprobs"), bool):
        raw["logprobs"] = int(raw["logprobs"])  # vLLM casts to the field's type, Optional[int]: false -> 0
    unknown = sorted(set(raw) - SAMPLING_FIELDS)
    if unknown:
        raise RequestError(f"SamplingParams.__init__() got an unexpected keyword argument {unknown[0]!r}")
    if raw.get("n", 1) != 1:
        raise RequestError(f"n={raw['n']!r}: this stand-in generates one sequence per request")
    if raw.get("include_stop_str_in_output"):
        raise RequestError("include_stop_str_in_output is not modelled by this stand-in")
    if "lora_name" in raw:
        raise RequestError("LoRA feature is not enabled.")
    max_tokens = _integer(raw, "max_tokens", 16)
    assert max_tokens is not None
    if max_tokens < 1:
        raise RequestError(f"max_tokens must be at least 1, got {max_tokens}.")
    temperature = _number(raw, "temperature", 1.0)
    if temperature < 0:
        raise RequestError(f"temperature must be non-negative, got {temperature}.")
    top_p = _number(raw, "top_p", 1.0)
    if not 0 < top_p <= 1:
        raise RequestError(f"top_p must be in (0, 1], got {top_p}.")
    top_k = _integer(raw, "top_k", 0)
    assert top_k is not None
    if top_k < -1:
        raise RequestError(f"top_k must be 0 (disable), or at least 1, got {top_k}.")
    for penalty in ("presence_penalty", "frequency_penalty"):
        value = _number(raw, penalty, 0.0)
        if not -2 <= value <= 2:
            raise RequestError(f"{penalty} must be in [-2, 2], got {value}.")
    if _number(raw, "repetition_penalty", 1.0) <= 0:
        raise RequestError(f"repetition_penalty must be greater than zero, got {raw['repetition_penalty']}.")
    stop = raw.get("stop", [])
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise RequestError("stop must be a string or a list of non-empty strings")
    min_tokens = _integer(raw, "min_tokens", 0) or 0
    if not 0 <= min_tokens <= max_tokens:
        raise RequestError(f"min_tokens must be in [0, max_tokens={max_tokens}], got {min_tokens}.")
    return Options(
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        seed=_integer(raw, "seed", None),
        stop=tuple(stop),
        ignore_eos=bool(raw.get("ignore_eos", False)),
        min_tokens=min_tokens,
        logprobs=_integer(raw, "logprobs", None),
    )


def _rng(options: Options, prompt: str) -> random.Random:
    if options.temperature == 0:
        return random.Random(f"greedy\0{prompt}")
    if options.seed is not None:
        return random.Random(f"{options.seed}\0{options.temperature}\0{options.top_p}\0{options.top_k}\0{prompt}")
    return random.Random()


def _strings(values: list[str]) -> Any:
    return np.array([value.encode("utf-8") for value in values], dtype=np.object_)


@dataclass
class _Request:
    """One request's inputs, read as vLLM's GenerateRequest._get_input_tensors reads them."""

    prompt: str
    stream: bool
    prepend_input: bool
    options: Options
    switches: dict[str, bool]


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        params = ModelParameters(args["model_config"])
        self.max_model_len = params.integer("max_model_len", 4096, minimum=1)
        self.answer_tokens = int(params.string("answer_tokens", "200", env="VLLM_DIALECT_ANSWER_TOKENS"))
        interval_ms = int(params.string("token_interval_ms", "5", env="VLLM_DIALECT_TOKEN_INTERVAL_MS"))
        self.interval_s = interval_ms / 1000
        self.metrics = ModelMetrics(pb_utils, args["model_name"])
        # vLLM's metric names (vllm_backend's utils/metrics.py; request_success from vLLM's server).
        self.prompt_tokens = self.metrics.counter("vllm:prompt_tokens_total", "Number of prefill tokens processed.")
        self.generation_tokens = self.metrics.counter(
            "vllm:generation_tokens_total", "Number of generation tokens processed."
        )
        self.running = self.metrics.gauge("vllm:num_requests_running", "Number of requests currently running.")
        self.success = {
            reason: self.metrics.counter(
                "vllm:request_success_total", "Count of finished requests, by finish reason.", finished_reason=reason
            )
            for reason in ("stop", "length", "abort")
        }
        self.metrics.publish_memory()
        self.in_flight = 0

    async def execute(self, requests: list[Any]) -> None:
        # Decoupled + async execute: the stub keeps taking requests while these run.
        await asyncio.gather(*(self._serve(request) for request in requests))

    def _read(self, request: Any) -> _Request:
        prompt = string_input(pb_utils, request, "text_input")
        if prompt is None:
            raise RequestError("text_input is missing")
        stream_tensor = pb_utils.get_input_tensor_by_name(request, "stream")
        stream = bool(stream_tensor.as_numpy()[0]) if stream_tensor is not None else False
        exclude = pb_utils.get_input_tensor_by_name(request, "exclude_input_in_output")
        prepend_input = (not bool(exclude.as_numpy()[0])) if exclude is not None else not stream
        if prepend_input and stream:
            raise RequestError("When streaming, `exclude_input_in_output` = False is not allowed.")
        switches = {}
        for name in SWITCHES:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            switches[name] = bool(tensor.as_numpy()[0]) if tensor is not None else False
        options = parse_options(string_input(pb_utils, request, "sampling_parameters"))
        prompt_tokens = len(prompt.encode("utf-8"))
        if prompt_tokens > self.max_model_len:
            raise RequestError(
                f"The decoder prompt (length {prompt_tokens}) is longer than the maximum model length of "
                f"{self.max_model_len}. Make sure that `max_model_len` is no smaller than the number of text tokens."
            )
        return _Request(prompt, stream, prepend_input, options, switches)

    def _response(
        self, request: _Request, text: str, reason: str | None, output_tokens: list[int], total_tokens: int
    ) -> Any:
        """vLLM's create_response: text_output always, the other outputs when switched on."""
        switches = request.switches
        tensors = [pb_utils.Tensor("text_output", _strings([text]))]
        if switches["return_finish_reason"]:
            tensors.append(pb_utils.Tensor("finish_reason", _strings([str(reason)])))
        if switches["return_cumulative_logprob"]:
            tensors.append(
                pb_utils.Tensor("cumulative_logprob", np.array([LOGPROB_PER_TOKEN * total_tokens], dtype=np.float32))
            )
        if switches["return_logprobs"]:
            if request.options.logprobs is None:
                logprobs = "null"
            else:
                logprobs = json.dumps(
                    [
                        {str(t): {"logprob": LOGPROB_PER_TOKEN, "rank": 1, "decoded_token": _piece(t)}}
                        for t in output_tokens
                    ]
                )
            tensors.append(pb_utils.Tensor("logprobs", _strings([logprobs])))
        if switches["return_num_input_tokens"]:
            count = len(request.prompt.encode("utf-8"))
            tensors.append(pb_utils.Tensor("num_input_tokens", np.array(count, dtype=np.uint32)))
        if switches["return_num_output_tokens"]:
            tensors.append(pb_utils.Tensor("num_output_tokens", np.array([len(output_tokens)], dtype=np.uint32)))
        return pb_utils.InferenceResponse(output_tensors=tensors)

    def _error(self, message: str, code: Any = None) -> Any:
        if code is None:  # vLLM's catch-all: TritonError's default code, INTERNAL
            error = pb_utils.TritonError(f"Error generating stream: {message}")
            return pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor("text_output", _strings(["N/A"]))], error=error
            )
        return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, code))

    async def _serve(self, triton_request: Any) -> None:
        sender = triton_request.get_response_sender()
        try:
            request = self._read(triton_request)
        except (RequestError, UnicodeDecodeError) as err:
            sender.send(self._error(str(err)), flags=FINAL)
            return
        self.in_flight += 1
        self.running.set(self.in_flight)
        try:
            await self._generate(triton_request, sender, request)
        finally:
            self.in_flight -= 1
            self.running.set(self.in_flight)
            self.metrics.publish_memory(at_most_every_s=1.0)

    async def _generate(self, triton_request: Any, sender: Any, request: _Request) -> None:
        options = request.options
        prompt_tokens = len(request.prompt.encode("utf-8"))
        self.prompt_tokens.increment(prompt_tokens)
        rng = _rng(options, request.prompt)
        stops = StopSequenceBuffer(options.stop)
        generated: list[int] = []  # word indices; len(WORDS) is the end-of-sequence token
        unsent: list[int] = []  # tokens since the last response
        text: list[str] = []  # the whole answer, when not streaming
        reason: str | None = None
        while reason is None:
            await asyncio.sleep(self.interval_s)
            if triton_request.is_cancelled():
                if request.stream:
                    self.success["abort"].increment(1)
                    sender.send(self._error("Request was cancelled", pb_utils.TritonError.CANCELLED), flags=FINAL)
                    return
                reason = "abort"
                break
            own_end = len(generated) >= max(self.answer_tokens, options.min_tokens) and not options.ignore_eos
            token = len(WORDS) if own_end else rng.randrange(len(WORDS))
            generated.append(token)
            unsent.append(token)
            self.generation_tokens.increment(1)
            delta = ""
            if token == len(WORDS):
                reason, delta = "stop", stops.flush()
            else:
                delta, stop_met = stops.push(WORDS[token])
                if stop_met:
                    reason = "stop"
                elif len(generated) >= options.max_tokens or prompt_tokens + len(generated) >= self.max_model_len:
                    reason, delta = "length", delta + stops.flush()
            if request.stream:
                response = self._response(request, delta, reason, unsent, len(generated))
                sender.send(response, flags=FINAL if reason is not None else 0)
                unsent = []
            else:
                text.append(delta)
        self.success[reason].increment(1)
        if not request.stream:
            whole = (request.prompt if request.prepend_input else "") + "".join(text)
            sender.send(self._response(request, whole, reason, generated, len(generated)), flags=FINAL)


def _piece(token: int) -> str:
    return WORDS[token] if token < len(WORDS) else ""
