"""Triton's vLLM-backend dialect as the `llm` model speaks it: which request switches mean what, and
which of vLLM's sampling options it accepts without implementing them. Free of torch and Triton.

The dialect is that of triton-inference-server/vllm_backend (src/utils/request.py): `stream`
(default false), `exclude_input_in_output` (absent: the prompt is prepended to a non-streamed answer
only; false while streaming is an error), and the `return_finish_reason`, `return_num_input_tokens`,
`return_num_output_tokens` switches (default false: those outputs are left out). Clients written
for a vLLM model (Triton's OpenAI frontend with `--backend vllm`, genai-perf, vllm_backend's sample
client) then work against ours unchanged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from model_runtime.requests import InvalidRequest

SWITCHES = ("return_finish_reason", "return_num_input_tokens", "return_num_output_tokens")

# The engine's finish reasons in vLLM's words. A cancelled stream ends with a CANCELLED error
# instead (as vLLM's does); "abort" is what a cancelled non-streamed request reports.
FINISH_REASONS = {"stop": "stop", "length": "length", "cancelled": "abort"}
# What vLLM puts in finish_reason while a request is not finished (it sends str(None)).
UNFINISHED = "None"


@dataclass(frozen=True)
class Switches:
    """How one request wants its answer delivered."""

    stream: bool = False
    prepend_input: bool = True  # the prompt goes in front of the (non-streamed) text
    finish_reason: bool = False
    num_input_tokens: bool = False
    num_output_tokens: bool = False


def resolve_switches(stream: bool | None, exclude_input_in_output: bool | None, returns: dict[str, bool]) -> Switches:
    """The request's switches as vLLM reads them (None: the input is absent); InvalidRequest for the
    one combination vLLM refuses."""
    streaming = bool(stream)
    prepend = (not exclude_input_in_output) if exclude_input_in_output is not None else not streaming
    if prepend and streaming:
        raise InvalidRequest(
            "exclude_input_in_output=false is not allowed while streaming (stream=true): a streamed answer "
            "never repeats the prompt; send exclude_input_in_output=true or leave it out"
        )
    return Switches(
        stream=streaming,
        prepend_input=prepend,
        finish_reason=returns.get("return_finish_reason", False),
        num_input_tokens=returns.get("return_num_input_tokens", False),
        num_output_tokens=returns.get("return_num_output_tokens", False),
    )


# vLLM SamplingParams fields the engine does not implement, accepted only at the value that changes
# nothing (the value clients such as Triton's OpenAI frontend send by default: n=1, logprobs=false,
# ignore_eos=false, best_of=1). Any other value is refused by name: silently ignoring it would hand
# the client something else than it asked for.
NEUTRAL_OPTIONS: dict[str, tuple[Any, ...]] = {
    "n": (1,),
    "best_of": (1,),
    "ignore_eos": (False,),
    "min_tokens": (0,),
    "min_p": (0, 0.0),
    "logprobs": (False, 0),
    "prompt_logprobs": (False, 0),
    "top_logprobs": (0,),
    "skip_special_tokens": (True,),
    "spaces_between_special_tokens": (True,),
    "include_stop_str_in_output": (False,),
    "detokenize": (True,),
    "stop_token_ids": ([],),
    "bad_words": ([],),
    "logit_bias": ({},),
    "allowed_token_ids": ([],),
    "lora_name": (),  # only null
}
WHY_NOT: dict[str, str] = {
    "n": "it generates one sequence per request",
    "best_of": "it generates one sequence per request",
    "logprobs": "it does not return log probabilities",
    "prompt_logprobs": "it does not return log probabilities",
    "top_logprobs": "it does not return log probabilities",
    "lora_name": "it serves no LoRA adapters",
}


def without_neutral_options(sampling_json: str | None) -> str | None:
    """The `sampling_parameters` JSON without the vLLM options left at their neutral value (or null);
    InvalidRequest naming an option set to anything else. Text that is not a JSON object is returned
    as it is, for the sampling parser to refuse with its own message."""
    if not sampling_json:
        return sampling_json
    try:
        raw = json.loads(sampling_json)
    except json.JSONDecodeError:
        return sampling_json
    if not isinstance(raw, dict):
        return sampling_json
    dropped = False
    for key, neutral in NEUTRAL_OPTIONS.items():
        if key not in raw:
            continue
        value = raw.pop(key)
        dropped = True
        # bool is an int in Python: logprobs=true must not pass as 1, nor n=true as 1.
        if value is None or any(value == v and type(value) is type(v) for v in neutral):
            continue
        reason = WHY_NOT.get(key, "the engine does not implement it")
        instead = f" or send {json.dumps(neutral[0])}" if neutral else ""
        raise InvalidRequest(
            f"sampling parameter {key!r}={json.dumps(value)} is not supported ({reason}); leave it out{instead}"
        )
    return json.dumps(raw) if dropped else sampling_json
