"""model_runtime.llm_dialect: the vLLM-backend switches as vLLM reads them, and vLLM's sampling options
that the llm model accepts only where they change nothing."""

from __future__ import annotations

import json

import pytest

from model_runtime.llm_dialect import Switches, resolve_switches, without_neutral_options
from model_runtime.requests import InvalidRequest


def test_absent_switches_are_vllms_defaults_a_whole_answer_with_the_prompt_in_front() -> None:
    assert resolve_switches(None, None, {}) == Switches(stream=False, prepend_input=True)


def test_streaming_leaves_the_prompt_out_unless_asked_to_repeat_it_which_is_refused() -> None:
    assert resolve_switches(True, None, {}).prepend_input is False
    assert resolve_switches(True, True, {}).prepend_input is False
    with pytest.raises(InvalidRequest, match="exclude_input_in_output=false is not allowed while streaming"):
        resolve_switches(True, False, {})


def test_exclude_input_in_output_decides_for_a_whole_answer() -> None:
    assert resolve_switches(False, True, {}).prepend_input is False
    assert resolve_switches(False, False, {}).prepend_input is True


def test_return_switches_turn_on_their_outputs() -> None:
    switches = resolve_switches(True, True, {"return_finish_reason": True, "return_num_output_tokens": True})
    assert (switches.finish_reason, switches.num_input_tokens, switches.num_output_tokens) == (True, False, True)


def test_neutral_values_are_dropped_and_the_rest_kept() -> None:
    sent = {"n": 1, "best_of": 1, "logprobs": False, "ignore_eos": False, "lora_name": None, "max_tokens": 5}
    assert json.loads(without_neutral_options(json.dumps(sent)) or "") == {"max_tokens": 5}


def test_text_without_neutral_options_is_passed_on_untouched() -> None:
    text = '{"max_tokens": 5,  "stop": ["x"]}'
    assert without_neutral_options(text) is text
    assert without_neutral_options(None) is None
    assert without_neutral_options("not json") == "not json"  # the sampling parser says what is wrong


@pytest.mark.parametrize(
    ("option", "value", "says"),
    [
        ("n", 2, "'n'=2 is not supported (it generates one sequence per request); leave it out or send 1"),
        ("logprobs", True, "'logprobs'=true is not supported"),  # not 1: a bool is no count
        ("logprobs", 5, "'logprobs'=5"),
        ("n", True, "'n'=true"),
        ("ignore_eos", True, "'ignore_eos'=true is not supported (the engine does not implement it)"),
        ("lora_name", "sql", "'lora_name'=\"sql\" is not supported (it serves no LoRA adapters); leave it out"),
    ],
)
def test_other_values_are_refused_by_name(option: str, value: object, says: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        without_neutral_options(json.dumps({option: value}))
    assert says in str(caught.value)
