"""Alerts: POST a validation result to a webhook. A failing webhook is reported, never raised:
the validation itself succeeded and its files and exit code must still come out."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any


def post_webhook(url: str, payload: dict[str, Any], *, timeout: float = 10.0) -> dict[str, Any]:
    """POST `payload` as JSON to `url`; returns {url, ok, status, error}."""
    data = json.dumps(payload).encode("utf-8")
    request = urllib.request.Request(
        url, data=data, method="POST", headers={"Content-Type": "application/json", "User-Agent": "segue-validate"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status = response.status
    except urllib.error.HTTPError as e:
        return {"url": url, "ok": False, "status": e.code, "error": f"HTTP {e.code} {e.reason}"}
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        return {"url": url, "ok": False, "status": None, "error": str(reason)}
    return {"url": url, "ok": 200 <= status < 300, "status": status, "error": None}
