"""Per-key rate limits: a token bucket per (route group, key id), in each replica.

A bucket holds ``burst_s`` seconds' worth of requests and refills at ``per_minute / 60`` a second;
an empty bucket answers how long until the next request is allowed (the 429's ``Retry-After``).
With several replicas each keeps its own buckets, so a key gets at most ``replicas x`` the limit.
"""

from __future__ import annotations

import math
import threading
import time


class RateLimiter:
    """Args: per_minute: sustained requests a minute per key (0: no limit); burst_s: bucket size in
    seconds of that rate (at least one request)."""

    def __init__(self, per_minute: float, burst_s: float = 10.0) -> None:
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate * burst_s)
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, last refill time)
        self._lock = threading.Lock()

    def take(self, key: str) -> int:
        """Take one request for ``key``: 0 when allowed, else the whole seconds to wait."""
        if self.rate <= 0:
            return 0
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(key, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - last) * self.rate)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                return 0
            self._buckets[key] = (tokens, now)
            if len(self._buckets) > 100_000:  # idle buckets are full again: forgetting them is exact
                full_after = self.capacity / self.rate
                self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < full_after}
        return max(1, math.ceil((1.0 - tokens) / self.rate))
