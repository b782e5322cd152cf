"""Request parsing and the seeded sampler of the LLM model, run without Triton."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
import torch

from model_runtime.text_generation import (
    MAX_STOP_SEQUENCES,
    InvalidRequest,
    SamplingParams,
    SeededSampler,
    parse_messages,
    parse_sampling_parameters,
)

DEFAULT_MAX_TOKENS = 32
MAX_TOKENS_LIMIT = 128
CPU = torch.device("cpu")


def parse(raw: dict[str, Any]) -> SamplingParams:
    return parse_sampling_parameters(json.dumps(raw), DEFAULT_MAX_TOKENS, MAX_TOKENS_LIMIT)


def sampler(prompt_length: int = 1, **params: Any) -> SeededSampler:
    params.setdefault("max_tokens", 8)
    return SeededSampler(SamplingParams(**params), prompt_length, CPU)


def chosen(row: torch.Tensor) -> int:
    return int(torch.nonzero(row == 0).flatten()[0])


def draw(s: SeededSampler, logits: list[float], times: int, input_ids: list[int] | None = None) -> list[int]:
    ids = torch.tensor([input_ids or [0]])
    scores = torch.tensor([logits])
    return [chosen(s(ids, scores)[0]) for _ in range(times)]


# --- parse_sampling_parameters ---------------------------------------------------------------


@pytest.mark.parametrize("text", [None, "", "{}"])
def test_missing_sampling_parameters_give_defaults(text: str | None) -> None:
    params = parse_sampling_parameters(text, DEFAULT_MAX_TOKENS, MAX_TOKENS_LIMIT)
    assert params == SamplingParams(
        max_tokens=DEFAULT_MAX_TOKENS,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        repetition_penalty=1.0,
        frequency_penalty=0.0,
        presence_penalty=0.0,
        seed=None,
        stop=(),
    )


def test_every_given_sampling_parameter_is_kept() -> None:
    params = parse(
        {
            "max_tokens": 7,
            "temperature": 0.5,
            "top_p": 0.9,
            "top_k": 40,
            "repetition_penalty": 1.3,
            "frequency_penalty": -1.5,
            "presence_penalty": 2,
            "seed": 2**64 - 1,
            "stop": ["\n", "END"],
        }
    )
    assert params == SamplingParams(
        max_tokens=7,
        temperature=0.5,
        top_p=0.9,
        top_k=40,
        repetition_penalty=1.3,
        frequency_penalty=-1.5,
        presence_penalty=2.0,
        seed=2**64 - 1,
        stop=("\n", "END"),
    )


def test_null_sampling_parameter_takes_its_default() -> None:
    params = parse({"temperature": None, "max_tokens": None, "seed": None})
    assert (params.temperature, params.max_tokens, params.seed) == (1.0, DEFAULT_MAX_TOKENS, None)


def test_integer_temperature_is_accepted_as_float() -> None:
    params = parse({"temperature": 0})
    assert params.temperature == 0.0
    assert isinstance(params.temperature, float)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_tokens", 0),
        ("max_tokens", -1),
        ("max_tokens", MAX_TOKENS_LIMIT + 1),
        ("temperature", -0.01),
        ("top_p", 0),
        ("top_p", 1.01),
        ("top_k", -1),
        ("repetition_penalty", 0),
        ("repetition_penalty", -1.0),
        ("frequency_penalty", 2.01),
        ("frequency_penalty", -2.01),
        ("presence_penalty", 2.5),
        ("presence_penalty", -3),
        ("seed", -1),
        ("seed", 2**64),
    ],
)
def test_out_of_range_sampling_parameter_is_rejected_naming_the_field(field: str, value: float) -> None:
    with pytest.raises(InvalidRequest, match=field):
        parse({field: value})


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_tokens", 1),
        ("max_tokens", MAX_TOKENS_LIMIT),
        ("temperature", 0),
        ("top_p", 1),
        ("top_k", 0),
        ("frequency_penalty", 2),
        ("frequency_penalty", -2),
        ("presence_penalty", -2),
        ("seed", 0),
    ],
)
def test_sampling_parameter_at_the_edge_of_its_range_is_accepted(field: str, value: float) -> None:
    assert getattr(parse({field: value}), field) == value


@pytest.mark.parametrize(
    "field", ["max_tokens", "temperature", "top_p", "top_k", "repetition_penalty", "frequency_penalty", "seed"]
)
def test_boolean_for_a_number_is_rejected_naming_the_field(field: str) -> None:
    with pytest.raises(InvalidRequest, match=field):
        parse({field: True})


@pytest.mark.parametrize(("field", "value"), [("temperature", "0.5"), ("top_p", [0.5]), ("seed", 1.0), ("top_k", 2.5)])
def test_wrong_type_for_a_number_is_rejected_naming_the_field(field: str, value: Any) -> None:
    with pytest.raises(InvalidRequest, match=field):
        parse({field: value})


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_temperature_is_rejected(literal: str) -> None:
    with pytest.raises(InvalidRequest, match="temperature"):
        parse_sampling_parameters('{"temperature": ' + literal + "}", DEFAULT_MAX_TOKENS, MAX_TOKENS_LIMIT)


def test_huge_integer_temperature_is_rejected_as_invalid_request() -> None:
    with pytest.raises(InvalidRequest, match="temperature"):
        parse_sampling_parameters('{"temperature": 1' + "0" * 400 + "}", DEFAULT_MAX_TOKENS, MAX_TOKENS_LIMIT)


def test_unknown_sampling_parameter_is_rejected_naming_it() -> None:
    with pytest.raises(InvalidRequest, match="best_of"):
        parse({"temperature": 0.5, "best_of": 2})


def test_invalid_json_sampling_parameters_are_rejected() -> None:
    with pytest.raises(InvalidRequest, match="not valid JSON"):
        parse_sampling_parameters('{"temperature": ', DEFAULT_MAX_TOKENS, MAX_TOKENS_LIMIT)


@pytest.mark.parametrize("text", ["[]", "null", "3", '"temperature"'])
def test_sampling_parameters_that_are_not_an_object_are_rejected(text: str) -> None:
    with pytest.raises(InvalidRequest, match="JSON object"):
        parse_sampling_parameters(text, DEFAULT_MAX_TOKENS, MAX_TOKENS_LIMIT)


def test_single_stop_string_becomes_a_one_item_tuple() -> None:
    assert parse({"stop": "###"}).stop == ("###",)


def test_stop_list_keeps_its_order() -> None:
    assert parse({"stop": ["b", "a"]}).stop == ("b", "a")


@pytest.mark.parametrize("stop", [[""], ["ok", ""], [1], ["ok", None], {"a": "b"}, 5, "", False, 0])
def test_stop_that_is_not_a_list_of_non_empty_strings_is_rejected(stop: Any) -> None:
    with pytest.raises(InvalidRequest, match="stop"):
        parse({"stop": stop})


def test_too_many_stop_sequences_are_rejected() -> None:
    parse({"stop": [f"s{i}" for i in range(MAX_STOP_SEQUENCES)]})
    with pytest.raises(InvalidRequest, match="stop"):
        parse({"stop": [f"s{i}" for i in range(MAX_STOP_SEQUENCES + 1)]})


# --- parse_messages --------------------------------------------------------------------------


def test_messages_with_every_role_are_returned_as_given() -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": ""},
    ]
    assert parse_messages(json.dumps(messages)) == messages


@pytest.mark.parametrize("text", ["[", "not json"])
def test_invalid_json_messages_are_rejected(text: str) -> None:
    with pytest.raises(InvalidRequest, match="messages is not valid JSON"):
        parse_messages(text)


@pytest.mark.parametrize("text", ["[]", "{}", '{"role": "user", "content": "hi"}', '"hi"', "null"])
def test_messages_that_are_not_a_non_empty_list_are_rejected(text: str) -> None:
    with pytest.raises(InvalidRequest, match="non-empty JSON list"):
        parse_messages(text)


def test_message_that_is_not_an_object_is_rejected_naming_its_index() -> None:
    with pytest.raises(InvalidRequest, match=r"messages\[1\]"):
        parse_messages(json.dumps([{"role": "user", "content": "hi"}, "hello"]))


@pytest.mark.parametrize("role", ["tool", "User", "", None])
def test_message_with_unknown_role_is_rejected_naming_its_index(role: Any) -> None:
    messages = [{"role": "user", "content": "a"}, {"role": role, "content": "b"}]
    with pytest.raises(InvalidRequest, match=r"messages\[1\]\.role"):
        parse_messages(json.dumps(messages))


def test_message_without_role_is_rejected() -> None:
    with pytest.raises(InvalidRequest, match=r"messages\[0\]\.role"):
        parse_messages(json.dumps([{"content": "hi"}]))


@pytest.mark.parametrize("content", [None, 5, ["hi"], {"text": "hi"}])
def test_message_with_non_string_content_is_rejected(content: Any) -> None:
    with pytest.raises(InvalidRequest, match=r"messages\[0\]\.content"):
        parse_messages(json.dumps([{"role": "user", "content": content}]))


def test_message_without_content_is_rejected() -> None:
    with pytest.raises(InvalidRequest, match=r"messages\[0\]\.content"):
        parse_messages(json.dumps([{"role": "user"}]))


# --- SeededSampler ---------------------------------------------------------------------------


def test_sampler_returns_a_one_hot_row_of_zero_and_minus_infinity() -> None:
    s = sampler(seed=1)
    scores = torch.randn(3, 11, generator=torch.Generator().manual_seed(0))
    out = s(torch.tensor([[1], [2], [3]]), scores)
    assert out.shape == scores.shape
    assert out.dtype == scores.dtype
    for row in out:
        assert int((row == 0).sum()) == 1
        assert int(torch.isneginf(row).sum()) == scores.shape[1] - 1


def test_sampler_keeps_the_dtype_of_half_precision_scores() -> None:
    out = sampler(seed=1, temperature=0.7)(torch.tensor([[1]]), torch.tensor([[0.1, 0.5, 0.2]], dtype=torch.float16))
    assert out.dtype == torch.float16
    assert int((out == 0).sum()) == 1


def test_sampler_does_not_modify_the_scores_it_is_given() -> None:
    scores = torch.tensor([[1.0, 3.0, 2.0]])
    before = scores.clone()
    sampler(seed=1, repetition_penalty=2.0, frequency_penalty=1.0, top_k=2, top_p=0.5)(torch.tensor([[1, 1]]), scores)
    assert torch.equal(scores, before)


def test_same_seed_gives_the_same_sequence_of_choices() -> None:
    uniform = [0.0] * 50
    first = draw(sampler(seed=1234), uniform, 40)
    second = draw(sampler(seed=1234), uniform, 40)
    assert first == second
    # The sequence is really sampled, not a constant choice.
    assert len(set(first)) > 5


def test_different_seeds_give_different_sequences() -> None:
    uniform = [0.0] * 50
    assert draw(sampler(seed=1), uniform, 40) != draw(sampler(seed=2), uniform, 40)


def test_unseeded_samplers_do_not_repeat_each_other() -> None:
    uniform = [0.0] * 50
    assert draw(sampler(seed=None), uniform, 40) != draw(sampler(seed=None), uniform, 40)


def test_seed_at_the_top_of_its_range_is_usable() -> None:
    uniform = [0.0] * 50
    assert draw(sampler(seed=2**64 - 1), uniform, 10) == draw(sampler(seed=2**64 - 1), uniform, 10)


LOGITS = [0.5, 2.0, 1.9, -1.0, 1.0]
ARGMAX = 1


def test_temperature_zero_picks_the_highest_logit() -> None:
    assert set(draw(sampler(seed=3, temperature=0.0), LOGITS, 30)) == {ARGMAX}


def test_temperature_one_without_filters_picks_more_than_the_highest_logit() -> None:
    # Control for the filter tests below: without them the sampler does wander.
    assert len(set(draw(sampler(seed=3), LOGITS, 200))) > 2


def test_top_k_one_picks_the_highest_logit() -> None:
    assert set(draw(sampler(seed=3, top_k=1, temperature=2.0), LOGITS, 100)) == {ARGMAX}


def test_top_k_two_picks_only_among_the_two_highest_logits() -> None:
    assert set(draw(sampler(seed=3, top_k=2, temperature=2.0), LOGITS, 200)) == {1, 2}


def test_top_k_larger_than_the_vocabulary_filters_nothing() -> None:
    assert len(set(draw(sampler(seed=3, top_k=1000, temperature=2.0), LOGITS, 200))) > 2


def test_tiny_top_p_picks_the_highest_logit() -> None:
    assert set(draw(sampler(seed=3, top_p=1e-6, temperature=2.0), LOGITS, 100)) == {ARGMAX}


def test_top_p_keeps_the_smallest_set_reaching_the_mass() -> None:
    # Probabilities 0.5, 0.3, 0.15, 0.05: with top_p 0.6 the first two carry it.
    logits = [math.log(p) for p in (0.5, 0.3, 0.15, 0.05)]
    assert set(draw(sampler(seed=5, top_p=0.6), logits, 300)) == {0, 1}


def test_top_p_filters_by_probability_not_by_position() -> None:
    # The most likely token is last: filtering must follow the sorted order, then map back.
    logits = [math.log(p) for p in (0.05, 0.15, 0.3, 0.5)]
    assert set(draw(sampler(seed=5, top_p=0.6), logits, 300)) == {2, 3}


def test_tiny_positive_temperature_acts_like_greedy() -> None:
    assert draw(sampler(seed=3, temperature=1e-40), LOGITS, 5) == [ARGMAX] * 5


def test_strong_repetition_penalty_steers_away_from_a_seen_top_token() -> None:
    logits = [3.0, 2.0, 1.0]
    assert draw(sampler(temperature=0.0), logits, 1, input_ids=[0, 0]) == [0]
    assert draw(sampler(temperature=0.0, repetition_penalty=2.0), logits, 1, input_ids=[0, 0]) == [1]


def test_repetition_penalty_leaves_unseen_tokens_alone() -> None:
    logits = [3.0, 2.0, 1.0]
    assert draw(sampler(temperature=0.0, repetition_penalty=2.0), logits, 1, input_ids=[2]) == [0]


def test_repetition_penalty_pushes_a_seen_negative_logit_further_down() -> None:
    logits = [-1.0, -1.5]
    assert draw(sampler(temperature=0.0, repetition_penalty=2.0), logits, 1, input_ids=[0]) == [1]


def test_repetition_penalty_below_one_favours_seen_tokens() -> None:
    logits = [2.0, 3.0]
    assert draw(sampler(temperature=0.0, repetition_penalty=0.5), logits, 1, input_ids=[0]) == [0]


def test_frequency_penalty_ignores_tokens_of_the_prompt() -> None:
    logits = [3.0, 2.0]
    s = sampler(prompt_length=3, temperature=0.0, frequency_penalty=2.0)
    assert draw(s, logits, 1, input_ids=[0, 0, 0]) == [0]


def test_frequency_penalty_counts_generated_tokens() -> None:
    logits = [3.0, 2.0]
    s = sampler(prompt_length=3, temperature=0.0, frequency_penalty=2.0)
    assert draw(s, logits, 1, input_ids=[1, 1, 1, 0]) == [1]


def test_frequency_penalty_grows_with_each_repetition() -> None:
    logits = [3.0, 1.5]
    s = sampler(prompt_length=1, temperature=0.0, frequency_penalty=0.6)
    assert draw(s, logits, 1, input_ids=[1, 0, 0]) == [0]  # 3 - 1.2 > 1.5
    assert draw(s, logits, 1, input_ids=[1, 0, 0, 0]) == [1]  # 3 - 1.8 < 1.5


def test_presence_penalty_ignores_tokens_of_the_prompt() -> None:
    logits = [3.0, 2.0]
    s = sampler(prompt_length=2, temperature=0.0, presence_penalty=2.0)
    assert draw(s, logits, 1, input_ids=[0, 0]) == [0]


def test_presence_penalty_applies_once_however_often_a_token_was_generated() -> None:
    logits = [3.0, 1.2]
    s = sampler(prompt_length=1, temperature=0.0, presence_penalty=1.5)
    assert draw(s, logits, 1, input_ids=[1, 0]) == [0]  # 3 - 1.5 > 1.2
    assert draw(s, logits, 1, input_ids=[1, 0, 0, 0, 0, 0]) == [0]


def test_presence_penalty_steers_away_from_a_generated_token() -> None:
    logits = [3.0, 2.0]
    s = sampler(prompt_length=1, temperature=0.0, presence_penalty=1.5)
    assert draw(s, logits, 1, input_ids=[1, 0]) == [1]


def test_negative_frequency_penalty_favours_generated_tokens() -> None:
    logits = [2.0, 3.0]
    s = sampler(prompt_length=1, temperature=0.0, frequency_penalty=-2.0)
    assert draw(s, logits, 1, input_ids=[1, 0]) == [0]


def test_penalties_are_counted_per_row_of_a_batch() -> None:
    s = sampler(prompt_length=1, temperature=0.0, frequency_penalty=2.0)
    out = s(torch.tensor([[5, 0], [5, 1]]), torch.tensor([[3.0, 2.0], [3.0, 2.0]]))
    assert [chosen(row) for row in out] == [1, 0]


@pytest.mark.parametrize(
    ("field", "value"),
    [("repetition_penalty", 1e-38), ("repetition_penalty", 1e6), ("temperature", 1e30), ("top_k", 10**9)],
)
def test_values_that_could_make_probabilities_non_finite_are_refused(field: str, value: float) -> None:
    with pytest.raises(InvalidRequest, match=field):
        parse({field: value})


def test_the_smallest_allowed_repetition_penalty_still_samples_finite_probabilities() -> None:
    huge = torch.finfo(torch.float32).max / 1000
    s = sampler(seed=1, temperature=1.0, repetition_penalty=0.01)
    assert draw(s, [huge, 1.0, -huge], 5, input_ids=[0, 2]) == [0] * 5


def test_options_a_request_leaves_unset_take_the_model_defaults() -> None:
    defaults = {"temperature": 0.2, "top_p": 0.9}
    params = parse_sampling_parameters(json.dumps({"top_p": 0.5, "temperature": None}), 8, 16, defaults)
    assert (params.temperature, params.top_p) == (0.2, 0.5)  # null is unset; a given value wins
    assert parse_sampling_parameters(None, 8, 16, defaults).temperature == 0.2
    assert parse_sampling_parameters(None, 8, 16).temperature == 1.0


def test_generation_defaults_are_only_what_the_model_config_sets() -> None:
    from transformers import GenerationConfig

    from model_runtime.text_generation import generation_defaults

    assert generation_defaults(GenerationConfig(eos_token_id=2)) == {}
    config = GenerationConfig(do_sample=True, temperature=0.7, top_p=0.8, top_k=20, repetition_penalty=1.05)
    assert generation_defaults(config) == {"temperature": 0.7, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.05}
    assert generation_defaults(GenerationConfig(do_sample=True, repetition_penalty=1e-9)) == {}  # out of range
