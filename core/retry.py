"""The one retry policy: exponential backoff with jitter, honouring ``Retry-After``.

Retries are bounded twice: by attempts and by a time budget, so a task never sleeps
through its lease. What the budget cannot cover is the caller's to re-queue (DESIGN §5):
``requeue_after`` says how long the re-queued message stays invisible, and the attempt
count carries over (``Attempts(count=attempts made before)``), so ``max_attempts`` bounds
a recipient across re-queues, not per run.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from core.errors import DomainDeferred, Throttled, TransientSendError, WarmupDeferred

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


    def requeue_after(self, attempt: int, retry_after: float | None = None) -> int:
        """Whole seconds a re-queued message waits before attempt ``attempt + 1`` (≥ 1)."""
        return max(1, math.ceil(self.delay(attempt, retry_after)))

    def exhausted(self, attempts: int) -> bool:
        return attempts >= self.max_attempts


@dataclass
class Attempts:
    """How a call went: the attempts it took (for the delivery log), counting earlier runs."""

    count: int = 0
    next_delay: float | None = None  # what the policy would have waited next, had time allowed


def call_with_retries(
    call: Callable[[], T],
    policy: RetryPolicy,
    attempts: Attempts,
    sleep: Callable[[float], None] = time.sleep,
    monotonic: Callable[[], float] = time.monotonic,
    deadline: float | None = None,
) -> T:
    """Run ``call``, retrying ``TransientSendError`` within the policy's bounds.

    ``deadline`` (a ``monotonic`` instant) bounds the whole task's retrying, not just this
    call. Raises the last ``TransientSendError`` when attempts or time run out (then
    ``attempts.next_delay`` says how long to wait before trying again); every other
    exception passes through at once. ``Throttled`` (a 429, or ``ProviderHeld``: the
    provider asked everyone to wait) waits its ``Retry-After`` (else the backoff step)
    without spending an attempt, since nothing was sent.
    """
    started = monotonic()
    throttles = 0
    limit = started + policy.budget_seconds
    if deadline is not None:
        limit = min(limit, deadline)
    while True:
        try:
            result = call()
        except (DomainDeferred, WarmupDeferred):
            raise  # re-queued by the caller: a thread waiting here would stall the other domains
        except Throttled as err:
            throttles += 1
            hint = err.retry_after if err.retry_after is not None else policy.delay(throttles)
            wait = max(hint, 0.01)
            if monotonic() + wait > limit:
                attempts.next_delay = wait
                raise
            sleep(wait)
            continue
        except TransientSendError as err:
            attempts.count += 1
            wait = policy.delay(attempts.count, err.retry_after)
            attempts.next_delay = wait
            if attempts.count >= policy.max_attempts or monotonic() + wait > limit:
                raise
            sleep(wait)
            continue
        except BaseException:
            attempts.count += 1
            raise
        attempts.count += 1
        return result
