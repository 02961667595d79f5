"""Alerts: POST a validation result to a webhook. A failing webhook is reported, never raised:
the validation itself succeeded and its files and exit code must still come out. A malformed URL
is refused up front by `check_webhook_url` (the commands call it before any work)."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from segue.errors import ConfigError


def check_webhook_url(url: str, option: str = "--webhook") -> None:
    """A ConfigError naming `option` unless `url` is http(s)://HOST[...]."""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError for a port that is not a number)
    except ValueError as e:
        raise ConfigError(f"{option} {url!r}: not a URL ({e}); expected http://HOST[:PORT]/PATH or https://...") from e
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{option} {url!r}: not a URL; expected http://HOST[:PORT]/PATH or https://...")


def post_webhook(url: str, payload: dict[str, Any], *, timeout: float = 10.0) -> dict[str, Any]:
    """POST `payload` as JSON to `url`; returns {url, ok, status, error}. Never raises for the URL or
    the network (a malformed URL too is an error in the answer): the caller's work is done."""
    data = json.dumps(payload).encode("utf-8")
    try:
        request = urllib.request.Request(
            url, data=data, method="POST", headers={"Content-Type": "application/json", "User-Agent": "segue-validate"}
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status = response.status
    except urllib.error.HTTPError as e:
        return {"url": url, "ok": False, "status": e.code, "error": f"HTTP {e.code} {e.reason}"}
    except Exception as e:  # noqa: BLE001 (URLError, OSError, ValueError, http.client errors: reported, never raised)
        reason = getattr(e, "reason", None) or e
        return {"url": url, "ok": False, "status": None, "error": str(reason) or type(e).__name__}
    return {"url": url, "ok": 200 <= status < 300, "status": status, "error": None}
