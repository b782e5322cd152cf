"""Builds the small local models the tests and `make run` serve (no model hub is reachable here).

Each model has a real architecture and random weights, and is written with `save_pretrained`, so
the serving code loads it through the same `from_pretrained` path as a hub model.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import sysconfig
import time
from pathlib import Path

# Bump when the recipe changes, so stale builds in a cache are rebuilt.
RECIPE_VERSION = "1"
LLM_DIR_NAME = "tiny-chat-llm"

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]


def default_cache_dir() -> Path:
    return Path(os.environ.get("MODEL_CACHE_DIR", Path.home() / ".cache" / "inference-platform" / "models"))


def _training_corpus(limit_files: int = 400) -> list[str]:
    """Text to train the tokenizer on: the standard library's own sources, present everywhere."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    texts = []
    for path in sorted(stdlib.glob("*.py"))[:limit_files]:
        texts.append(path.read_text(encoding="utf-8", errors="ignore"))
    return texts


def build_llm(out_dir: Path) -> Path:
    """A 2-layer Llama with a byte-level BPE tokenizer and a ChatML chat template."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab_size = 1024
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_training_corpus(), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        additional_special_tokens=["<|im_start|>"],
    )
    tokenizer.chat_template = CHAT_TEMPLATE

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=8192,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        # Random init gives near-uniform logits; widen them so sampling settings visibly matter,
        # and give the end-of-turn token a neutral row: replies then rarely end on their own, which
        # keeps max_tokens and cancellation tests deterministic in what they exercise.
        model.lm_head.weight.mul_(20.0)
        model.lm_head.weight[tokenizer.eos_token_id].zero_()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id

    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


BUILDERS = {LLM_DIR_NAME: build_llm}


def ensure_models(cache_dir: Path | None = None, force: bool = False) -> dict[str, Path]:
    """Builds every small model that is missing or stale; returns their folders by name."""
    cache_dir = cache_dir or default_cache_dir()
    built = {}
    for name, builder in BUILDERS.items():
        target = cache_dir / name
        stamp = target / "BUILD_RECIPE.json"
        if not force and stamp.exists() and json.loads(stamp.read_text()).get("recipe") == RECIPE_VERSION:
            built[name] = target
            continue
        started = time.monotonic()
        tmp = cache_dir / f".{name}.tmp-{os.getpid()}"
        builder(tmp)
        (tmp / "BUILD_RECIPE.json").write_text(json.dumps({"recipe": RECIPE_VERSION}))
        if target.exists():
            import shutil

            shutil.rmtree(target)
        tmp.rename(target)  # atomic: a half-built model is never seen under its real name
        print(f"built {name} in {time.monotonic() - started:.1f}s -> {target}", file=sys.stderr)
        built[name] = target
    return built


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cache-dir", type=Path, default=None, help="default: $MODEL_CACHE_DIR or ~/.cache/...")
    parser.add_argument("--force", action="store_true", help="rebuild even when up to date")
    args = parser.parse_args()
    for name, path in ensure_models(args.cache_dir, args.force).items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
