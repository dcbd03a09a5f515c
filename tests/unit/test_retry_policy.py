"""The one retry policy: backoff with jitter, Retry-After as a floor, bounded twice."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.errors import RecipientRejected, TransientSendError
from core.retry import Attempts, RetryPolicy, call_with_retries


@given(attempt=st.integers(1, 30), r=st.floats(0, 1))
def test_delay_stays_between_half_a_step_and_a_full_step(attempt, r):
    policy = RetryPolicy(base_delay=0.5, max_delay=10)
    step = min(10, 0.5 * 2 ** (attempt - 1))
    assert step / 2 <= policy.delay(attempt, rng=lambda: r) <= step


def test_retry_after_is_a_floor_for_the_delay():
    assert RetryPolicy(base_delay=0.1).delay(1, retry_after=7, rng=lambda: 0.0) == 7


def _flaky(failures: int, retry_after: float | None = None):
    calls = {"n": 0}

    def call():
        calls["n"] += 1
        if calls["n"] <= failures:
            raise TransientSendError("busy", retry_after=retry_after)
        return "ok"

    return call, calls


def test_transient_errors_are_retried_until_success():
    call, calls = _flaky(2)
    slept: list[float] = []
    attempts = Attempts()
    assert call_with_retries(call, RetryPolicy(max_attempts=5), attempts, sleep=slept.append) == "ok"
    assert attempts.count == 3 and len(slept) == 2


def test_the_last_transient_error_is_raised_after_max_attempts():
    call, calls = _flaky(10)
    with pytest.raises(TransientSendError):
        call_with_retries(call, RetryPolicy(max_attempts=3), Attempts(), sleep=lambda s: None)
    assert calls["n"] == 3


def test_a_wait_past_the_time_budget_is_not_taken():
    call, calls = _flaky(10, retry_after=60)
    slept: list[float] = []
    with pytest.raises(TransientSendError):
        call_with_retries(call, RetryPolicy(budget_seconds=30), Attempts(), sleep=slept.append)
    assert slept == [] and calls["n"] == 1


def test_permanent_errors_are_not_retried():
    calls = {"n": 0}

    def call():
        calls["n"] += 1
        raise RecipientRejected("no such mailbox")

    with pytest.raises(RecipientRejected):
        call_with_retries(call, RetryPolicy(), Attempts(), sleep=lambda s: None)
    assert calls["n"] == 1
