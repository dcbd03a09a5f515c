"""Warm-up: a tenant's new sending domain follows a daily ramp, across all hosts.

Which tenants warm up, and on what schedule (``core/warmup_schedule.py`` spells them): a
tenant's ``warmup`` setting says ``on`` (``WARMUP_SCHEDULE``), ``off`` (an established domain)
or gives its own schedule; a tenant without one warms up when ``WARMUP_NEW_DOMAINS`` is true.
Day 1 of a (tenant, sending domain) is the first UTC day it sent under warm-up; each day's
allowance is that day's number of the schedule; after the last day the domain is uncapped.

The count holds across hosts the way ``providers/rate_limits.py`` holds a rate: one ``Warmup``
row per (tenant, sending domain) (``first_day``, ``day``, ``sent`` that day, ``allowance``),
changed only with ETags. A host leases a block of the day's allowance (a twentieth, 1 to 1,000)
and spends it locally, so all hosts together never hand over more than the allowance; a host's
unspent block at midnight is lost (under, never over), and a hand-over the provider then refuses
still spent its place. Cost: one storage round trip per block, none once a host knows the day's
allowance is used (it remembers that until the next UTC day) or the domain is warmed up.

When the allowance is used, ``admit`` raises ``WarmupDeferred``: the recipient goes back as
``retrying`` without spending an attempt and its task is re-queued for the next UTC day (under a
day: inside the 7-day limit of a queue message's visibility timeout and its default time to live).
All time comes from the injectable clock, so a test crosses midnight without waiting for it.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

from core.clock import Clock, iso, utcnow
from core.errors import Conflict, StorageError, Throttled, WarmupDeferred
from core.models import TENANT_PARTITION, WarmupRow
from core.settings import Settings
from core.storage import TENANTS, WARMUP, Entity, Storage
from core.warmup_schedule import OFF, ON, BadSchedule, allowance_on, parse_schedule

TENANT_SECONDS = 30.0  # a change of a tenant's ``warmup`` reaches sending hosts within this
STORAGE_RETRY_SECONDS = 5  # the row could not be read or written: try this recipient again soon
_WRITE_TRIES = 10


@dataclass
class _Lease:
    grant: int = 0
    allowance: int | None = None  # None: warmed up
    day_number: int = 0


@dataclass
class _Today:
    """One host's view of a scope for one UTC day."""

    day: date
    tokens: int = 0  # leased, not yet spent
    used_up: _Lease | None = None  # the lease that found the day's allowance gone
    warmed: bool = False  # past the ramp: no cap
    lock: threading.Lock = field(default_factory=threading.Lock)


def block_of(allowance: int) -> int:
    """Tokens a host leases at once: a twentieth of the day's allowance, from 1 to 1,000."""
    return max(1, min(1000, allowance // 20))


def day_start(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


class WarmupGate:
    """A host's warm-up: which tenants warm up, and a token per hand-over from the day's allowance."""

    def __init__(self, storage: Storage, settings: Settings, clock: Clock = utcnow) -> None:
        self.storage, self.clock = storage, clock
        self.default = parse_schedule(settings.warmup_schedule)  # validated when settings load
        self.new_domains = settings.warmup_new_domains
        self._tenants: dict[str, tuple[float, tuple[int, ...] | None]] = {}
        self._days: dict[str, _Today] = {}
        self._lock = threading.Lock()

    def schedule_for(self, tenant_id: str) -> tuple[int, ...] | None:
        """The tenant's ramp (``None``: it does not warm up); its row is read at most every 30 s."""
        now = time.monotonic()
        with self._lock:
            cached = self._tenants.get(tenant_id)
        if cached is not None and now - cached[0] < TENANT_SECONDS:
            return cached[1]
        try:
            row = self.storage.table(TENANTS).find(TENANT_PARTITION, tenant_id, select=["warmup"]) or {}
        except StorageError:
            return cached[1] if cached is not None else None
        schedule = self._schedule_of(str(row.get("warmup", "") or ""))
        with self._lock:
            self._tenants[tenant_id] = (now, schedule)
        return schedule

    def _schedule_of(self, setting: str) -> tuple[int, ...] | None:
        if setting == OFF:
            return None
        if setting == ON:
            return self.default
        if setting:
            try:
                return parse_schedule(setting)
            except BadSchedule:
                return self.default  # the API refuses a bad one; a hand-edited row still warms up
        return self.default if self.new_domains else None

    def admit(self, tenant_id: str, from_email: str) -> None:
        """Take one hand-over of today's allowance, or raise ``WarmupDeferred`` (nothing was sent)."""
        schedule = self.schedule_for(tenant_id)
        if schedule is None:
            return
        domain = from_email.rpartition("@")[2].lower()
        scope = f"{tenant_id}|{domain}"
        now = self.clock().astimezone(UTC)
        today = self._today(scope, now.date())
        with today.lock:
            if today.warmed:
                return
            if today.tokens > 0:
                today.tokens -= 1
                return
            if today.used_up is not None:
                raise used_up(domain, today.used_up, schedule, now)
            lease = self._lease(scope, today.day, schedule)
            if lease.allowance is None:
                today.warmed = True
                return
            if lease.grant > 0:
                today.tokens = lease.grant - 1
                return
            today.used_up = lease
            raise used_up(domain, lease, schedule, now)

    def _today(self, scope: str, day: date) -> _Today:
        with self._lock:
            today = self._days.get(scope)
            if today is None or today.day != day:
                today = self._days[scope] = _Today(day)
            return today

    def _lease(self, scope: str, day: date, schedule: tuple[int, ...]) -> _Lease:
        """A block of ``day``'s allowance from the shared row (``grant`` 0: the day's allowance is used)."""
        lease = _Lease()

        def take(row: Entity | None) -> Entity | None:
            record = WarmupRow.from_entity(row) if row is not None else WarmupRow(scope)
            first = record.first_day or day.isoformat()
            lease.day_number = max(0, (day - date.fromisoformat(first)).days)
            lease.allowance = allowance_on(schedule, lease.day_number)
            lease.grant = 0
            if lease.allowance is None:
                return None  # warmed up: nothing to count
            sent = record.sent if record.day == day.isoformat() else 0
            lease.grant = max(0, min(block_of(lease.allowance), lease.allowance - sent))
            if lease.grant == 0 and record.day == day.isoformat():
                return None
            return WarmupRow(scope, first_day=first, day=day.isoformat(), sent=sent + lease.grant,
                             allowance=lease.allowance).to_entity()

        try:
            self.storage.table(WARMUP).modify(*WarmupRow.key(scope), take, tries=_WRITE_TRIES)
        except (Conflict, StorageError) as err:
            raise Throttled("warm-up allowance could not be counted; retried shortly",
                            code="warmup", retry_after=STORAGE_RETRY_SECONDS) from err
        return lease


def used_up(domain: str, lease: _Lease, schedule: tuple[int, ...], now: datetime) -> WarmupDeferred:
    """What a recipient is told when ``domain``'s allowance for today is spent."""
    tomorrow = day_start(now.date() + timedelta(days=1))
    return WarmupDeferred(
        f"warm-up: today's allowance for {domain} ({lease.allowance}) used; continues at {iso(tomorrow)}",
        code="warmup", retry_after=max(1, math.ceil((tomorrow - now).total_seconds())),
        continues_at=iso(tomorrow), allowances_ahead=tuple(schedule[lease.day_number + 1:]),
    )
