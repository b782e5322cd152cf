"""ChatStream and GenerateStream: validate, make sure the model is loaded, stream its deltas."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator
from typing import Any

from adapter.core import types as t
from adapter.core import validation
from adapter.core.errors import InvalidArgument
from adapter.scheduling.scheduler import Scheduler
from adapter.triton.gateway import TritonGateway
from adapter.triton.types import TextGenerationRequest

FINISH_REASONS = {reason.value: reason for reason in t.FinishReason}


class TextGenerationService:
    def __init__(self, gateway: TritonGateway, scheduler: Scheduler, max_prompt_chars: int = 0) -> None:
        self._gateway = gateway
        self._scheduler = scheduler
        self._max_prompt_chars = max_prompt_chars  # 0: no limit here (the model checks its context)

    def chat(self, request: t.ChatRequest, options_prefix: str = "options.") -> AsyncIterator[t.TextDelta]:
        """Checked at once (before the first delta is awaited): a bad request fails the call itself.
        `options_prefix`: how the caller's front names the options' fields in messages ("" over HTTP,
        where they sit at the top level of the request)."""
        model = validation.require_model(request.model)
        messages = validation.chat_messages(request.messages)
        validation.prompt_size(sum(len(m["content"]) for m in messages), self._max_prompt_chars)
        validation.sampling_parameters(request.options, None, options_prefix)  # fail fast, before any load
        tools = validation.tools(request.tools)
        tool_choice = validation.tool_choice(request.tool_choice, request.tools)
        guided = validation.guided_decoding(request.response_format)
        if guided is not None and tools and tool_choice != "none":
            raise InvalidArgument(
                "response_format constrains the reply to JSON, tools to tool calls: give one of them "
                '(or tool_choice "none")'
            )
        return self._stream(
            TextGenerationRequest(
                model=model,
                sampling={},
                messages=messages,
                tools=tools or None,
                tool_choice=tool_choice,
                # Only where it changes something: tools the model may call.
                parallel_tool_calls=request.parallel_tool_calls or not tools or tool_choice == "none",
                guided_decoding=guided,
            ),
            request.options,
            request.keep_alive,
            options_prefix,
        )

    def generate(self, request: t.GenerateRequest, options_prefix: str = "options.") -> AsyncIterator[t.TextDelta]:
        model = validation.require_model(request.model)
        prompt = validation.prompt_text(request.prompt)
        validation.prompt_size(len(prompt), self._max_prompt_chars)
        validation.sampling_parameters(request.options, None, options_prefix)
        return self._stream(
            TextGenerationRequest(model=model, sampling={}, prompt=prompt),
            request.options,
            request.keep_alive,
            options_prefix,
        )

    async def _stream(
        self, request: TextGenerationRequest, options: t.GenerationOptions, keep_alive: t.KeepAlive, prefix: str
    ) -> AsyncIterator[t.TextDelta]:
        arrived = time.monotonic()
        async with self._scheduler.use(request.model, keep_alive) as load_seconds:
            async for delta in self._generate(request, options, arrived, load_seconds, prefix):
                yield delta

    async def _generate(
        self,
        request: TextGenerationRequest,
        options: t.GenerationOptions,
        arrived: float,
        load_seconds: float,
        prefix: str,
    ) -> AsyncIterator[t.TextDelta]:
        call = (
            "generate"
            if request.messages is None
            else "chat"
            if not request.tools
            else "chat with tools"
            if request.parallel_tool_calls
            else "chat with one tool call"
        )
        info, interface = await self._gateway.text_interface(request.model, call)
        limit = info.parameters.get("max_tokens_limit")
        sampling = validation.sampling_parameters(options, int(limit) if limit else None, prefix)
        if request.guided_decoding is not None:
            sampling["guided_decoding"] = request.guided_decoding
        request = dataclasses.replace(request, sampling=sampling)
        if request.messages is not None and not interface.messages:
            # A model that takes a raw prompt: the chat rendered as its chat template says.
            prompt = await self._gateway.chat_prompt(request.model, info, request.messages)
            request = dataclasses.replace(request, prompt=prompt, messages=None)
        first_token_at: float | None = None
        async for chunk in self._gateway.stream_text(request, interface):
            if (chunk.text or chunk.tool_calls) and first_token_at is None:
                first_token_at = time.monotonic()
            calls = tuple(_tool_call_delta(c) for c in chunk.tool_calls)
            if chunk.finish_reason is None:
                yield t.TextDelta(model=request.model, text=chunk.text, tool_calls=calls)
                continue
            finished_at = time.monotonic()
            yield t.TextDelta(
                model=request.model,
                text=chunk.text,
                finish=t.Finish(
                    reason=FINISH_REASONS.get(chunk.finish_reason, t.FinishReason.UNKNOWN),
                    usage=t.Usage(prompt_tokens=chunk.prompt_tokens, completion_tokens=chunk.completion_tokens),
                    timings=t.Timings(
                        load_s=load_seconds,
                        time_to_first_token_s=(first_token_at or finished_at) - arrived,
                        total_s=finished_at - arrived,
                    ),
                ),
                tool_calls=calls,
            )


def _tool_call_delta(raw: dict[str, Any]) -> t.ToolCallDelta:
    function = raw.get("function") or {}
    return t.ToolCallDelta(
        index=int(raw.get("index", 0)),
        id=str(raw.get("id") or ""),
        name=str(function.get("name") or ""),
        arguments=str(function.get("arguments") or ""),
    )
