"""API-key authentication for every RPC (unary and streaming alike), as a server interceptor.

A key comes as `x-api-key` metadata or `authorization: Bearer <key>`. Keys are compared in
constant time, never logged. Health checks stay open (load balancers and probes carry no key).
With an admin key configured, ManageVRAM and ClearMemory need it: the ordinary key gets
PERMISSION_DENIED there.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc

from adapter.gen.inference.v1 import inference_pb2 as pb

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


def _matches(presented: str, expected: str) -> bool:
    # Digests first: equal lengths, so the comparison's time says nothing about the key's length.
    if not expected:
        return False
    return hmac.compare_digest(hashlib.sha256(presented.encode()).digest(), hashlib.sha256(expected.encode()).digest())


class Decision:
    """Why a call is refused (a status and a message), or None to let it through."""

    __slots__ = ("code", "message")

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        self.code, self.message = code, message


class ApiKeyPolicy:
    """Pure decision: may this method be called with this metadata?"""

    def __init__(self, api_key: str, admin_key: str, require_api_key: bool) -> None:
        self._api_key = api_key
        self._admin_key = admin_key
        self._require = require_api_key

    @property
    def enabled(self) -> bool:
        return self._require or bool(self._admin_key)

    def check(self, method: str, metadata: Sequence[tuple[str, str | bytes]] | None) -> Decision | None:
        if method.startswith(OPEN_PREFIXES):
            return None
        admin_only = method in ADMIN_METHODS and bool(self._admin_key)
        if not admin_only and not self._require:
            return None
        key = presented_key(metadata)
        if key is None:
            return Decision(
                grpc.StatusCode.UNAUTHENTICATED,
                "this server requires an API key: send it as `x-api-key` metadata or `authorization: Bearer <key>`",
            )
        # Both comparisons always run: timing says nothing about which key was close.
        is_admin = _matches(key, self._admin_key)
        is_user = _matches(key, self._api_key)
        if admin_only:
            if is_admin:
                return None
            if is_user:
                return Decision(
                    grpc.StatusCode.PERMISSION_DENIED, f"{method.rsplit('/', 1)[1]} needs the admin API key"
                )
            return Decision(grpc.StatusCode.UNAUTHENTICATED, "the API key is not valid")
        if is_user or is_admin:
            return None
        return Decision(grpc.StatusCode.UNAUTHENTICATED, "the API key is not valid")


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
