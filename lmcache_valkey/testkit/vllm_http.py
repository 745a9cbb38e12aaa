"""Talking to a vLLM OpenAI-compatible server on loopback."""

from __future__ import annotations

import json
import urllib.request
from typing import Any


def post_completions(port: int, body: dict[str, Any], timeout: float) -> Any:
    """POST `body` to ``/v1/completions`` of the server on 127.0.0.1:`port`:
    the open response (a context manager; iterate it for a stream)."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions",
                                 data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    return urllib.request.urlopen(req, timeout=timeout)
