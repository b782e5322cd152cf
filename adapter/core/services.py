"""The core's services, built once and shared by every front (gRPC, HTTP)."""

from __future__ import annotations

from dataclasses import dataclass

from adapter.core.embedding import EmbeddingService
from adapter.core.images import ImageService
from adapter.core.memory import MemoryService
from adapter.core.models import ModelService
from adapter.core.text_generation import TextGenerationService


@dataclass(frozen=True)
class CoreServices:
    text: TextGenerationService
    embedding: EmbeddingService
    images: ImageService
    memory: MemoryService
    models: ModelService
