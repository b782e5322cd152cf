"""Who may call what: the API keys, shared by every front (each reads the key its own way).

With an admin key configured, the memory controls (ManageVRAM, ClearMemory, and their HTTP
equivalents) need it; the ordinary key gets PERMISSION_DENIED there. Keys are compared in constant
time and never logged.
"""

from __future__ import annotations

import hashlib
import hmac

from adapter.core.errors import AdapterError, PermissionDenied, Unauthenticated


def _matches(presented: str, expected: str) -> bool:
    # Digests first: equal lengths, so the comparison's time says nothing about the key's length.
    if not expected:
        return False
    return hmac.compare_digest(hashlib.sha256(presented.encode()).digest(), hashlib.sha256(expected.encode()).digest())


class ApiKeys:
    """Pure decision: may a call to `operation` go ahead with this key?"""

    def __init__(self, api_key: str, admin_key: str, require_api_key: bool) -> None:
        self._api_key = api_key
        self._admin_key = admin_key
        self._require = require_api_key

    @property
    def enabled(self) -> bool:
        return self._require or bool(self._admin_key)

    def check(self, operation: str, admin_operation: bool, key: str | None, how_to_send: str) -> AdapterError | None:
        """None to let the call through; otherwise the error to answer with. `how_to_send` tells a
        client without a key where its front reads one."""
        admin_only = admin_operation and bool(self._admin_key)
        if not admin_only and not self._require:
            return None
        if key is None:
            return Unauthenticated(f"this server requires an API key: send it as {how_to_send}")
        # Both comparisons always run: timing says nothing about which key was close.
        is_admin = _matches(key, self._admin_key)
        is_user = _matches(key, self._api_key)
        if admin_only:
            if is_admin:
                return None
            if is_user:
                return PermissionDenied(f"{operation} needs the admin API key")
            return Unauthenticated("the API key is not valid")
        if is_user or is_admin:
            return None
        return Unauthenticated("the API key is not valid")
