"""Chats for models that take a raw prompt (a vLLM-backend model): rendered here with the chat
template of the tokenizer the model's `tokenizer` parameter names, as Triton's OpenAI frontend and
vLLM's own server render them, so the model sees what its authors trained it on.

Only the tokenizer's configuration is read (tokenizer_config.json, and chat_template.jinja where
the template lives beside it, as transformers 5 saves it): jinja2 renders the template in the same
sandbox, with the same options and helpers, as transformers' apply_chat_template, so neither torch
nor transformers is needed. A hub id is fetched with huggingface_hub (two small files, cached); a
folder is read as it is (relative: to the model's folder in the model repository).
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
import jinja2.sandbox

from adapter.core import errors

log = logging.getLogger(__name__)

CONFIG_FILE = "tokenizer_config.json"
TEMPLATE_FILE = "chat_template.jinja"
SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token")


class TemplateRefusal(Exception):
    """The template's own raise_exception(): the conversation does not fit it."""


@dataclass(frozen=True)
class ChatTemplate:
    template: jinja2.Template
    special_tokens: dict[str, str]

    def render(self, messages: list[dict[str, Any]]) -> str:
        return self.template.render(messages=messages, add_generation_prompt=True, **self.special_tokens)


def _raise_exception(message: str) -> None:
    raise TemplateRefusal(message)


def _tojson(
    value: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None, sort_keys: bool = False
) -> str:
    # transformers' tojson: jinja's own escapes HTML characters, which no chat template wants.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _environment() -> jinja2.sandbox.ImmutableSandboxedEnvironment:
    """transformers' (utils/chat_template_utils.py): sandboxed, trim_blocks, lstrip_blocks, loop
    controls, tojson, raise_exception, strftime_now."""
    environment = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
    )
    environment.filters["tojson"] = _tojson
    environment.globals["raise_exception"] = _raise_exception
    environment.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return environment


def _token_text(value: Any) -> str | None:
    """A special token as tokenizer_config.json stores it: a string, or an AddedToken's dict."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return str(value["content"])
    return None


def parse_template(config: dict[str, Any], template_file: str | None, where: str) -> ChatTemplate:
    """The template (chat_template.jinja's text, else tokenizer_config.json's chat_template: a
    string, or a list of named ones of which "default" is used) and the special tokens it may use."""
    source: Any = template_file if template_file is not None else config.get("chat_template")
    if isinstance(source, list):
        named = {item.get("name"): item.get("template") for item in source if isinstance(item, dict)}
        source = named.get("default")
    if not isinstance(source, str) or not source.strip():
        raise errors.FailedPrecondition(f"the tokenizer {where} has no chat template")
    try:
        template = _environment().from_string(source)
    except jinja2.TemplateError as err:
        raise errors.FailedPrecondition(f"the chat template of the tokenizer {where} does not compile: {err}") from None
    tokens = {name: text for name in SPECIAL_TOKENS if (text := _token_text(config.get(name))) is not None}
    return ChatTemplate(template, tokens)


class ChatTemplates:
    """The chat template of each model's tokenizer, loaded once per model load."""

    def __init__(self, model_repository: Path | None, cache_dir: Path | None = None, token: str = "") -> None:
        self._repository = model_repository
        self._cache_dir = cache_dir
        self._token = token or None
        self._loaded: dict[tuple[str, str], asyncio.Task[ChatTemplate]] = {}

    def forget(self, model: str) -> None:
        for key in [key for key in self._loaded if key[0] == model]:
            del self._loaded[key]

    async def render(self, model: str, tokenizer: str, messages: list[dict[str, Any]]) -> str:
        """The conversation as the prompt `model` expects; FAILED_PRECONDITION when its tokenizer
        cannot be had, INVALID_ARGUMENT when its template refuses the conversation."""
        key = (model, tokenizer)
        task = self._loaded.get(key)
        if task is None or (task.done() and (task.cancelled() or task.exception() is not None)):
            # One load however many chats wait for it; a failed one is tried again next time.
            task = self._loaded[key] = asyncio.get_running_loop().create_task(self._load(model, tokenizer))
        template = await asyncio.shield(task)
        try:
            return template.render(messages)
        except TemplateRefusal as err:
            raise errors.InvalidArgument(f"model {model!r}'s chat template refuses this conversation: {err}") from None
        except jinja2.TemplateError as err:
            raise errors.InvalidArgument(
                f"model {model!r}'s chat template failed on this conversation: {err}"
            ) from None

    async def _load(self, model: str, tokenizer: str) -> ChatTemplate:
        folder = self._folder(model, tokenizer)
        where = f"{tokenizer!r} of model {model!r}"
        if folder is not None:
            config, template_file = await asyncio.to_thread(_read_folder, folder, where)
        else:
            config, template_file = await asyncio.to_thread(self._download, tokenizer, where)
        log.info("chat template of model %s loaded from tokenizer %s", model, tokenizer)
        return parse_template(config, template_file, where)

    def _folder(self, model: str, tokenizer: str) -> Path | None:
        """The tokenizer's folder, or None for a hub id. A relative path is relative to the model's
        folder in the model repository."""
        path = Path(tokenizer).expanduser()
        if not path.is_absolute() and self._repository is not None:
            beside = self._repository / model / path
            if beside.is_dir():
                return beside
        if path.is_absolute() or tokenizer.startswith((".", "~")):
            if not path.is_dir():
                raise errors.FailedPrecondition(
                    f"the tokenizer folder {tokenizer!r} of model {model!r} does not exist on the adapter's host "
                    "(its config.pbtxt names it in the tokenizer parameter)"
                )
            return path
        return None

    def _download(self, repo_id: str, where: str) -> tuple[dict[str, Any], str | None]:
        # Imported here: only a hub id needs it (a folder does not).
        import huggingface_hub
        from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError

        def fetch(filename: str) -> str:
            return huggingface_hub.hf_hub_download(repo_id, filename, cache_dir=self._cache_dir, token=self._token)

        try:
            config_path = fetch(CONFIG_FILE)
        except (EntryNotFoundError, HfHubHTTPError, OSError, ValueError) as err:
            raise errors.FailedPrecondition(
                f"the tokenizer {where} could not be fetched from the Hugging Face hub ({type(err).__name__}: {err}); "
                "name a folder the adapter can read in the model's tokenizer parameter, or give the adapter hub access "
                "(HF_TOKEN for a gated model)"
            ) from None
        try:
            template_file: str | None = Path(fetch(TEMPLATE_FILE)).read_text()
        except EntryNotFoundError:  # not in the repository (or, offline, not in the cache)
            template_file = None
        except (HfHubHTTPError, OSError) as err:
            log.warning("tokenizer %s: no %s (%s); using %s's chat_template", repo_id, TEMPLATE_FILE, err, CONFIG_FILE)
            template_file = None
        return _read_config(Path(config_path), where), template_file


def _read_config(path: Path, where: str) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise errors.FailedPrecondition(f"the tokenizer {where}: {path.name} cannot be read: {err}") from None
    if not isinstance(config, dict):
        raise errors.FailedPrecondition(f"the tokenizer {where}: {path.name} is not a JSON object")
    return config


def _read_folder(folder: Path, where: str) -> tuple[dict[str, Any], str | None]:
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        raise errors.FailedPrecondition(f"the tokenizer {where} has no {CONFIG_FILE} in {folder}")
    template_path = folder / TEMPLATE_FILE
    template_file = template_path.read_text() if template_path.is_file() else None
    return _read_config(config_path, where), template_file
