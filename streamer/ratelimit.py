"""Staying inside an instance's REST rate limit, as its `X-RateLimit-*` headers describe it (pure)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping

from fedilake.contracts import parse_time

# Mastodon's default for an authenticated user: 300 requests per 5 minutes.
DEFAULT_LIMIT = 300
DEFAULT_WINDOW_S = 300.0


class RateLimit:
    """What the instance last said about our budget; shared by every REST caller of one instance.

    `reserve` keeps part of the budget for more important callers: gap backfill asks
    with no reserve, engagement refresh leaves a share of the limit untouched.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self.limit = DEFAULT_LIMIT
        self.remaining = DEFAULT_LIMIT
        self.reset_at = 0.0  # epoch seconds

    def observe(self, headers: Mapping[str, str], status: int = 200) -> None:
        with self._lock:
            try:
                if "X-RateLimit-Limit" in headers:
                    self.limit = int(headers["X-RateLimit-Limit"])
                if "X-RateLimit-Remaining" in headers:
                    self.remaining = int(headers["X-RateLimit-Remaining"])
                if "X-RateLimit-Reset" in headers:
                    self.reset_at = _epoch(headers["X-RateLimit-Reset"])
            except ValueError:
                pass  # a server with odd headers is paced by 429s alone
            if status == 429:
                self.remaining = 0
                if self.reset_at <= self._clock():
                    self.reset_at = self._clock() + DEFAULT_WINDOW_S

    def wait_s(self, reserve: int = 0) -> float:
        """Seconds to wait before the next request may go (0: go now); takes it if so."""
        with self._lock:
            now = self._clock()
            if self.reset_at and now >= self.reset_at:
                self.remaining = self.limit  # a new window
                self.reset_at = 0.0
            if self.remaining > reserve:
                self.remaining -= 1
                return 0.0
            return max(self.reset_at - now, 1.0)


def _epoch(text: str) -> float:
    try:
        return parse_time(text).timestamp()
    except ValueError:
        return float(text)  # some servers send epoch seconds
