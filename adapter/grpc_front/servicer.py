"""inference.v1.InferenceService: each RPC translates its request for the core, calls the core's
service, and translates the result back (adapter/grpc_front/convert.py); errors become statuses in
adapter/grpc_front/status.py."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from adapter.core.embedding import EmbeddingService
from adapter.core.images import ImageService
from adapter.core.memory import MemoryService
from adapter.core.text_generation import TextGenerationService
from adapter.core.types import VramRequest
from adapter.gen.inference.v1 import inference_pb2 as pb
from adapter.gen.inference.v1 import inference_pb2_grpc as pb_grpc
from adapter.grpc_front import convert
from adapter.grpc_front.status import map_errors, map_stream_errors


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
        async for delta in self._text.chat(convert.chat_request(request)):
            yield convert.chat_response(delta)

    @map_stream_errors
    async def GenerateStream(  # noqa: N802
        self, request: pb.GenerateStreamRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.GenerateStreamResponse]:
        async for delta in self._text.generate(convert.generate_request(request)):
            yield pb.GenerateStreamResponse(**convert.text_fields(delta))

    @map_errors
    async def GetEmbedding(  # noqa: N802
        self, request: pb.GetEmbeddingRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetEmbeddingResponse:
        return convert.embedding_response(await self._embedding.embed(convert.embedding_request(request)))

    @map_errors
    async def GenerateImage(  # noqa: N802
        self, request: pb.GenerateImageRequest, context: grpc.aio.ServicerContext
    ) -> pb.GenerateImageResponse:
        return pb.GenerateImageResponse(job_id=await self._images.generate(convert.generate_image_request(request)))

    @map_errors
    async def EditImage(  # noqa: N802
        self, request: pb.EditImageRequest, context: grpc.aio.ServicerContext
    ) -> pb.EditImageResponse:
        return pb.EditImageResponse(job_id=await self._images.edit(convert.edit_image_request(request)))

    @map_errors
    async def CheckImageStatus(  # noqa: N802
        self, request: pb.CheckImageStatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.CheckImageStatusResponse:
        return convert.image_status_response(await self._images.status(request.job_id))

    @map_stream_errors
    async def ManageVRAM(  # noqa: N802
        self, request_iterator: AsyncIterator[pb.ManageVRAMRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ManageVRAMResponse]:
        async for response in manage_vram(self._memory, request_iterator):
            yield response

    @map_errors
    async def ClearMemory(  # noqa: N802
        self, request: pb.ClearMemoryRequest, context: grpc.aio.ServicerContext
    ) -> pb.ClearMemoryResponse:
        return convert.clear_memory_response(await self._memory.clear(convert.clear_memory_request(request)))

    @map_errors
    async def GetMemoryStats(  # noqa: N802
        self, request: pb.GetMemoryStatsRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetMemoryStatsResponse:
        return pb.GetMemoryStatsResponse(snapshot=convert.memory_snapshot(await self._memory.snapshot()))


async def manage_vram(
    memory: MemoryService, requests: AsyncIterator[pb.ManageVRAMRequest]
) -> AsyncIterator[pb.ManageVRAMResponse]:
    """ManageVRAM over protobuf: each command converted as it arrives, each message converted back."""

    async def commands() -> AsyncIterator[VramRequest]:
        async for request in requests:
            yield convert.vram_request(request)

    messages = memory.manage(commands())
    try:
        async for message in messages:
            yield convert.vram_response(message)
    finally:
        await messages.aclose()  # type: ignore[attr-defined]
