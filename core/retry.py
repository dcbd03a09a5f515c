"""The one retry policy: exponential backoff with jitter, honouring ``Retry-After``.

Retries are bounded twice: by attempts and by a time budget, so a task never sleeps
through its lease. What the budget cannot cover is the caller's to re-queue (DESIGN §5).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from core.errors import TransientSendError

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 5
    base_delay: float = 0.25
    max_delay: float = 20.0
    budget_seconds: float = 30.0

    def delay(
        self, attempt: int, retry_after: float | None = None, rng: Callable[[], float] = random.random
    ) -> float:
        """Seconds to wait before attempt ``attempt + 1`` (``attempt`` counts from 1).

        "Equal jitter": half the exponential step is fixed, half random, so hosts that
        failed together do not retry together. A provider's ``Retry-After`` is a floor.
        """
        step = min(self.max_delay, self.base_delay * (2 ** (attempt - 1)))
        wait = step / 2 + rng() * step / 2
        if retry_after is not None:
            wait = max(wait, float(retry_after))
        return wait


@dataclass
class Attempts:
    """How a call went: the attempts it took (for the delivery log)."""

    count: int = 0


def call_with_retries(
    call: Callable[[], T],
    policy: RetryPolicy,
    attempts: Attempts,
    sleep: Callable[[float], None] = time.sleep,
    monotonic: Callable[[], float] = time.monotonic,
) -> T:
    """Run ``call``, retrying ``TransientSendError`` within the policy's bounds.

    Raises the last ``TransientSendError`` when attempts or budget run out; every other
    exception passes through at once.
    """
    started = monotonic()
    while True:
        attempts.count += 1
        try:
            return call()
        except TransientSendError as err:
            if attempts.count >= policy.max_attempts:
                raise
            wait = policy.delay(attempts.count, err.retry_after)
            if monotonic() - started + wait > policy.budget_seconds:
                raise
            sleep(wait)
