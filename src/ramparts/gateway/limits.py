"""Per-key rate limits: one token bucket per key, in memory (a restart refills every bucket).

A request costs one token whatever its batch size (the rows a key may send in total are its budget, which
is persisted); a bucket holds at most `burst` tokens and refills at `rate_per_s`. A refused request learns
how long to wait (`Retry-After`), so a well-behaved client such as `HttpOracle` slows down instead of failing.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Bucket:
    rate: float
    burst: int
    tokens: float
    updated: float


class RateLimiter:
    """Token buckets by key id; `clock` is injectable for tests."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[int, _Bucket] = {}
        self._lock = threading.Lock()

    def take(self, key_id: int, rate: float, burst: int) -> float:
        """Take one token; returns 0.0 when granted, else the seconds until a token will be there."""
        now = self._clock()
        with self._lock:
            bucket = self._buckets.get(key_id)
            if bucket is None or bucket.rate != rate or bucket.burst != burst:
                bucket = _Bucket(rate, burst, float(burst), now)
                self._buckets[key_id] = bucket
            bucket.tokens = min(float(burst), bucket.tokens + (now - bucket.updated) * rate)
            bucket.updated = now
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return 0.0
            return (1.0 - bucket.tokens) / rate


def retry_after_header(wait_s: float) -> str:
    """`Retry-After` in whole seconds (the HTTP form), rounded up and at least 1."""
    return str(max(1, math.ceil(wait_s)))


__all__ = ["RateLimiter", "retry_after_header"]
