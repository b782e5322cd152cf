"""Sampling, stop sequences and request parsing for the LLM model, free of Triton.

Sampling is ours, with a `torch.Generator` per request: a shared RNG would make a seed's result
depend on what else runs in the batch. The batching engine (`model_runtime.batching`) asks each
request's sampler for its row's token; as a transformers logits processor the same sampler hands
`generate` a one-hot row.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import LogitsProcessor

from model_runtime import sampling_limits
from model_runtime.json_values import finite_number

# Re-exported: batching.py, the models and the tests import them from here.
from model_runtime.requests import InvalidRequest as InvalidRequest
from model_runtime.stop_sequences import StopSequenceBuffer as StopSequenceBuffer

MAX_STOP_SEQUENCES = 16
VALID_ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = field(default_factory=tuple)


def _number(raw: dict[str, Any], key: str, default: float) -> float:
    value = raw.get(key, default)
    return default if value is None else finite_number(value, f"sampling parameter {key!r}", InvalidRequest)


def _integer(raw: dict[str, Any], key: str, default: int | None) -> int | None:
    value = raw.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"sampling parameter {key!r} must be an integer, got {value!r}")
    return int(value)


# The sampling options a model's own generation_config.json may set defaults for.
MODEL_DEFAULTED = ("temperature", "top_p", "top_k", "repetition_penalty")


def generation_defaults(generation_config: Any) -> dict[str, float]:
    """The sampling defaults the weights' authors set in generation_config.json (only the values set
    there, not transformers' own defaults), as vLLM applies them: a request that leaves an option
    unset gets the model's recommendation. Values outside our ranges are ignored."""
    if generation_config is None:
        return {}
    explicit = generation_config.to_diff_dict()
    defaults: dict[str, float] = {}
    for key in MODEL_DEFAULTED:
        value = explicit.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and sampling_limits.check(key, value) is None:
            defaults[key] = value
    return defaults


def parse_sampling_parameters(
    text: str | None, default_max_tokens: int, max_tokens_limit: int, defaults: dict[str, float] | None = None
) -> SamplingParams:
    """Parses and range-checks the `sampling_parameters` JSON of a request; options it leaves unset
    (absent or null) take `defaults` (the model's, see generation_defaults), else ours."""
    raw: dict[str, Any] = {}
    if text:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as err:
            raise InvalidRequest(f"sampling_parameters is not valid JSON: {err}") from None
        if not isinstance(raw, dict):
            raise InvalidRequest("sampling_parameters must be a JSON object")
    known = set(SamplingParams.__dataclass_fields__)
    unknown = sorted(set(raw) - known)
    if unknown:
        raise InvalidRequest(f"unknown sampling parameter(s) {unknown}; known: {sorted(known)}")
    for key, value in (defaults or {}).items():
        if raw.get(key) is None:
            raw[key] = value

    max_tokens = _integer(raw, "max_tokens", default_max_tokens)
    assert max_tokens is not None
    if max_tokens <= 0 or max_tokens > max_tokens_limit:
        raise InvalidRequest(f"max_tokens must be in [1, {max_tokens_limit}], got {max_tokens}")
    temperature = _number(raw, "temperature", 1.0)
    top_p = _number(raw, "top_p", 1.0)
    top_k = _integer(raw, "top_k", 0)
    assert top_k is not None
    repetition_penalty = _number(raw, "repetition_penalty", 1.0)
    penalties = {key: _number(raw, key, 0.0) for key in ("frequency_penalty", "presence_penalty")}
    # The same ranges the adapter enforces (model_runtime/sampling_limits.py): inside them the
    # sampler's probabilities are always finite, so other clients of this model are held to them too.
    ranged = {
        "temperature": temperature,
        "top_p": top_p,
        "top_k": top_k,
        "repetition_penalty": repetition_penalty,
        **penalties,
    }
    for key, value in ranged.items():
        problem = sampling_limits.check(key, value)
        if problem:
            raise InvalidRequest(problem)
    seed = _integer(raw, "seed", None)
    if seed is not None and not 0 <= seed < sampling_limits.MAX_SEED:
        raise InvalidRequest(f"seed must be in [0, 2^64), got {seed}")
    stop = raw.get("stop")
    if stop is None:
        stop = []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise InvalidRequest("stop must be a list of non-empty strings")
    if len(stop) > MAX_STOP_SEQUENCES:
        raise InvalidRequest(f"at most {MAX_STOP_SEQUENCES} stop sequences, got {len(stop)}")
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        repetition_penalty=repetition_penalty,
        frequency_penalty=penalties["frequency_penalty"],
        presence_penalty=penalties["presence_penalty"],
        seed=seed,
        stop=tuple(stop),
    )


def parse_messages(text: str) -> list[dict[str, str]]:
    """Parses the `messages` JSON input: a non-empty list of {role, content}."""
    try:
        messages = json.loads(text)
    except json.JSONDecodeError as err:
        raise InvalidRequest(f"messages is not valid JSON: {err}") from None
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("messages must be a non-empty JSON list")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise InvalidRequest(f"messages[{i}] must be an object with role and content")
        role, content = message.get("role"), message.get("content")
        if role not in VALID_ROLES:
            raise InvalidRequest(f"messages[{i}].role must be one of {list(VALID_ROLES)}, got {role!r}")
        if not isinstance(content, str):
            raise InvalidRequest(f"messages[{i}].content must be a string")
    return messages


