"""Triton python-backend model: sentence embeddings, batched by Triton's dynamic batcher.

One `execute` call receives every request the batcher grouped; their texts run as one padded
forward pass and the rows are handed back to each request in order.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import triton_python_backend_utils as pb_utils
from transformers import AutoModel, AutoTokenizer

from model_runtime.embeddings import POOLING_MODES, model_max_length, normalize_rows, pool
from model_runtime.metrics import ModelMetrics
from model_runtime.model_config import ModelParameters, require_cuda_if_expected, triton_device
from model_runtime.triton_inputs import bool_values, string_values


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        require_cuda_if_expected()  # the GPU image must not fall back to the CPU silently
        params = ModelParameters(args["model_config"])
        model_id = params.string("model_id", "", env="EMBEDDING_MODEL_ID")
        if not model_id:
            raise ValueError("no weights configured: set parameter model_id or EMBEDDING_MODEL_ID")
        self.pooling = params.string("pooling", "mean")
        if self.pooling not in POOLING_MODES:
            raise ValueError(f"parameter pooling must be one of {POOLING_MODES}, got {self.pooling!r}")
        # The GPU Triton assigned to this instance (KIND_GPU), else cuda (KIND_MODEL), else CPU.
        # float32 everywhere: a small model, and the vectors' precision is what it is for.
        self.device = triton_device(args)
        self.tokenizer = AutoTokenizer.from_pretrained(model_id)
        self.model = AutoModel.from_pretrained(model_id).to(self.device).eval()
        self.max_length = model_max_length(
            model_id, self.tokenizer, self.model.config, params.integer("max_length", 0, minimum=0)
        )
        self.metrics = ModelMetrics(pb_utils, args["model_name"], self.device)
        self.metrics.publish_memory()

    def execute(self, requests: list[Any]) -> list[Any]:
        texts: list[str] = []
        flags: list[bool] = []
        spans: list[tuple[int, int] | pb_utils.TritonError] = []
        for request in requests:
            try:
                batch = string_values(pb_utils, request, "text_input")
                wanted = bool_values(pb_utils, request, "normalize")
                if wanted is None:
                    wanted = [False] * len(batch)
                if len(wanted) != len(batch):
                    raise ValueError(f"normalize has {len(wanted)} values for {len(batch)} texts")
            except (UnicodeDecodeError, ValueError) as err:
                spans.append(pb_utils.TritonError(str(err), pb_utils.TritonError.INVALID_ARG))
                continue
            spans.append((len(texts), len(texts) + len(batch)))
            texts.extend(batch)
            flags.extend(wanted)

        if texts:
            vectors, token_counts, truncated = self._embed(texts, flags)
        responses = []
        for span in spans:
            if isinstance(span, pb_utils.TritonError):
                responses.append(pb_utils.InferenceResponse(error=span))
                continue
            start, end = span
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor("embedding", vectors[start:end]),
                        pb_utils.Tensor("token_count", token_counts[start:end].reshape(-1, 1)),
                        pb_utils.Tensor("truncated", truncated[start:end].reshape(-1, 1)),
                    ]
                )
            )
        self.metrics.publish_memory(at_most_every_s=1.0)
        return responses

    def _embed(self, texts: list[str], flags: list[bool]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        encoded = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        # A fast tokenizer keeps what truncation cut off: that is how we know an input was cut.
        truncated = np.array([bool(e.overflowing) for e in encoded.encodings], dtype=bool)
        token_counts = encoded["attention_mask"].sum(dim=1).to(torch.int32).numpy()
        with torch.inference_mode():
            encoded = encoded.to(self.device)
            hidden = self.model(**encoded).last_hidden_state
            vectors = pool(hidden, encoded["attention_mask"], self.pooling)
            vectors = normalize_rows(vectors, torch.tensor(flags, device=self.device))
        return vectors.float().cpu().numpy(), token_counts, truncated

    def finalize(self) -> None:
        del self.model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
