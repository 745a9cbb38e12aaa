"""Warnings that cannot flood a serving engine's log.

A dead Valkey makes every lookup, load and store fail; the integrations
(LMCache adapters, the vLLM connector) report that through one of these, so a
server that keeps serving cold prints one line per topic per interval, and the
next line says how many were held back.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Any

DEFAULT_INTERVAL_S = 10.0


class RateLimitedLog:
    """At most one record per topic every ``interval_s``; counts the rest."""

    def __init__(self, logger: logging.Logger, interval_s: float = DEFAULT_INTERVAL_S) -> None:
        self._logger = logger
        self._interval = interval_s
        self._lock = threading.Lock()
        self._state: dict[str, tuple[float, int]] = {}

    def warning(self, topic: str, msg: str, *args: Any) -> None:
        now = time.monotonic()
        with self._lock:
            last, suppressed = self._state.get(topic, (-math.inf, 0))
            if now - last < self._interval:
                self._state[topic] = (last, suppressed + 1)
                return
            self._state[topic] = (now, 0)
        if suppressed:
            msg += " (%d similar messages suppressed)"
            args = (*args, suppressed)
        self._logger.warning(msg, *args)
