"""The sampling ranges shared by the adapter and the model: values outside are refused by name, and
no value inside can make the sampler's probabilities non-finite."""

from __future__ import annotations

import math

import pytest
import torch

from adapter.core import validation
from adapter.core.errors import InvalidArgument
from adapter.gen.inference.v1 import inference_pb2 as pb
from adapter.grpc_front import convert
from model_runtime import sampling_limits

EDGES = {name: (r.low, r.high) for name, r in sampling_limits.RANGES.items()}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("repetition_penalty", 1e-38),  # passed "> 0", then the model failed INTERNAL (inf/nan)
        ("repetition_penalty", 0.001),
        ("repetition_penalty", 1e6),
        ("temperature", 1000.0),
        ("top_k", 2_000_000),
    ],
)
def test_values_that_could_break_sampling_are_invalid_argument_naming_the_range(field: str, value: float) -> None:
    with pytest.raises(InvalidArgument, match=rf"options\.{field} must be in \[") as refused:
        validation.sampling_parameters(convert.generation_options(pb.GenerationOptions(**{field: value})), None)
    assert sampling_limits.RANGES[field].describe() in refused.value.message


@pytest.mark.parametrize("field", sorted(sampling_limits.RANGES))
def test_both_ends_of_each_range_are_accepted(field: str) -> None:
    r = sampling_limits.RANGES[field]
    for value in (r.high,) if r.low_open else (r.low, r.high):
        assert sampling_limits.check(field, value) is None
        cast = int(value) if field == "top_k" else value
        options = convert.generation_options(pb.GenerationOptions(**{field: cast}))
        assert field in validation.sampling_parameters(options, None)


def test_check_all_reads_the_models_parsed_parameters() -> None:
    assert sampling_limits.check_all({"temperature": 0.7, "top_k": 40, "max_tokens": 9}) is None
    assert "repetition_penalty" in (sampling_limits.check_all({"repetition_penalty": 1e-38}) or "")
    assert "finite" in (sampling_limits.check_all({"temperature": math.inf}) or "")
    assert "number" in (sampling_limits.check_all({"top_p": "0.5"}) or "")
    assert "number" in (sampling_limits.check_all({"top_k": True}) or "")


def reference_probabilities(
    logits: torch.Tensor, seen: torch.Tensor, repetition_penalty: float, counts: torch.Tensor, penalty: float, t: float
) -> torch.Tensor:
    """The engine's order of operations (float32): penalties, then the best logit shifted to 0, then
    the temperature; softmax."""
    logits = logits.float().clone()
    picked = logits[seen]
    logits[seen] = torch.where(picked < 0, picked * repetition_penalty, picked / repetition_penalty)
    logits -= penalty * counts + penalty * (counts > 0).float()
    if t == 0:
        return torch.nn.functional.one_hot(logits.argmax(), logits.shape[-1]).float()
    logits = (logits - logits.max()) / t
    return logits.softmax(dim=-1)


@pytest.mark.parametrize("scale", [1.0, 1e4, 1e30])
def test_no_value_inside_the_ranges_gives_non_finite_probabilities(scale: float) -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(512, generator=generator) * scale
    seen = torch.zeros(512, dtype=torch.bool)
    seen[:200] = True
    counts = torch.randint(0, 4096, (512,), generator=generator).float()
    rp, tp = EDGES["repetition_penalty"], EDGES["temperature"]
    for repetition_penalty in (*rp, 1.0):
        for penalty in EDGES["frequency_penalty"]:
            for t in (*tp, 1e-30, 1.0):
                probs = reference_probabilities(logits, seen, repetition_penalty, counts, penalty, t)
                assert torch.isfinite(probs).all() and (probs >= 0).all(), (repetition_penalty, penalty, t)
                assert abs(float(probs.sum()) - 1) < 1e-3


def test_the_old_lower_bound_did_break_sampling() -> None:
    logits = torch.tensor([5.0, 1.0, -2.0])
    probs = reference_probabilities(logits, torch.tensor([True, True, False]), 1e-38, torch.zeros(3), 0.0, 1.0)
    assert not torch.isfinite(probs).all()
