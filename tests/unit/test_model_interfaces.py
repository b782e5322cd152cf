"""A model of the wrong kind is refused by what its config declares, before anything is sent; a text
model is driven in the dialect its config declares (vLLM-backend switches, our `messages`)."""

from __future__ import annotations

import pytest

from adapter.core import errors
from adapter.triton.chat_templates import ChatTemplates
from adapter.triton.gateway import TritonGateway
from adapter.triton.types import ModelInfo, TextInterface

DIALECT_INPUTS = {
    "text_input",
    "sampling_parameters",
    "stream",
    "exclude_input_in_output",
    "return_finish_reason",
    "return_num_input_tokens",
    "return_num_output_tokens",
}
DIALECT_OUTPUTS = {"text_output", "finish_reason", "num_input_tokens", "num_output_tokens"}
LLM = ModelInfo(inputs=frozenset({*DIALECT_INPUTS, "messages"}), outputs=frozenset(DIALECT_OUTPUTS))
# A model of Triton's vLLM backend: the same switches (and some the adapter does not use), no messages.
VLLM = ModelInfo(
    parameters={"tokenizer": "Qwen/Qwen2.5-0.5B-Instruct"},
    inputs=frozenset({*DIALECT_INPUTS, "image", "return_logprobs"}),
    outputs=frozenset({*DIALECT_OUTPUTS, "logprobs"}),
)
VLLM_WITHOUT_TOKENIZER = ModelInfo(inputs=VLLM.inputs, outputs=VLLM.outputs)
TEXT_OUT_ONLY = ModelInfo(inputs=frozenset({"prompt", "max_tokens"}), outputs=frozenset({"text_output"}))
EMBEDDING = ModelInfo(
    max_batch_size=64,
    inputs=frozenset({"text_input", "normalize"}),
    outputs=frozenset({"embedding", "token_count", "truncated"}),
)
RAW_PROMPT_ONLY = ModelInfo(inputs=frozenset({"text_input", "stream"}), outputs=frozenset({"text_output"}))


@pytest.fixture
def gateway() -> TritonGateway:
    gw = TritonGateway.__new__(TritonGateway)
    gw._model_info = {
        "llm": LLM,
        "embedding": EMBEDDING,
        "raw": RAW_PROMPT_ONLY,
        "vllm": VLLM,
        "vllm-no-tokenizer": VLLM_WITHOUT_TOKENIZER,
        "odd": TEXT_OUT_ONLY,
    }
    gw._chat_templates = ChatTemplates(None)
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


SWITCHES = (
    "stream",
    "exclude_input_in_output",
    "return_finish_reason",
    "return_num_input_tokens",
    "return_num_output_tokens",
)


@pytest.mark.parametrize(
    ("model", "call", "interface"),
    [
        ("llm", "chat", TextInterface(SWITCHES, messages=True)),  # renders its chats itself
        ("llm", "generate", TextInterface(SWITCHES, messages=False)),
        ("vllm", "chat", TextInterface(SWITCHES, messages=False)),  # the adapter renders the template
        ("vllm", "generate", TextInterface(SWITCHES, messages=False)),
        ("vllm-no-tokenizer", "generate", TextInterface(SWITCHES, messages=False)),
        ("raw", "generate", TextInterface(("stream",), messages=False)),  # only what it declares is sent
    ],
)
async def test_a_text_model_is_driven_in_the_dialect_it_declares(
    gateway: TritonGateway, model: str, call: str, interface: TextInterface
) -> None:
    assert await gateway.text_interface(model, call) == (gateway._model_info[model], interface)


async def test_chat_on_a_raw_prompt_model_without_a_tokenizer_is_a_failed_precondition_saying_so(
    gateway: TritonGateway,
) -> None:
    with pytest.raises(errors.FailedPrecondition) as caught:
        await gateway.text_interface("vllm-no-tokenizer", "chat")
    assert "takes a raw prompt (text_input, no messages input) and its config.pbtxt names no tokenizer" in str(
        caught.value
    )
    assert "use GenerateStream" in str(caught.value)


async def test_a_text_model_that_fits_neither_dialect_is_a_failed_precondition_naming_the_tensors(
    gateway: TritonGateway,
) -> None:
    for call in ("chat", "generate"):
        with pytest.raises(errors.FailedPrecondition) as caught:
            await gateway.text_interface("odd", call)
        assert "takes neither text_input" in str(caught.value) and "nor messages" in str(caught.value)
        assert "['max_tokens', 'prompt']" in str(caught.value)


@pytest.mark.parametrize(
    ("model", "call"), [("embedding", "chat"), ("embedding", "generate"), ("vllm", "chat with tools")]
)
async def test_a_model_that_is_no_text_model_or_lacks_tools_stays_the_wrong_kind(
    gateway: TritonGateway, model: str, call: str
) -> None:
    with pytest.raises(errors.InvalidArgument, match=f"model {model!r} cannot serve {call}"):
        await gateway.text_interface(model, call)
