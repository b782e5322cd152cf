"""adapter/triton/chat_templates.py: chats for raw-prompt models rendered exactly as transformers'
apply_chat_template renders them (the reference, here in the test environment only), from a folder
or the hub's two files, without torch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adapter.core import errors
from adapter.triton.chat_templates import ChatTemplates
from tests.harness import CHAT_LLM, TEST_MODELS, TINY_LLM

CONVERSATIONS = [
    [{"role": "user", "content": "Hello"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "  Who are you?  "}],
    [
        {"role": "user", "content": "I have a dog named Max."},
        {"role": "assistant", "content": "That's lovely!"},
        {"role": "user", "content": 'What is my dog\'s name? <b>"quoted"</b> é'},
    ],
]
FIXTURE = TEST_MODELS / "vllm_dialect" / "tokenizer"


def reference(folder: Path, messages: list[dict[str, str]]) -> str:
    """transformers' own rendering of the folder's template."""
    from transformers.utils.chat_template_utils import render_jinja_template

    config = json.loads((folder / "tokenizer_config.json").read_text())
    template_file = folder / "chat_template.jinja"
    template = template_file.read_text() if template_file.is_file() else config["chat_template"]
    tokens = {k: v for k, v in config.items() if k.endswith("_token") and isinstance(v, str)}
    rendered, _ = render_jinja_template(
        conversations=[messages], chat_template=template, add_generation_prompt=True, **tokens
    )
    return str(rendered[0])


@pytest.mark.parametrize("folder", [FIXTURE, TINY_LLM, CHAT_LLM], ids=["inline template", "tiny-chat-llm", "smollm2"])
@pytest.mark.parametrize("messages", CONVERSATIONS, ids=["one turn", "system", "three turns"])
async def test_a_chat_renders_as_transformers_renders_it(
    folder: Path, messages: list[dict[str, str]], small_models: None
) -> None:
    rendered = await ChatTemplates(None).render("m", str(folder), messages)
    assert rendered == reference(folder, messages)


async def test_a_relative_folder_is_the_models_folder_in_the_repository() -> None:
    templates = ChatTemplates(TEST_MODELS)
    rendered = await templates.render("vllm_dialect", "tokenizer", CONVERSATIONS[0])
    # The fixture's template: BOS, a default system turn, the turn, the assistant's opening.
    assert rendered == (
        "<|endoftext|><|im_start|>system\nYou are a test model.<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


async def test_the_templates_own_refusal_is_an_invalid_argument_naming_the_model() -> None:
    with pytest.raises(errors.InvalidArgument) as caught:
        await ChatTemplates(None).render("vllm", str(FIXTURE), [{"role": "narrator", "content": "Once"}])
    assert "model 'vllm''s chat template refuses this conversation: Only system, user and assistant roles" in str(
        caught.value
    )


async def test_a_missing_folder_or_template_is_a_failed_precondition(tmp_path: Path) -> None:
    with pytest.raises(errors.FailedPrecondition, match="does not exist on the adapter's host"):
        await ChatTemplates(None).render("m", str(tmp_path / "nowhere"), CONVERSATIONS[0])
    (tmp_path / "tokenizer_config.json").write_text('{"eos_token": "</s>"}')
    with pytest.raises(errors.FailedPrecondition, match="has no chat template"):
        await ChatTemplates(None).render("m", str(tmp_path), CONVERSATIONS[0])
    (tmp_path / "chat_template.jinja").write_text("{% for m in messages %}{{ m.content }")
    with pytest.raises(errors.FailedPrecondition, match="does not compile"):
        await ChatTemplates(None).render("m", str(tmp_path), CONVERSATIONS[0])


async def test_special_tokens_stored_as_added_tokens_and_named_templates_are_understood(tmp_path: Path) -> None:
    config = {
        "bos_token": {"content": "<s>", "lstrip": False, "__type": "AddedToken"},
        "chat_template": [
            {"name": "tool_use", "template": "tools"},
            {
                "name": "default",
                "template": "{{ bos_token }}{% for m in messages %}[{{ m.role }}]{{ m.content }}"
                "{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}",
            },
        ],
    }
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    assert await ChatTemplates(None).render("m", str(tmp_path), CONVERSATIONS[0]) == "<s>[user]Hello[assistant]"


async def test_a_template_is_loaded_once_per_model_load(tmp_path: Path) -> None:
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": "one"}))
    templates = ChatTemplates(None)
    assert await templates.render("m", str(tmp_path), CONVERSATIONS[0]) == "one"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": "two"}))
    assert await templates.render("m", str(tmp_path), CONVERSATIONS[0]) == "one"  # cached
    templates.forget("m")  # the model was reloaded
    assert await templates.render("m", str(tmp_path), CONVERSATIONS[0]) == "two"
