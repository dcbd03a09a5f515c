"""The shared breaker and the shared rate limits, on real storage, with several 'hosts'."""

from __future__ import annotations

from core.health import BreakerConfig, BreakerState, HealthBoard
from core.ratelimit import RateLimiter, parse_rates
from core.storage import PROVIDER_HEALTH


class FakeTime:
    """One clock for every host; sleeping moves it (no real waiting)."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_failures_counted_on_two_hosts_open_the_breaker_for_both(storage):
    clock = FakeTime()
    config = BreakerConfig(min_requests=6, failure_ratio=0.5, sync_seconds=1)
    a, b = HealthBoard(storage, config, "a", clock), HealthBoard(storage, config, "b", clock)
    for board in (a, b):
        for _ in range(3):
            board.record(board.permit("sendgrid"), ok=False)
    a.sync("sendgrid")
    b.sync("sendgrid")
    clock.sleep(1)

    assert a.permit("sendgrid") is None and b.permit("sendgrid") is None
    row = storage.table(PROVIDER_HEALTH).get("sendgrid", "health")
    assert row["state"] == BreakerState.OPEN and row["until"]


def test_a_failed_probe_reopens_the_breaker_and_a_good_one_closes_it(storage):
    clock = FakeTime()
    config = BreakerConfig(min_requests=1, cooldown_seconds=5, sync_seconds=0.5)
    board = HealthBoard(storage, config, "a", clock)
    board.record(board.permit("acs"), ok=False)
    board.sync("acs")
    clock.sleep(5)

    probe = board.permit("acs")
    assert probe is not None and probe.probe
    board.record(probe, ok=False)
    assert board.permit("acs") is None
    clock.sleep(5)
    probe = board.permit("acs")
    board.record(probe, ok=True)

    assert board.state("acs") == BreakerState.CLOSED
    assert board.permit("acs") is not None


def test_two_hosts_together_stay_within_one_providers_rate(storage):
    clock = FakeTime()
    hosts = [RateLimiter(storage, clock, clock.sleep) for _ in range(2)]
    start = clock.now
    taken = 0
    while clock.now < start + 3:
        for host in hosts:
            host.acquire("provider:sendgrid", 20)
            taken += 1
    assert taken <= 20 * 3 + 2 * 2  # the rate, give or take one block per host


def test_no_rate_means_no_waiting(storage):
    clock = FakeTime()
    limiter = RateLimiter(storage, clock, clock.sleep)
    assert all(limiter.acquire("tenant:t", None) == 0.0 for _ in range(100))
    assert clock.now == 1_000_000.0


def test_rates_setting_parses_per_provider():
    assert parse_rates("sendgrid=100, acs=20") == {"sendgrid": 100.0, "acs": 20.0}
    assert parse_rates("") == {}
