"""A warm-up schedule: how many emails a new sending domain may send on each day of its ramp.

Mail systems judge a sender they have never seen by its volume first: a domain that sends a
hundred thousand messages on its first day looks like a spammer on a fresh domain. So a
tenant's new sending domain ramps up: day 1 (the first UTC day it sends) allows the
schedule's first number, day 2 the second, and so on; after the last day it is warmed up and
uncapped. The default doubles from 50 a day to 1,638,400 on day 16, a daily form of the ramp
ESPs publish (SendGrid's automated IP warm-up starts a dedicated IP at 20 messages an hour and
grows about 1.4× a day for some 40 days; its manual guide starts at 50 a day): slower than
SendGrid's caps in the first week, when reputation is built, and faster after it.

One spelling everywhere (``WARMUP_SCHEDULE``, a tenant's ``warmup``): ``on`` (the deployment's
schedule), ``off`` (an established domain: no ramp) or the daily allowances comma-separated, each
a positive whole number and none smaller than the day before (a ramp never steps down).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

DEFAULT_SCHEDULE: tuple[int, ...] = tuple(50 * 2**day for day in range(16))
ON, OFF = "on", "off"
MAX_DAYS = 120  # a longer ramp is a typo, not a plan
MAX_ALLOWANCE = 1_000_000_000


class BadSchedule(ValueError):
    """A schedule that is not ``on``, ``off`` or a non-decreasing list of positive day allowances."""


def parse_schedule(text: str) -> tuple[int, ...]:
    """``"50,100,200"`` → ``(50, 100, 200)``; ``BadSchedule`` naming what is wrong."""
    parts = [part.strip() for part in text.split(",")]
    if not text.strip() or any(not part for part in parts):
        raise BadSchedule("a schedule is daily allowances separated by commas, e.g. 50,100,200")
    try:
        days = tuple(int(part) for part in parts)
    except ValueError as err:
        raise BadSchedule("every day's allowance must be a whole number") from err
    return checked_schedule(days)


def checked_schedule(days: Sequence[int]) -> tuple[int, ...]:
    """The allowances as a schedule, or ``BadSchedule``: 1–120 days, each 1–10⁹, never decreasing."""
    if not 1 <= len(days) <= MAX_DAYS:
        raise BadSchedule(f"a schedule has 1 to {MAX_DAYS} days")
    for number, (allowance, before) in enumerate(zip(days, (0, *days), strict=False), start=1):
        if not 1 <= allowance <= MAX_ALLOWANCE:
            raise BadSchedule(f"day {number}: an allowance is a whole number from 1 to {MAX_ALLOWANCE:,}")
        if allowance < before:
            raise BadSchedule(f"day {number}: {allowance} is less than the day before ({before})")
    return tuple(days)


def spelled(days: Iterable[int]) -> str:
    """A schedule as it is stored and shown: ``"50,100,200"``."""
    return ",".join(str(day) for day in days)


def allowance_on(schedule: Sequence[int], day_number: int) -> int | None:
    """The cap on day ``day_number`` (0: the first day); ``None`` once the ramp is over (no cap)."""
    return schedule[day_number] if 0 <= day_number < len(schedule) else None


def days_to_send(allowances_ahead: Sequence[int], remaining: int) -> int:
    """Of the days ahead (their allowances; past them no cap), the index of the day the last of
    ``remaining`` emails goes out on: 0 when they fit the first day ahead."""
    left = remaining
    for day, allowance in enumerate(allowances_ahead):
        left -= allowance
        if left <= 0:
            return day
    return len(allowances_ahead)
