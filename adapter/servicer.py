"""inference.v1.InferenceService: the gRPC surface, delegating each RPC to its service module."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import NoReturn

import grpc

from adapter.errors import map_errors, map_stream_errors
from adapter.gen.inference.v1 import inference_pb2 as pb
from adapter.gen.inference.v1 import inference_pb2_grpc as pb_grpc
from adapter.services.embedding import EmbeddingService
from adapter.services.images import ImageService
from adapter.services.text_generation import TextGenerationService


async def _not_yet(context: grpc.aio.ServicerContext, rpc: str) -> NoReturn:
    await context.abort(
        grpc.StatusCode.UNIMPLEMENTED, f"{rpc} is part of the API but not implemented by this server yet"
    )
    raise AssertionError("unreachable: abort raises")


class InferenceServicer(pb_grpc.InferenceServiceServicer):
    def __init__(self, text: TextGenerationService, embedding: EmbeddingService, images: ImageService) -> None:
        self._text = text
        self._embedding = embedding
        self._images = images

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

    async def ManageVRAM(  # noqa: N802
        self, request_iterator: AsyncIterator[pb.ManageVRAMRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ManageVRAMResponse]:
        await _not_yet(context, "ManageVRAM")
        yield pb.ManageVRAMResponse()  # unreachable: abort raises; makes this an async generator

    async def ClearMemory(  # noqa: N802
        self, request: pb.ClearMemoryRequest, context: grpc.aio.ServicerContext
    ) -> pb.ClearMemoryResponse:
        return await _not_yet(context, "ClearMemory")

    async def GetMemoryStats(  # noqa: N802
        self, request: pb.GetMemoryStatsRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetMemoryStatsResponse:
        return await _not_yet(context, "GetMemoryStats")
