"""The send-rate chart's buckets and marks (pure: no storage)."""

from __future__ import annotations

from api.routers.job_insights import MAX_POINTS, Outcome, chart

T0 = 1_700_000_040.0  # 12:34:00 UTC, a minute boundary


def sends(at: float, n: int, provider: str = "sendgrid") -> list[Outcome]:
    return [Outcome(at + i * 0.1, "sent", provider, None) for i in range(n)]


def test_empty_minutes_between_sends_are_points_of_zero_and_an_idle_mark():
    width, points, marks = chart(sends(T0, 3) + sends(T0 + 180, 2), 60, paused=False)
    assert width == 60 and [p.sent for p in points] == [3, 0, 0, 2]
    assert [(m.kind, m.at) for m in marks] == [("idle", points[1].at)]


def test_a_change_of_the_provider_taking_most_sends_is_a_failover_mark():
    _, points, marks = chart(sends(T0, 5) + sends(T0 + 60, 4, "acs") + sends(T0 + 60, 1), 60, paused=False)
    assert [(m.kind, m.detail, m.at) for m in marks] == [("failover", "sendgrid → acs", points[1].at)]


def test_throttled_recipients_are_counted_where_throttling_began_and_marked():
    held = [Outcome(T0 + 70, "other", "", T0 + 5)]
    _, points, marks = chart(sends(T0, 2) + held, 60, paused=False)
    assert [p.throttled for p in points] == [1, 0]
    assert [m.kind for m in marks] == ["throttled"]


def test_a_paused_job_is_marked_at_its_last_point():
    _, points, marks = chart(sends(T0, 2), 60, paused=True)
    assert [(m.kind, m.at) for m in marks] == [("paused", points[-1].at)]


def test_a_long_run_widens_its_buckets_to_keep_the_chart_readable():
    width, points, _ = chart(sends(T0, 1) + sends(T0 + 86_400 * 3, 1), 60, paused=False)
    assert len(points) <= MAX_POINTS and width % 60 == 0
    assert sum(p.sent for p in points) == 2
