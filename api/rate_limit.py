"""Per-key API rate limit: a token bucket per key id, per host process (API.md: 429).

A key may burst up to ``API_RATE_LIMIT_PER_MINUTE`` requests and then keeps that rate; past
it the answer is 429 with ``Retry-After`` (whole seconds until a request would pass). The
buckets live in the process, like the key cache: cheap (no storage round trip per request)
and enough to stop one client's loop from eating a host. With N hosts a key gets at most N
times the rate; the tenant's *send* rate is a separate, storage-backed limit.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

MAX_TRACKED_KEYS = 10_000


class KeyRateLimiter:
    """Token buckets keyed by API key id; ``per_minute == 0`` allows everything."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}  # key id -> (tokens, at)

    def retry_after(self, key_id: str) -> int:
        """Take one request's token; 0 when allowed, else the seconds to wait before retrying."""
        if self.per_minute <= 0:
            return 0
        capacity = float(self.per_minute)
        per_second = capacity / 60.0
        now = self._clock()
        with self._lock:
            tokens, at = self._buckets.get(key_id, (capacity, now))
            tokens = min(capacity, tokens + (now - at) * per_second)
            if tokens >= 1.0:
                if len(self._buckets) >= MAX_TRACKED_KEYS and key_id not in self._buckets:
                    self._buckets.clear()  # forget idle keys rather than grow without bound
                self._buckets[key_id] = (tokens - 1.0, now)
                return 0
            self._buckets[key_id] = (tokens, now)
        return max(1, math.ceil((1.0 - tokens) / per_second))
