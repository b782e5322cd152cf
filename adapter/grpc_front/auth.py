"""API-key authentication for every RPC (unary and streaming alike), as a server interceptor.

A key comes as `x-api-key` metadata or `authorization: Bearer <key>`; the decision is the core's
(adapter/core/access.py). Health checks stay open (load balancers and probes carry no key).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc

from adapter.core.access import ApiKeys
from adapter.gen.inference.v1 import inference_pb2 as pb
from adapter.grpc_front.status import grpc_code

_SERVICE = pb.DESCRIPTOR.services_by_name["InferenceService"].full_name
ADMIN_METHODS = frozenset(f"/{_SERVICE}/{name}" for name in ("ManageVRAM", "ClearMemory"))
OPEN_PREFIXES = ("/grpc.health.v1.Health/",)


def presented_key(metadata: Sequence[tuple[str, str | bytes]] | None) -> str | None:
    """The key a call carries: `x-api-key`, else `authorization: Bearer <key>`; None without one."""
    bearer = None
    for name, value in metadata or ():
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
        if name == "x-api-key":
            return text.strip()
        if name == "authorization":
            scheme, _, credentials = text.strip().partition(" ")
            if scheme.lower() == "bearer" and credentials.strip():
                bearer = credentials.strip()
    return bearer


class Decision:
    """Why a call is refused (a status and a message), or None to let it through."""

    __slots__ = ("code", "message")

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        self.code, self.message = code, message


class ApiKeyPolicy:
    """The API keys (adapter/core/access.py) over gRPC: method names and metadata."""

    def __init__(self, api_key: str, admin_key: str, require_api_key: bool) -> None:
        self._keys = ApiKeys(api_key, admin_key, require_api_key)

    @property
    def enabled(self) -> bool:
        return self._keys.enabled

    def check(self, method: str, metadata: Sequence[tuple[str, str | bytes]] | None) -> Decision | None:
        if method.startswith(OPEN_PREFIXES):
            return None
        refusal = self._keys.check(
            method.rsplit("/", 1)[-1],
            method in ADMIN_METHODS,
            presented_key(metadata),
            "`x-api-key` metadata or `authorization: Bearer <key>`",
        )
        return None if refusal is None else Decision(grpc_code(refusal.code), refusal.message)


def _refusing_handler(handler: grpc.RpcMethodHandler, decision: Decision) -> grpc.RpcMethodHandler:
    """A handler of the same kind as `handler` that ends the call with the decision's status."""

    async def refuse(_request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(decision.code, decision.message)

    if handler.request_streaming and handler.response_streaming:
        make: Callable[..., grpc.RpcMethodHandler] = grpc.stream_stream_rpc_method_handler
    elif handler.request_streaming:
        make = grpc.stream_unary_rpc_method_handler
    elif handler.response_streaming:
        make = grpc.unary_stream_rpc_method_handler
    else:
        make = grpc.unary_unary_rpc_method_handler
    return make(
        refuse,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


class ApiKeyInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, policy: ApiKeyPolicy) -> None:
        self._policy = policy

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler  # unknown method: gRPC answers UNIMPLEMENTED
        decision = self._policy.check(handler_call_details.method, handler_call_details.invocation_metadata)
        return handler if decision is None else _refusing_handler(handler, decision)
