"""Send-rate limits (token buckets) per provider and per tenant that hold across hosts.

How they hold approximately across hosts without a storage write per email: the budget
of each scope (``provider:sendgrid``, ``tenant:<id>``) is handed out in one-second
windows from one row of the ``RateLimits`` table (PartitionKey the scope, RowKey
``window``: ``window`` = the epoch second, ``taken`` = tokens leased in it). A host that
runs out of local tokens leases a block of about a tenth of the rate with an ETag-guarded
update; when the window's budget is gone it waits for the next second. So all hosts
together take at most ``rate`` tokens per second, and a host may spend its last block a
little after its window ended: the error is at most one block per host, and the cost is
one storage round trip per block (≈10 per second per busy scope), not one per email.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from core.errors import Conflict, StorageError
from core.models import RateLimitWindow
from core.storage import RATE_LIMITS, Entity, Storage


@dataclass
class _Bucket:
    window: int = -1
    tokens: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class RateLimiter:
    """Blocks callers until their scope has a token; thread-safe, one per host process."""

    def __init__(
        self,
        storage: Storage,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.storage = storage
        self.clock = clock
        self.sleep = sleep
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def acquire(self, scope: str, per_second: float | None) -> float:
        """Take one token of ``scope`` (no limit when ``per_second`` is falsy); returns the wait."""
        waited = self._take(scope, per_second, None)
        return waited or 0.0

    def try_acquire(self, scope: str, per_second: float | None, max_wait: float) -> bool:
        """Take a token if one comes within ``max_wait`` seconds; ``False``: none so soon (nothing taken).

        For callers that must not hold a thread for long (per-domain pacing defers instead).
        """
        return self._take(scope, per_second, max_wait) is not None

    def _take(self, scope: str, per_second: float | None, max_wait: float | None) -> float | None:
        if not per_second or per_second <= 0:
            return 0.0
        bucket = self._bucket(scope)
        waited = 0.0
        with bucket.lock:
            while True:
                now = self.clock()
                window = int(now)
                if bucket.window == window and bucket.tokens > 0:
                    bucket.tokens -= 1
                    return waited
                leased = self._lease(scope, window, per_second)
                if leased:
                    bucket.window, bucket.tokens = window, leased - 1
                    return waited
                pause = max(0.001, window + 1 - now)
                if max_wait is not None and waited + pause > max_wait:
                    return None
                self.sleep(pause)
                waited += pause

    def _lease(self, scope: str, window: int, per_second: float) -> int:
        """Lease a block of tokens in ``window`` from the shared row; 0 when it is spent."""
        budget = max(1, int(per_second))
        block = max(1, math.ceil(budget / 10))
        grant = 0

        def take(row: Entity | None) -> Entity | None:
            nonlocal grant
            taken = 0
            if row is not None and int(row.get("window", -1)) == window:
                taken = int(row.get("taken", 0))
            grant = min(block, budget - taken)
            if grant <= 0:
                return None
            leased = RateLimitWindow(scope, window=window, taken=taken + grant, rate_per_second=per_second)
            return leased.to_entity()

        try:
            written = self.storage.table(RATE_LIMITS).modify(*RateLimitWindow.key(scope), take, tries=10)
        except Conflict:
            return 0  # the row kept changing: wait for the next window like a spent one
        except StorageError:
            return 1  # storage trouble must not stop sending: fall back to local pacing
        return grant if written is not None else 0

    def _bucket(self, scope: str) -> _Bucket:
        with self._lock:
            bucket = self._buckets.get(scope)
            if bucket is None:
                bucket = self._buckets[scope] = _Bucket()
            return bucket


def parse_rates(text: str) -> dict[str, float]:
    """``'sendgrid=100, acs=20'`` → ``{'sendgrid': 100.0, 'acs': 20.0}`` (PROVIDER_RATE_LIMITS)."""
    rates: dict[str, float] = {}
    for part in text.split(","):
        name, _, value = part.partition("=")
        if name.strip() and value.strip():
            rates[name.strip()] = float(value)
    return rates
