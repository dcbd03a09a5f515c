"""The shared breaker and the shared rate limits, on real storage, with several 'hosts'."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

from core.storage import PROVIDER_HEALTH, Storage
from providers.health import BreakerConfig, BreakerState, HealthBoard
from providers.rate_limits import RateLimiter, parse_rates


class FakeTime:
    """One clock for every host; sleeping moves it (no real waiting)."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def opened_by(storage, config: BreakerConfig, clock: FakeTime, provider: str, owner: str = "a"
              ) -> HealthBoard:
    """A host whose one failed send has opened ``provider``'s breaker (``min_requests=1``)."""
    board = HealthBoard(storage, config, owner, clock)
    board.record(board.permit(provider), ok=False)
    board.sync(provider)
    return board


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
    board = opened_by(storage, config, clock, "acs")
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


def test_an_operators_reset_drops_counts_a_host_had_not_merged_yet(storage):
    clock = FakeTime()
    config = BreakerConfig(min_requests=4, failure_ratio=0.5, sync_seconds=1)
    board = HealthBoard(storage, config, "a", clock)
    board.record(board.permit("sendgrid"), ok=True)
    board.sync("sendgrid")  # the host has read (and written) the row
    for _ in range(4):
        board.record(board.permit("sendgrid"), ok=False)  # not merged yet: the clock has not moved
    storage.table(PROVIDER_HEALTH).delete("sendgrid", "health")  # an operator resets the provider
    clock.sleep(1)

    assert board.permit("sendgrid") is not None
    assert board.state("sendgrid") == BreakerState.CLOSED
    assert list(storage.table(PROVIDER_HEALTH).partition("sendgrid")) == []


def test_a_breaker_another_host_closed_gives_a_plain_permit_not_a_refusal(storage):
    clock = FakeTime()
    config = BreakerConfig(min_requests=1, cooldown_seconds=5, sync_seconds=100)
    a, b = opened_by(storage, config, clock, "sendgrid"), HealthBoard(storage, config, "b", clock)
    b.sync("sendgrid")  # b reads the breaker open; its view stays fresh for 100 s
    clock.sleep(5)
    probe = a.permit("sendgrid")
    a.record(probe, ok=True)  # a's probe closes the breaker

    permit = b.permit("sendgrid")  # b's view: open, cool-down over; its claim finds the row closed

    assert permit is not None and not permit.probe
    assert b.state("sendgrid") == BreakerState.CLOSED


class GatedFirstRead:
    """``Storage`` whose first ``ProviderHealth`` read after ``arm()`` waits for the gate."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.entered, self.gate = threading.Event(), threading.Event()
        self._first = False

    def arm(self) -> None:
        self._first = True

    def table(self, name: str):
        table, outer = self.storage.table(name), self

        class Gated:
            def get(self, partition: str, row: str):
                if outer._first:
                    outer._first = False
                    outer.entered.set()
                    outer.gate.wait(30)
                return table.get(partition, row)

            def __getattr__(self, attr: str):
                return getattr(table, attr)

        return Gated()


def test_a_thread_on_a_stale_view_waits_for_the_sync_under_way_instead_of_using_it(storage):
    clock = FakeTime()
    config = BreakerConfig(min_requests=1, cooldown_seconds=60, sync_seconds=1)
    opened_by(storage, config, clock, "sendgrid")
    gated = GatedFirstRead(storage)
    board = HealthBoard(gated, config, "b", clock)  # type: ignore[arg-type]
    board.sync("sendgrid")  # b has seen the breaker open
    storage.table(PROVIDER_HEALTH).delete("sendgrid", "health")  # an operator resets it
    clock.sleep(2)  # b's view is stale now
    gated.arm()

    with ThreadPoolExecutor(2) as pool:
        syncing = pool.submit(board.sync, "sendgrid")  # one thread's sync, held inside its read
        assert gated.entered.wait(30)
        deciding = pool.submit(board.permit, "sendgrid")  # another thread must decide now
        try:
            early = deciding.result(timeout=0.5)
        except FutureTimeout:
            early = "waiting"
        gated.gate.set()
        syncing.result(timeout=30)
        permit = deciding.result(timeout=30)

    assert early == "waiting"
    assert permit is not None and not permit.probe
