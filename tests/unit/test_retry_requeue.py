"""The one retry policy's bounds across re-queues (DESIGN §5)."""

from __future__ import annotations

import pytest

from core.errors import ProviderHeld, Throttled, TransientSendError
from core.retry import Attempts, RetryPolicy, call_with_retries


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def monotonic(self) -> float:
        return self.now


def failing(times: int, error: Exception):
    left = [times]

    def call() -> str:
        if left[0] > 0:
            left[0] -= 1
            raise error
        return "ok"

    return call


def test_attempts_from_earlier_runs_count_towards_the_maximum():
    clock = Clock()
    attempts = Attempts(count=4)
    with pytest.raises(TransientSendError):
        call_with_retries(failing(5, TransientSendError("503")), RetryPolicy(max_attempts=5), attempts,
                          clock.sleep, clock.monotonic)
    assert attempts.count == 5


def test_a_task_deadline_stops_retrying_before_the_policys_own_budget():
    clock = Clock()
    attempts = Attempts()
    with pytest.raises(TransientSendError):
        call_with_retries(
            failing(9, TransientSendError("503", retry_after=2)), RetryPolicy(budget_seconds=60), attempts,
            clock.sleep, clock.monotonic, deadline=3.0,
        )
    assert attempts.count == 2 and clock.now <= 3.0
    assert attempts.next_delay is not None and attempts.next_delay >= 2


def test_waiting_for_a_held_provider_spends_no_attempt():
    clock = Clock()
    attempts = Attempts()
    result = call_with_retries(failing(3, ProviderHeld("held", retry_after=0.5)), RetryPolicy(max_attempts=1),
                               attempts, clock.sleep, clock.monotonic)
    assert result == "ok" and attempts.count == 1 and clock.now == pytest.approx(1.5)


def test_a_429_without_retry_after_backs_off_and_spends_no_attempt():
    clock = Clock()
    attempts = Attempts()
    policy = RetryPolicy(max_attempts=1, base_delay=0.5, budget_seconds=60)
    result = call_with_retries(failing(4, Throttled("429")), policy, attempts, clock.sleep, clock.monotonic)
    assert result == "ok" and attempts.count == 1
    assert clock.now >= 0.25 + 0.5 + 1 + 2  # half of each exponential step at least, never a hot loop


def test_the_requeue_delay_honours_retry_after_in_whole_seconds():
    policy = RetryPolicy(base_delay=0.1)
    assert policy.requeue_after(1, retry_after=7.2) == 8
    assert policy.requeue_after(1) == 1
