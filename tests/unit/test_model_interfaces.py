"""A model of the wrong kind is refused by what its config declares, before anything is sent."""

from __future__ import annotations

import pytest

from adapter.core import errors
from adapter.triton.gateway import TritonGateway
from adapter.triton.types import ModelInfo

LLM = ModelInfo(
    inputs=frozenset({"text_input", "messages", "sampling_parameters", "stream"}),
    outputs=frozenset({"text_output", "finish_reason", "prompt_tokens", "completion_tokens"}),
)
EMBEDDING = ModelInfo(
    max_batch_size=64,
    inputs=frozenset({"text_input", "normalize"}),
    outputs=frozenset({"embedding", "token_count", "truncated"}),
)
RAW_PROMPT_ONLY = ModelInfo(inputs=frozenset({"text_input", "stream"}), outputs=frozenset({"text_output"}))


@pytest.fixture
def gateway() -> TritonGateway:
    gw = TritonGateway.__new__(TritonGateway)
    gw._model_info = {"llm": LLM, "embedding": EMBEDDING, "raw": RAW_PROMPT_ONLY}
    return gw


@pytest.mark.parametrize(
    ("model", "call"), [("llm", "chat"), ("llm", "generate"), ("embedding", "embedding"), ("raw", "generate")]
)
async def test_a_model_that_declares_what_the_call_needs_is_accepted(
    gateway: TritonGateway, model: str, call: str
) -> None:
    assert await gateway.require_interface(model, call) is gateway._model_info[model]


@pytest.mark.parametrize(
    ("model", "call", "missing"),
    [
        ("embedding", "chat", "messages, text_output"),
        ("embedding", "generate", "text_output"),
        ("llm", "embedding", "embedding"),
        ("raw", "chat", "messages"),
    ],
)
async def test_a_model_of_the_wrong_kind_is_refused_naming_what_it_lacks(
    gateway: TritonGateway, model: str, call: str, missing: str
) -> None:
    with pytest.raises(errors.InvalidArgument) as caught:
        await gateway.require_interface(model, call)
    assert f"model {model!r} cannot serve {call}: it does not declare {missing}" in str(caught.value)
