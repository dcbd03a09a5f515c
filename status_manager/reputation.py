"""The reputation brake: a tenant whose bounces or complaints run too high stops sending.

One tenant with a stale list can burn a shared provider account's reputation for every
tenant on it, so each tenant's hard-bounce and complaint rates are kept over a sliding
window from provider events, and above the thresholds (``REPUTATION_BOUNCE_RATE`` 5 %,
``REPUTATION_COMPLAINT_RATE`` 0.1 %, once ``REPUTATION_MIN_SAMPLE`` messages had a delivery
answer) the tenant's running jobs are paused through ``core.job_state.pause_job_for``, with
the reason on the job and a ``SupportAudit`` row. Other tenants are untouched. An operator
resumes the jobs (``POST /jobs/{id}/resume`` with the admin key); the window then starts
again at the trip, so the brake needs a fresh sample above the thresholds to trip again.

Storage: ``Reputation`` rows per tenant (PartitionKey the tenant) and time bucket (RowKey the
bucket's start, ISO text, so a window is one key range), with ``delivered``, ``bounced`` and
``complained`` counters merged with ETag-guarded read-modify-writes; the row ``brake`` holds
the last trip. Only events stored for the first time are counted, so replays count once.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from core.clock import Clock, iso, parse_iso, utcnow
from core.errors import Conflict, NotFound
from core.ids import new_id
from core.job_state import pause_job_for
from core.models import ACTIVE_PARTITION, ReputationBrake, ReputationBucket, SupportAuditEntry
from core.provider_events import ProviderEvent
from core.settings import Settings
from core.status import JobStatus
from core.storage import ACTIVE_JOBS, REPUTATION, SUPPORT_AUDIT, Entity, Storage

log = logging.getLogger("mailroom.reputation")

BRAKE_ROW = "brake"
#: Every job the brake paused says so first: the API lets only the operator resume those.
BRAKE_REASON_PREFIX = "paused by the reputation brake"
_COUNTERS = ("delivered", "bounced", "complained")
_BUCKETS_PER_WINDOW = 60
_WRITE_TRIES = 8


@dataclass
class Tally:
    """What one tenant's fresh events add to its window."""

    delivered: int = 0
    bounced: int = 0
    complained: int = 0

    def add(self, event: ProviderEvent) -> None:
        if event.kind == "delivered":
            self.delivered += 1
        elif event.kind == "bounce" and not event.soft_bounce:
            self.bounced += 1
        elif event.kind == "spamreport":
            self.complained += 1

    def __bool__(self) -> bool:
        return bool(self.delivered or self.bounced or self.complained)


@dataclass(frozen=True)
class Standing:
    """A tenant's rates over its window (``sample``: messages with a delivery answer)."""

    sample: int
    bounced: int
    complained: int

    @property
    def bounce_rate(self) -> float:
        return self.bounced / self.sample if self.sample else 0.0

    @property
    def complaint_rate(self) -> float:
        return self.complained / self.sample if self.sample else 0.0

    def breach(self, settings: Settings) -> str:
        """Why the brake trips (``""``: it does not)."""
        if self.sample < settings.reputation_min_sample:
            return ""
        reasons = []
        if self.bounce_rate > settings.reputation_bounce_rate:
            reasons.append(f"hard bounces {self.bounce_rate:.1%} "
                           f"(threshold {settings.reputation_bounce_rate:.1%})")
        if self.complaint_rate > settings.reputation_complaint_rate:
            reasons.append(f"complaints {self.complaint_rate:.2%} "
                           f"(threshold {settings.reputation_complaint_rate:.2%})")
        return ", ".join(reasons)


def tally_events(events: Iterable[ProviderEvent]) -> dict[str, Tally]:
    """Per tenant, what these (freshly stored) events count for the brake."""
    tallies: dict[str, Tally] = {}
    for event in events:
        if event.tenant_id:
            tallies.setdefault(event.tenant_id, Tally()).add(event)
    return {tenant: tally for tenant, tally in tallies.items() if tally}


def record_and_check(
    storage: Storage, settings: Settings, tallies: dict[str, Tally], clock: Clock = utcnow
) -> list[str]:
    """Add each tenant's tally to its current bucket, then trip the brake where it is breached.

    Returns the jobs paused (ids). Never raises for storage trouble: the next batch checks again.
    """
    paused: list[str] = []
    for tenant_id, tally in tallies.items():
        now = clock()
        try:
            add_to_bucket(storage, tenant_id, bucket_key(now, settings), tally)
            standing, since = standing_of(storage, settings, tenant_id, now)
            reason = standing.breach(settings)
            if reason:
                paused += trip_brake(storage, settings, tenant_id, standing, reason, since, clock)
        except Conflict:
            log.warning("reputation counters kept changing tenant=%s", tenant_id)
    return paused