class NonFiniteProbabilities(ValueError):
    """A row's logits gave NaN or infinite probabilities (a numerical failure of that request)."""


def sample_rows(logits: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator]) -> torch.Tensor:
    """One token per row of `logits` [rows, vocabulary], each row with its own options and
    generator, in a few batched operations: temperature, top-k and top-p as masks over the whole
    block, then inverse-CDF sampling with one uniform draw from each row's generator (so a seeded
    row gives the same token whatever else is in the block). Penalties are applied before (they
    need each row's history). Returns [rows, 1]; raises NonFiniteProbabilities naming bad rows."""
    logits = logits.float()
    rows, vocabulary = logits.shape
    device = logits.device
    choice = logits.argmax(dim=-1)
    sampled = [i for i, p in enumerate(params) if p.temperature > 0]
    if sampled:
        block = logits[sampled] if len(sampled) < rows else logits
        temperature = torch.tensor([params[i].temperature for i in sampled], device=device).unsqueeze(1)
        # Shift so the best logit is 0 before scaling: a tiny temperature then sends the others
        # to -inf (greedy) instead of overflowing everything to inf and softmax to NaN.
        block = (block - block.max(dim=-1, keepdim=True).values) / temperature
        top_k = [params[i].top_k if 0 < params[i].top_k < vocabulary else 0 for i in sampled]
        if any(top_k):
            kth_values = torch.topk(block, max(top_k), dim=-1).values
            kth = kth_values.gather(1, torch.tensor([[max(k, 1) - 1] for k in top_k], device=device))
            active = torch.tensor([[k > 0] for k in top_k], device=device)
            block = block.masked_fill(active & (block < kth), -math.inf)
        top_p = [params[i].top_p for i in sampled]
        if any(p < 1.0 for p in top_p):
            sorted_logits, order = torch.sort(block, descending=True, dim=-1)
            probs_sorted = sorted_logits.softmax(dim=-1)
            mass_before = probs_sorted.cumsum(dim=-1) - probs_sorted
            limit = torch.tensor([[p] for p in top_p], device=device)
            drop_sorted = (mass_before >= limit) & (limit < 1.0)  # the first token always stays
            block = block.masked_fill(drop_sorted.scatter(1, order, drop_sorted), -math.inf)
        probs = block.softmax(dim=-1)
        bad = (~torch.isfinite(probs)).any(dim=-1)
        if bool(bad.any()):
            raise NonFiniteProbabilities([sampled[i] for i in bad.nonzero().flatten().tolist()])
        uniform = torch.cat([torch.rand(1, generator=generators[i], device=device) for i in sampled]).unsqueeze(1)
        cdf = probs.cumsum(dim=-1)
        picked = torch.searchsorted(cdf, uniform * cdf[:, -1:], right=True).squeeze(1)
        # Rounding at the very top of the CDF must not land on a token the filters removed.
        positions = torch.arange(vocabulary, device=device).expand_as(probs)
        last_possible = torch.where(probs > 0, positions, 0).max(dim=-1).values
        choice[sampled] = torch.minimum(picked, last_possible)
    return choice.unsqueeze(1)


class SeededSampler(LogitsProcessor):
    """One request's sampling: penalties over its history, then `sample_rows` with its own generator."""

    def __init__(self, params: SamplingParams, prompt_length: int, device: torch.device) -> None:
        self.params = params
        self.prompt_length = prompt_length
        self.generator = torch.Generator(device=device)
        if params.seed is not None:
            self.generator.manual_seed(params.seed)
        else:
            self.generator.seed()

    @property
    def has_penalties(self) -> bool:
        p = self.params
        return p.repetition_penalty != 1.0 or bool(p.frequency_penalty) or bool(p.presence_penalty)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        choice = self._pick(input_ids, scores)
        one_hot = torch.full_like(scores, -math.inf)
        one_hot.scatter_(1, choice, 0.0)
        return one_hot  # type: ignore[return-value]

    def choose(self, input_ids: torch.Tensor, scores: torch.Tensor) -> int:
        """The next token of one row: `input_ids` [1, tokens so far] (read only for penalties),
        `scores` [1, vocabulary]."""
        return int(self._pick(input_ids, scores)[0, 0])

    def _pick(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        logits = self.penalize(input_ids, scores.float().clone())
        rows = logits.shape[0]
        return sample_rows(logits, [self.params] * rows, [self.generator] * rows)

    def penalize(self, input_ids: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """Repetition, frequency and presence penalties on float logits [rows, vocabulary], in place."""
        p = self.params
        if p.repetition_penalty != 1.0:
            # As in transformers/CTRL: shrink positive logits, grow negative ones, of seen tokens.
            seen = torch.gather(logits, 1, input_ids)
            seen = torch.where(seen < 0, seen * p.repetition_penalty, seen / p.repetition_penalty)
            logits.scatter_(1, input_ids, seen)
        if p.frequency_penalty or p.presence_penalty:
            # OpenAI semantics: counted over the generated tokens only.
            generated = input_ids[:, self.prompt_length :]
            counts = torch.zeros_like(logits).scatter_add_(1, generated, torch.ones_like(generated, dtype=logits.dtype))
            logits -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0).to(logits.dtype)
        return logits
