"""A job at a glance: its send rate over time, its failures by reason, its compliance figures.

All three are read from what sending already writes, so they cost nothing while a job runs:

- the **timeline** buckets the job's delivery rows by the time of their outcome (``outcome_at``
  when provider events changed the row later, else ``updated_at``): one range query over the
  job's delivery partitions reading four short columns, ~1 request per 1,000 recipients, at
  most ``MAX_SCANNED_ROWS`` rows (beyond that ``complete`` is false and the chart shows the
  rows read, in task order);
- the **failures** are the same range filtered to failure statuses server-side, grouped by
  status and reason (a job with few failures reads few rows);
- the **compliance** figures are the job's own counts (bounces, complaints) plus the tenant's
  unsubscribes that name the job's campaign (the unsubscribe token names the campaign, not
  the job, so they are the campaign's).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from api.auth import TenantDep
from api.dependencies import StorageDep
from api.errors import not_found
from api.routers.conventions import ERROR_RESPONSES
from core.clock import iso, parse_iso
from core.in_flight import only_delivery_rows
from core.models import Job
from core.status import DeliveryStatus, JobStatus
from core.storage import DELIVERIES, JOBS, SUPPRESSIONS, Entity, Storage

router = APIRouter(tags=["jobs"], responses=ERROR_RESPONSES)

MAX_SCANNED_ROWS = 100_000
MAX_POINTS = 720  # a chart wider than this widens its buckets instead
MAX_GROUPS = 100
ACCEPTED = frozenset(s.value for s in (
    DeliveryStatus.SENT, DeliveryStatus.DELIVERED, DeliveryStatus.BOUNCED, DeliveryStatus.DROPPED,
    DeliveryStatus.COMPLAINED, DeliveryStatus.DEFERRED,
))
FAILURES = (DeliveryStatus.FAILED, DeliveryStatus.BOUNCED, DeliveryStatus.DROPPED, DeliveryStatus.COMPLAINED,
            DeliveryStatus.UNKNOWN, DeliveryStatus.SKIPPED)
Bucket = Annotated[int, Query(ge=10, le=3600, description="Seconds per point (10–3600), widened past 720.")]


class RatePoint(BaseModel):
    at: str = Field(description="Start of the bucket.")
    sent: int = Field(description="Recipients the provider accepted in this bucket.")
    failed: int
    other: int = Field(description="Suppressed, skipped, unknown, cancelled or still retrying.")
    throttled: int = Field(description="Recipients held back by provider throttling since this bucket.")


class RateMark(BaseModel):
    at: str
    kind: Literal["failover", "throttled", "idle", "paused"]
    detail: str


class JobTimeline(BaseModel):
    job_id: str
    status: str
    bucket_seconds: int
    points: list[RatePoint]
    marks: list[RateMark]
    rows_read: int
    complete: bool = Field(description="False when the job has more rows than one chart reads.")


class FailureGroup(BaseModel):
    status: str
    reason: str
    count: int


class JobFailures(BaseModel):
    job_id: str
    groups: list[FailureGroup] = Field(description="Largest first, at most 100.")
    total: int
    complete: bool


class JobCompliance(BaseModel):
    job_id: str
    bounces: int
    complaints: int
    unsubscribes: int = Field(description="Unsubscribes naming the job's campaign (any of its runs).")
    suppressed: int = Field(description="Recipients not sent because they were already suppressed.")


def load_job(storage: Storage, tenant_id: str, job_id: str) -> Job:
    entity = storage.table(JOBS).find(tenant_id, job_id)
    if entity is None:
        raise not_found("job")
    return Job.from_entity(entity)


def job_rows(storage: Storage, job_id: str, select: list[str], extra: str = "",
             params: dict[str, str] | None = None) -> Iterable[Entity]:
    query = only_delivery_rows("PartitionKey ge @lo and PartitionKey lt @hi") + extra
    return storage.table(DELIVERIES).query(query, {"lo": f"{job_id}-", "hi": f"{job_id}.", **(params or {})},
                                           select=select)


# -- send rate over time ---------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """One delivery row as the chart sees it: when, what and through which provider."""

    at: float
    kind: str  # sent, failed, other
    provider: str
    throttled_at: float | None


def outcome_of(row: Entity) -> Outcome | None:
    status = row.get("status", "")
    try:
        at = parse_iso(row.get("outcome_at") or row.get("updated_at") or "").timestamp()
        throttled = parse_iso(row["throttled_since"]).timestamp() if row.get("throttled_since") else None
    except ValueError:
        return None
    kind = "sent" if status in ACCEPTED else "failed" if status == DeliveryStatus.FAILED else "other"
    return Outcome(at, kind, row.get("provider", "") if kind == "sent" else "", throttled)


def chart(outcomes: list[Outcome], bucket: int, paused: bool) -> tuple[int, list[RatePoint], list[RateMark]]:
    """Points from the first outcome's bucket to the last (empty ones included) and their marks."""
    moments = [o.at for o in outcomes] + [o.throttled_at for o in outcomes if o.throttled_at is not None]
    if not moments:
        return bucket, [], []
    first, last = min(moments), max(moments)
    if (last - first) / bucket >= MAX_POINTS:
        bucket = int(math.ceil((last - first) / (MAX_POINTS - 1) / bucket) * bucket)
    start = int(first // bucket * bucket)
    size = int(last // bucket * bucket - start) // bucket + 1
    counts = [Counter[str]() for _ in range(size)]
    providers = [Counter[str]() for _ in range(size)]
    for outcome in outcomes:
        index = int(outcome.at // bucket * bucket - start) // bucket
        counts[index][outcome.kind] += 1
        if outcome.provider:
            providers[index][outcome.provider] += 1
        if outcome.throttled_at is not None:
            counts[int(outcome.throttled_at // bucket * bucket - start) // bucket]["throttled"] += 1
    points = [
        RatePoint(at=_at(start + i * bucket), sent=c["sent"], failed=c["failed"], other=c["other"],
                  throttled=c["throttled"])
        for i, c in enumerate(counts)
    ]
    return bucket, points, marks(points, providers, paused)


def marks(points: list[RatePoint], providers: list[Counter[str]], paused: bool) -> list[RateMark]:
    """Failovers (the provider taking most sends changed), throttling, idle stretches, a pause."""
    found: list[RateMark] = []
    previous = ""
    idle_from: int | None = None
    for i, point in enumerate(points):
        busy = point.sent + point.failed + point.other
        if providers[i]:
            top = providers[i].most_common(1)[0][0]
            if previous and top != previous:
                found.append(RateMark(at=point.at, kind="failover", detail=f"{previous} → {top}"))
            previous = top
        if point.throttled:
            found.append(RateMark(at=point.at, kind="throttled", detail=f"{point.throttled} held back"))
        if not busy and idle_from is None:
            idle_from = i
        if busy and idle_from is not None:
            found.append(RateMark(at=points[idle_from].at, kind="idle",
                                  detail=f"nothing sent for {i - idle_from} bucket(s)"))
            idle_from = None
    if paused and points:
        found.append(RateMark(at=points[-1].at, kind="paused", detail="the job is paused"))
    return found


def _at(epoch: float) -> str:
    return iso(datetime.fromtimestamp(epoch, UTC))


@router.get("/jobs/{job_id}/timeline", response_model=JobTimeline)
def job_timeline(job_id: str, tenant: TenantDep, storage: StorageDep, bucket: Bucket = 60) -> JobTimeline:
    """Recipients per bucket by outcome (sent, failed, other); failovers, throttling, pauses marked."""
    job = load_job(storage, tenant.id, job_id)
    outcomes: list[Outcome] = []
    rows_read = 0
    complete = True
    columns = ["status", "updated_at", "outcome_at", "provider", "throttled_since"]
    for row in job_rows(storage, job_id, columns):
        if rows_read >= MAX_SCANNED_ROWS:
            complete = False
            break
        rows_read += 1
        outcome = outcome_of(row)
        if outcome is not None:
            outcomes.append(outcome)
    width, points, found = chart(outcomes, bucket, job.status == JobStatus.PAUSED.value)
    return JobTimeline(job_id=job.id, status=job.status, bucket_seconds=width, points=points, marks=found,
                       rows_read=rows_read, complete=complete)


# -- failures by reason ----------------------------------------------------------------------


@router.get("/jobs/{job_id}/failures", response_model=JobFailures)
def job_failures(job_id: str, tenant: TenantDep, storage: StorageDep) -> JobFailures:
    """Recipients that failed, bounced, were dropped, complained, ended unknown or were skipped,
    grouped by status and reason, largest group first."""
    load_job(storage, tenant.id, job_id)
    names = {f"s{i}": status.value for i, status in enumerate(FAILURES)}
    extra = " and ( " + " or ".join(f"status eq @{name}" for name in names) + " )"  # @names stand alone
    groups: Counter[tuple[str, str]] = Counter()
    total = 0
    complete = True
    for row in job_rows(storage, job_id, ["status", "reason"], extra, names):
        if total >= MAX_SCANNED_ROWS:
            complete = False
            break
        total += 1
        groups[(row.get("status", ""), row.get("reason", "") or "")] += 1
    ordered = sorted(groups.items(), key=lambda item: (-item[1], item[0]))
    return JobFailures(
        job_id=job_id, total=total, complete=complete and len(ordered) <= MAX_GROUPS,
        groups=[FailureGroup(status=s, reason=r, count=n) for (s, r), n in ordered[:MAX_GROUPS]],
    )


# -- compliance ------------------------------------------------------------------------------


@router.get("/jobs/{job_id}/compliance", response_model=JobCompliance)
def job_compliance(job_id: str, tenant: TenantDep, storage: StorageDep) -> JobCompliance:
    """Bounces and complaints of the job, unsubscribes of its campaign, recipients suppressed."""
    job = load_job(storage, tenant.id, job_id)
    unsubscribes = 0
    if job.campaign_id:
        unsubscribes = sum(1 for _ in storage.table(SUPPRESSIONS).query(
            "PartitionKey eq @t and campaign_id eq @c and reason eq @r",
            {"t": tenant.id, "c": job.campaign_id, "r": "unsubscribed"}, select=["RowKey"],
        ))
    counts = job.counts
    return JobCompliance(
        job_id=job.id, bounces=counts.get(DeliveryStatus.BOUNCED.value, 0),
        complaints=counts.get(DeliveryStatus.COMPLAINED.value, 0), unsubscribes=unsubscribes,
        suppressed=counts.get(DeliveryStatus.SUPPRESSED.value, 0),
    )
