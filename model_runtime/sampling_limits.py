"""The ranges of the LLM's sampling parameters: one table for the adapter (which refuses values outside
it as INVALID_ARGUMENT before any model sees them) and the model (which must refuse the same values
from any other client). Plain Python, no torch: the adapter imports it.

The ranges are chosen so that no value inside them can make the sampler's probabilities non-finite
(the failure `repetition_penalty: 1e-38` caused: "probability tensor contains either inf, nan or
element < 0"), given how the engine samples: logits in float32, penalties applied first, then the
best logit shifted to 0 before dividing by the temperature.

- temperature in [0, 100]: 0 is greedy; after the shift any positive temperature only sends the
  other logits towards -inf, never to +inf or NaN. Above 100 every distribution is already flat.
- top_p in (0, 1]; top_k >= 0 (0 disables it) and at most 1,000,000.
- repetition_penalty in [0.01, 100]: seen logits are divided (positive) or multiplied (negative) by
  it; a factor of at most 100 keeps any float32 logit below 3.4e36 finite (1e-38 made it inf).
- frequency_penalty and presence_penalty in [-2, 2] (OpenAI's range): subtracted once per count,
  with counts bounded by the context length.
- max_tokens >= 1 (the model's own limit applies on top); seed in [0, 2^64).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Range:
    low: float
    high: float
    low_open: bool = False  # low itself is refused

    def __contains__(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        above = value > self.low if self.low_open else value >= self.low
        return above and value <= self.high

    def describe(self) -> str:
        return f"{'(' if self.low_open else '['}{self.low:g}, {self.high:g}]"


TEMPERATURE = Range(0.0, 100.0)
TOP_P = Range(0.0, 1.0, low_open=True)
TOP_K = Range(0, 1_000_000)
REPETITION_PENALTY = Range(0.01, 100.0)
FREQUENCY_PENALTY = Range(-2.0, 2.0)
PRESENCE_PENALTY = Range(-2.0, 2.0)
MAX_SEED = 2**64  # exclusive

RANGES: dict[str, Range] = {
    "temperature": TEMPERATURE,
    "top_p": TOP_P,
    "top_k": TOP_K,
    "repetition_penalty": REPETITION_PENALTY,
    "frequency_penalty": FREQUENCY_PENALTY,
    "presence_penalty": PRESENCE_PENALTY,
}


def check(name: str, value: float) -> str | None:
    """None when `value` is a valid `name`; else what is wrong with it, in words naming the range
    (the caller adds the field's prefix, e.g. "options.")."""
    allowed = RANGES[name]
    if not math.isfinite(value):
        return f"{name} must be a finite number; got {value}"
    if value in allowed:
        return None
    if name == "top_k":
        return f"{name} must be in {allowed.describe()} (0 disables it); got {value:g}"
    return f"{name} must be in {allowed.describe()}; got {value:g}"


def check_all(parameters: dict[str, object]) -> str | None:
    """The first problem among the ranged parameters present in `parameters` (the model's parsed
    `sampling_parameters`), or None."""
    for name in RANGES:
        value = parameters.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"{name} must be a number; got {value!r}"
        problem = check(name, float(value))
        if problem is not None:
            return problem
    return None
