"""Pooling, normalisation and length limits of the embedding model (no Triton)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from model_runtime.embeddings import model_max_length, normalize_rows, pool


def test_mean_pooling_ignores_padding() -> None:
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert pool(hidden, mask, "mean").tolist() == [[2.0, 3.0]]


def test_padding_does_not_change_a_row() -> None:
    torch.manual_seed(0)
    hidden = torch.randn(1, 4, 8)
    padded = torch.cat([hidden, torch.randn(1, 3, 8)], dim=1)
    alone = pool(hidden, torch.ones(1, 4, dtype=torch.long), "mean")
    with_pads = pool(padded, torch.tensor([[1, 1, 1, 1, 0, 0, 0]]), "mean")
    torch.testing.assert_close(alone, with_pads)


def test_cls_pooling_takes_the_first_token() -> None:
    hidden = torch.tensor([[[5.0, 6.0], [1.0, 1.0]]])
    assert pool(hidden, torch.tensor([[1, 1]]), "cls").tolist() == [[5.0, 6.0]]


def test_unknown_pooling_is_refused() -> None:
    with pytest.raises(ValueError, match="pooling"):
        pool(torch.zeros(1, 1, 2), torch.ones(1, 1), "max")


def test_normalize_only_the_rows_asked_for() -> None:
    vectors = torch.tensor([[3.0, 4.0], [3.0, 4.0], [0.0, 0.0]])
    out = normalize_rows(vectors, torch.tensor([True, False, True]))
    assert out[0].tolist() == pytest.approx([0.6, 0.8])
    assert out[1].tolist() == [3.0, 4.0]
    assert out[2].tolist() == [0.0, 0.0]  # a zero vector stays zero, no NaN


def _config(positions: int) -> SimpleNamespace:
    return SimpleNamespace(max_position_embeddings=positions)


def test_max_length_prefers_configured_then_sentence_transformers_then_tokenizer(tmp_path: Path) -> None:
    tokenizer = SimpleNamespace(model_max_length=512)
    assert model_max_length(str(tmp_path), tokenizer, _config(512), configured=0) == 512
    (tmp_path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 256}))
    assert model_max_length(str(tmp_path), tokenizer, _config(512), configured=0) == 256
    assert model_max_length(str(tmp_path), tokenizer, _config(512), configured=128) == 128


def test_max_length_never_passes_the_position_embeddings(tmp_path: Path) -> None:
    huge_tokenizer = SimpleNamespace(model_max_length=int(1e30))  # "no limit" sentinel of transformers
    assert model_max_length(str(tmp_path), huge_tokenizer, _config(384), configured=0) == 384
    assert model_max_length(str(tmp_path), huge_tokenizer, _config(384), configured=1000) == 384
