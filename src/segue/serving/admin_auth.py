"""The admin key check shared by a server's /admin routes and the worker supervisor's admin port."""

from __future__ import annotations

import hmac


def admin_refusal(x_api_key: str | None, authorization: str | None, key: str) -> tuple[int, str] | None:
    """None when the request carries `key` (an X-API-Key header, or Authorization: Bearer KEY),
    else the (status, detail) to refuse it with: 401 without a key, 403 with a wrong one."""
    given = x_api_key or (authorization[7:] if authorization and authorization.lower().startswith("bearer ") else None)
    if not given:
        return 401, "admin API key required (X-API-Key header)"
    if not hmac.compare_digest(given.encode(), key.encode()):
        return 403, "wrong admin API key"
    return None
