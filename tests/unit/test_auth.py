"""The API-key policy: which calls pass, which are refused, with which status."""

from __future__ import annotations

import grpc
import pytest

from adapter.grpc_front.auth import ApiKeyPolicy, presented_key

CHAT = "/inference.v1.InferenceService/ChatStream"
CLEAR = "/inference.v1.InferenceService/ClearMemory"
VRAM = "/inference.v1.InferenceService/ManageVRAM"
HEALTH = "/grpc.health.v1.Health/Check"
REFLECTION = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        ([("x-api-key", "k1")], "k1"),
        ([("authorization", "Bearer k2")], "k2"),
        ([("authorization", "bearer   k3 ")], "k3"),
        ([("authorization", "Basic dXNlcg==")], None),
        ([("authorization", "Bearer ")], None),
        ([("x-api-key", b"k4")], "k4"),
        ([("other", "x")], None),
        (None, None),
        ([("authorization", "Bearer b"), ("x-api-key", "x")], "x"),  # x-api-key wins
    ],
)
def test_the_key_is_read_from_either_header(metadata: list[tuple[str, str | bytes]] | None, expected: str) -> None:
    assert presented_key(metadata) == expected


def _code(policy: ApiKeyPolicy, method: str, key: str | None, header: str = "x-api-key") -> grpc.StatusCode:
    value = key if header == "x-api-key" or key is None else f"Bearer {key}"
    decision = policy.check(method, [] if key is None else [(header, value)])
    return grpc.StatusCode.OK if decision is None else decision.code


@pytest.mark.parametrize(
    ("method", "key", "expected"),
    [
        (CHAT, None, grpc.StatusCode.UNAUTHENTICATED),
        (CHAT, "wrong", grpc.StatusCode.UNAUTHENTICATED),
        (CHAT, "user-key", grpc.StatusCode.OK),
        (CHAT, "admin-key", grpc.StatusCode.OK),
        (CLEAR, "user-key", grpc.StatusCode.PERMISSION_DENIED),
        (VRAM, "user-key", grpc.StatusCode.PERMISSION_DENIED),
        (CLEAR, "admin-key", grpc.StatusCode.OK),
        (VRAM, None, grpc.StatusCode.UNAUTHENTICATED),
        (VRAM, "wrong", grpc.StatusCode.UNAUTHENTICATED),
        (HEALTH, None, grpc.StatusCode.OK),
        (REFLECTION, None, grpc.StatusCode.UNAUTHENTICATED),
    ],
)
@pytest.mark.parametrize("header", ["x-api-key", "authorization"])
def test_user_and_admin_keys(method: str, key: str | None, expected: grpc.StatusCode, header: str) -> None:
    policy = ApiKeyPolicy("user-key", "admin-key", require_api_key=True)
    assert _code(policy, method, key, header) == expected


def test_an_admin_key_alone_guards_only_the_admin_rpcs() -> None:
    policy = ApiKeyPolicy("", "admin-key", require_api_key=False)
    assert policy.enabled
    assert _code(policy, CHAT, None) == grpc.StatusCode.OK
    assert _code(policy, CLEAR, None) == grpc.StatusCode.UNAUTHENTICATED
    assert _code(policy, CLEAR, "admin-key") == grpc.StatusCode.OK


def test_without_keys_everything_is_open() -> None:
    policy = ApiKeyPolicy("", "", require_api_key=False)
    assert not policy.enabled
    assert _code(policy, CLEAR, None) == grpc.StatusCode.OK


def test_without_an_admin_key_the_user_key_may_manage_memory() -> None:
    policy = ApiKeyPolicy("user-key", "", require_api_key=True)
    assert _code(policy, CLEAR, "user-key") == grpc.StatusCode.OK
    assert _code(policy, CLEAR, "") == grpc.StatusCode.UNAUTHENTICATED  # an empty key matches nothing


def test_messages_never_echo_a_key() -> None:
    policy = ApiKeyPolicy("user-key", "admin-key", require_api_key=True)
    for method, key in ((CHAT, "secret-guess"), (CLEAR, "user-key")):
        decision = policy.check(method, [("x-api-key", key)])
        assert decision is not None and key not in decision.message and "admin-key" not in decision.message
