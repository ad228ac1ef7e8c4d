"""Per-key token buckets: each API key spends one token a request; its role sets the refill."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from micropay.api.settings import RateLimit
from micropay.errors import RateLimited


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated_s: float


class RateLimiter:
    """Token buckets keyed by API key id. ``check`` spends a token or raises RateLimited."""

    def __init__(self, clock_s: Callable[[], float] = time.monotonic) -> None:
        self._clock_s = clock_s
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def check(self, key_id: str, limit: RateLimit | None) -> None:
        """Spend one token of ``key_id``'s bucket; None means unlimited."""
        if limit is None:
            return
        now_s = self._clock_s()
        with self._lock:
            bucket = self._buckets.get(key_id)
            if bucket is None:
                bucket = self._buckets[key_id] = _Bucket(float(limit.burst), now_s)
            else:
                elapsed_s = max(now_s - bucket.updated_s, 0.0)
                bucket.tokens = min(float(limit.burst), bucket.tokens + elapsed_s * limit.requests_per_s)
                bucket.updated_s = now_s
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return
            wait_s = (1.0 - bucket.tokens) / limit.requests_per_s
        retry_after_s = max(1, math.ceil(wait_s))
        raise RateLimited(
            "rate_limited",
            f"Too many requests for this API key; retry after {retry_after_s} s.",
            headers={"Retry-After": str(retry_after_s)},
        )

    def forget(self, key_id: str) -> None:
        """Drop a key's bucket (after it is revoked)."""
        with self._lock:
            self._buckets.pop(key_id, None)
