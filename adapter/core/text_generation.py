"""ChatStream and GenerateStream: validate, make sure the model is loaded, stream its deltas."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import TypeVar

from google.protobuf.duration_pb2 import Duration

from adapter.core import validation
from adapter.gen.inference.v1 import inference_pb2 as pb
from adapter.scheduling.scheduler import Scheduler
from adapter.triton.gateway import TextGenerationRequest, TritonGateway

FINISH_REASONS = {
    "stop": pb.FINISH_REASON_STOP,
    "length": pb.FINISH_REASON_LENGTH,
    "cancelled": pb.FINISH_REASON_CANCELLED,
}

Response = TypeVar("Response", pb.ChatStreamResponse, pb.GenerateStreamResponse)


def _duration(seconds: float) -> Duration:
    duration = Duration()
    duration.FromNanoseconds(int(seconds * 1e9))
    return duration


class TextGenerationService:
    def __init__(self, gateway: TritonGateway, scheduler: Scheduler, max_prompt_chars: int = 0) -> None:
        self._gateway = gateway
        self._scheduler = scheduler
        self._max_prompt_chars = max_prompt_chars  # 0: no limit here (the model checks its context)

    def chat(self, request: pb.ChatStreamRequest) -> AsyncIterator[pb.ChatStreamResponse]:
        model = validation.require_model(request.model)
        messages = validation.chat_messages(request.messages)
        validation.prompt_size(sum(len(m["content"]) for m in messages), self._max_prompt_chars)
        validation.sampling_parameters(request.options, None)  # fail fast, before any load
        return self._stream(
            pb.ChatStreamResponse,
            TextGenerationRequest(model=model, sampling={}, messages=messages),
            request.options,
            validation.keep_alive(request),
        )

    def generate(self, request: pb.GenerateStreamRequest) -> AsyncIterator[pb.GenerateStreamResponse]:
        model = validation.require_model(request.model)
        prompt = validation.prompt_text(request.prompt)
        validation.prompt_size(len(prompt), self._max_prompt_chars)
        validation.sampling_parameters(request.options, None)
        return self._stream(
            pb.GenerateStreamResponse,
            TextGenerationRequest(model=model, sampling={}, prompt=prompt),
            request.options,
            validation.keep_alive(request),
        )

    async def _stream(
        self,
        response_type: type[Response],
        request: TextGenerationRequest,
        options: pb.GenerationOptions,
        keep_alive: validation.KeepAlive,
    ) -> AsyncIterator[Response]:
        arrived = time.monotonic()
        async with self._scheduler.use(request.model, keep_alive) as load_seconds:
            async for response in self._generate(response_type, request, options, arrived, load_seconds):
                yield response

    async def _generate(
        self,
        response_type: type[Response],
        request: TextGenerationRequest,
        options: pb.GenerationOptions,
        arrived: float,
        load_seconds: float,
    ) -> AsyncIterator[Response]:
        call = "chat" if request.messages is not None else "generate"
        limit = (await self._gateway.require_interface(request.model, call)).parameters.get("max_tokens_limit")
        sampling = validation.sampling_parameters(options, int(limit) if limit else None)
        request = TextGenerationRequest(
            model=request.model, sampling=sampling, prompt=request.prompt, messages=request.messages
        )
        first_token_at: float | None = None
        async for chunk in self._gateway.stream_text(request):
            if chunk.text and first_token_at is None:
                first_token_at = time.monotonic()
            if chunk.finish_reason is None:
                yield response_type(model=request.model, delta=chunk.text)
                continue
            finished_at = time.monotonic()
            yield response_type(
                model=request.model,
                delta=chunk.text,
                done=True,
                finish_reason=FINISH_REASONS.get(chunk.finish_reason, pb.FINISH_REASON_UNSPECIFIED),
                usage=pb.Usage(
                    prompt_tokens=chunk.prompt_tokens,
                    completion_tokens=chunk.completion_tokens,
                    total_tokens=chunk.prompt_tokens + chunk.completion_tokens,
                ),
                timings=pb.Timings(
                    load_duration=_duration(load_seconds),
                    time_to_first_token=_duration((first_token_at or finished_at) - arrived),
                    total_duration=_duration(finished_at - arrived),
                ),
            )
