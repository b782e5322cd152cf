"""Pooling, normalisation and length limits for the embedding model, free of Triton."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

POOLING_MODES = ("mean", "cls")


def pool(last_hidden_state: torch.Tensor, attention_mask: torch.Tensor, mode: str) -> torch.Tensor:
    """One vector per row: the mean over real (unpadded) tokens, or the first ([CLS]) token."""
    if mode == "cls":
        return last_hidden_state[:, 0]
    if mode != "mean":
        raise ValueError(f"pooling must be one of {POOLING_MODES}, got {mode!r}")
    mask = attention_mask.unsqueeze(-1).to(last_hidden_state.dtype)
    return (last_hidden_state * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


def normalize_rows(vectors: torch.Tensor, which: torch.Tensor) -> torch.Tensor:
    """L2-normalises the rows where `which` is true; the others are returned unchanged."""
    norms = vectors.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    return torch.where(which.unsqueeze(-1), vectors / norms, vectors)


def model_max_length(model_dir: str, tokenizer: Any, model_config: Any, configured: int) -> int:
    """Tokens per input: the configured value, else sentence-transformers' max_seq_length, else
    the tokenizer's limit, never beyond the model's position embeddings."""
    limit = int(getattr(model_config, "max_position_embeddings", 0) or 0) or 512
    if configured > 0:
        return min(configured, limit)
    st_config = Path(model_dir) / "sentence_bert_config.json"
    if st_config.is_file():
        seq = json.loads(st_config.read_text()).get("max_seq_length")
        if isinstance(seq, int) and seq > 0:
            return min(seq, limit)
    tokenizer_limit = int(getattr(tokenizer, "model_max_length", 0) or 0)
    return min(tokenizer_limit, limit) if 0 < tokenizer_limit < 1_000_000 else limit
