"""inference.v1.InferenceService: the gRPC surface, delegating each RPC to its service module."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from adapter.core.embedding import EmbeddingService
from adapter.core.errors import map_errors, map_stream_errors
from adapter.core.images import ImageService
from adapter.core.memory import MemoryService
from adapter.core.text_generation import TextGenerationService
from adapter.gen.inference.v1 import inference_pb2 as pb
from adapter.gen.inference.v1 import inference_pb2_grpc as pb_grpc


class InferenceServicer(pb_grpc.InferenceServiceServicer):
    def __init__(
        self, text: TextGenerationService, embedding: EmbeddingService, images: ImageService, memory: MemoryService
    ) -> None:
        self._text = text
        self._embedding = embedding
        self._images = images
        self._memory = memory

    @map_stream_errors
    async def ChatStream(  # noqa: N802 - gRPC method name
        self, request: pb.ChatStreamRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ChatStreamResponse]:
        async for response in self._text.chat(request):
            yield response

    @map_stream_errors
    async def GenerateStream(  # noqa: N802
        self, request: pb.GenerateStreamRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.GenerateStreamResponse]:
        async for response in self._text.generate(request):
            yield response

    @map_errors
    async def GetEmbedding(  # noqa: N802
        self, request: pb.GetEmbeddingRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetEmbeddingResponse:
        return await self._embedding.embed(request)

    @map_errors
    async def GenerateImage(  # noqa: N802
        self, request: pb.GenerateImageRequest, context: grpc.aio.ServicerContext
    ) -> pb.GenerateImageResponse:
        return await self._images.generate(request)

    @map_errors
    async def EditImage(  # noqa: N802
        self, request: pb.EditImageRequest, context: grpc.aio.ServicerContext
    ) -> pb.EditImageResponse:
        return await self._images.edit(request)

    @map_errors
    async def CheckImageStatus(  # noqa: N802
        self, request: pb.CheckImageStatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.CheckImageStatusResponse:
        return await self._images.status(request)

    @map_stream_errors
    async def ManageVRAM(  # noqa: N802
        self, request_iterator: AsyncIterator[pb.ManageVRAMRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ManageVRAMResponse]:
        async for response in self._memory.manage(request_iterator):
            yield response

    @map_errors
    async def ClearMemory(  # noqa: N802
        self, request: pb.ClearMemoryRequest, context: grpc.aio.ServicerContext
    ) -> pb.ClearMemoryResponse:
        return await self._memory.clear(request)

    @map_errors
    async def GetMemoryStats(  # noqa: N802
        self, request: pb.GetMemoryStatsRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetMemoryStatsResponse:
        return await self._memory.stats(request)