def bucket_seconds(settings: Settings) -> int:
    """A window is read as at most ~60 buckets: one short range query per check."""
    return max(60, settings.reputation_window_seconds // _BUCKETS_PER_WINDOW)


def bucket_key(moment: datetime, settings: Settings) -> str:
    size = bucket_seconds(settings)
    start = int(moment.timestamp()) // size * size
    return iso(datetime.fromtimestamp(start, tz=moment.tzinfo))


def add_to_bucket(storage: Storage, tenant_id: str, key: str, tally: Tally) -> None:
    """Counters of one bucket += the tally (ETag-guarded; a lost race reads and adds again)."""

    def add(row: Entity | None) -> Entity:
        bucket = ReputationBucket.from_entity(row) if row else ReputationBucket(tenant_id, key)
        for name in _COUNTERS:
            setattr(bucket, name, getattr(bucket, name) + getattr(tally, name))
        return bucket.to_entity()

    storage.table(REPUTATION).modify(tenant_id, key, add, tries=_WRITE_TRIES)


def standing_of(
    storage: Storage, settings: Settings, tenant_id: str, now: datetime
) -> tuple[Standing, datetime]:
    """The tenant's rates over the window, counting only what came after the last trip.

    A trip records its bucket and that bucket's counters then (the baseline), so the events
    that tripped the brake are not counted again once an operator resumes.
    """
    since = now - timedelta(seconds=settings.reputation_window_seconds)
    lo = bucket_key(since, settings)
    baseline: Entity = {}
    brake = storage.table(REPUTATION).find(tenant_id, BRAKE_ROW)
    if brake is not None and brake.get("tripped_at") and parse_iso(brake["tripped_at"]) > since:
        since, lo, baseline = parse_iso(brake["tripped_at"]), brake.get("bucket", lo), brake
    rows = storage.table(REPUTATION).query(
        "PartitionKey eq @t and RowKey ge @lo and RowKey lt @hi",
        {"t": tenant_id, "lo": lo, "hi": BRAKE_ROW}, select=["RowKey", *_COUNTERS],
    )
    totals = dict.fromkeys(_COUNTERS, 0)
    for row in rows:
        for name in _COUNTERS:
            totals[name] += int(row.get(name, 0) or 0)
            if row["RowKey"] == baseline.get("bucket"):
                totals[name] -= int(baseline.get(f"base_{name}", 0) or 0)
    sample = totals["delivered"] + totals["bounced"]
    return Standing(sample=sample, bounced=totals["bounced"], complained=totals["complained"]), since


def trip_brake(
    storage: Storage, settings: Settings, tenant_id: str, standing: Standing, why: str, since: datetime,
    clock: Clock = utcnow,
) -> list[str]:
    """Pause the tenant's running jobs with the reason, record the trip and an audit row."""
    reason = (f"{BRAKE_REASON_PREFIX}: {why} over {standing.sample} messages since {iso(since)}; "
              "an operator resumes it")
    paused = []
    for job_id in running_jobs(storage, tenant_id):
        job = pause_job_for(storage, tenant_id, job_id, reason, clock)
        if job is not None and job.status == JobStatus.PAUSED and job.failure_reason == reason:
            paused.append(job_id)
    if not paused:
        return []  # nothing running: the next job's first events trip it (the window stays as it is)
    moment = clock()
    now, bucket = iso(moment), bucket_key(moment, settings)
    base = ReputationBucket.from_entity(
        storage.table(REPUTATION).find(tenant_id, bucket) or ReputationBucket(tenant_id, bucket).to_entity()
    )
    storage.table(REPUTATION).upsert(ReputationBrake(
        tenant_id, tripped_at=now, reason=why, sample=standing.sample, bounced=standing.bounced,
        complained=standing.complained, jobs_paused=",".join(paused), bucket=bucket,
        base_delivered=base.delivered, base_bounced=base.bounced, base_complained=base.complained,
    ).to_entity())
    storage.table(SUPPORT_AUDIT).insert(brake_audit_entity(tenant_id, paused, why, now))
    log.warning("reputation brake tripped tenant=%s sample=%d bounced=%d complained=%d jobs_paused=%d",
                tenant_id, standing.sample, standing.bounced, standing.complained, len(paused))
    return paused


def running_jobs(storage: Storage, tenant_id: str) -> list[str]:
    """The tenant's jobs in the ActiveJobs index (one key range)."""
    rows = storage.table(ACTIVE_JOBS).query(
        "PartitionKey eq @p and RowKey ge @lo and RowKey lt @hi",
        {"p": ACTIVE_PARTITION, "lo": f"{tenant_id}|", "hi": f"{tenant_id}}}"}, select=["job_id"],
    )
    return [row["job_id"] for row in rows if row.get("job_id")]


def brake_audit_entity(tenant_id: str, job_ids: list[str], why: str, at: str) -> Entity:
    """The audit row of a trip, in the ``SupportAudit`` shape (``api/audit.py``), by the system."""
    return SupportAuditEntry(
        tenant_id, new_id(), key_id="system:reputation-brake", method="PAUSE", resource="reputation_brake",
        resource_ids=json.dumps({"jobs": job_ids}, separators=(",", ":")), at=at, reason=why,
    ).to_entity()


def brake_state(storage: Storage, tenant_id: str) -> Entity | None:
    """The tenant's last trip (``None``: never tripped)."""
    try:
        return storage.table(REPUTATION).get(tenant_id, BRAKE_ROW)
    except NotFound:
        return None
