"""Jobs and their per-recipient delivery logs (API.md "Campaigns and jobs").

Deliveries of one job live in partitions ``{job id}-{task id}``, so a job's whole log is
the PartitionKey range ``[job-, job.)`` ('.' sorts right after '-'): one range query,
paged with the service's continuation, visits every recipient exactly once.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import asdict
from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from api.auth import TenantDep
from api.campaign_records import load_campaign
from api.dependencies import StorageDep
from api.errors import not_found
from api.routers.conventions import DEFAULT_PAGE_LIMIT, ERROR_RESPONSES, Limit, PageCursor, TenantPageCursor
from api.schemas import CompliancePublic, DeliveryEvent, DeliveryPublic, JobPublic, Page
from core.clock import iso, parse_iso, utcnow
from core.ids import contact_id_for, normalize_email
from core.in_flight import only_delivery_rows
from core.models import Job
from core.provider_events import timeline
from core.reconciliation import marks_of_job
from core.status import FINAL_JOB_STATUSES, TERMINAL_DELIVERY_STATUSES, DeliveryStatus, JobStatus
from core.storage import DELIVERIES, JOBS, Entity, Storage
from core.timing import time_to_send_seconds
from status_manager.compliance import compliance_report
from status_manager.delivery_logs import (
    events_for_rows,
    find_delivery,
    in_flight_deliveries,
    in_flight_delivery,
)

router = APIRouter(tags=["jobs"], responses=ERROR_RESPONSES)

CSV_COLUMNS = ("contact_id", "email", "status", "reason", "provider", "provider_message_id",
               "attempts", "updated_at")
_FORMULA_STARTS = frozenset("=+-@\t\r")
_TERMINAL = frozenset(s.value for s in TERMINAL_DELIVERY_STATUSES)
_NO_ETA = frozenset(s.value for s in FINAL_JOB_STATUSES) | {JobStatus.PAUSED.value}
StatusFilter = Annotated[DeliveryStatus | None, Query(description="Only deliveries in this status.")]
EmailFilter = Annotated[str | None, Query(max_length=254, description="Only this recipient.")]


# -- jobs ------------------------------------------------------------------------------------


def job_public(job: Job, now: datetime | None = None) -> JobPublic:
    done = sum(n for status, n in job.counts.items() if status in _TERMINAL)
    now = now or utcnow()
    waiting = waits_for_warmup(job, now)
    return JobPublic(
        id=job.id, campaign_id=job.campaign_id, status=job.status, roster_size=job.roster_size,
        counts=dict(job.counts), progress=progress(job, done), started_at=job.started_at or None,
        completed_at=job.completed_at or None,
        eta=(job.waiting_eta or job.waiting_until) if waiting else eta(job, done, now),
        waiting_reason=job.waiting_reason if waiting else None,
        waiting_until=job.waiting_until if waiting else None,
        failure_reason=job.failure_reason or None, last_error=job.last_error or None,
        tasks_total=job.tasks_total, tasks_done=job.tasks_done, created_at=job.created_at or None,
        time_to_send_seconds=time_to_send_seconds(job.started_at, job.completed_at) if job.completed_at
        and job.status == JobStatus.COMPLETED.value else None,
        retry_of=job.retry_of or None, dry_run=job.dry_run,
        send_mode=job.send_mode or None, send_mode_reason=job.send_mode_reason or None,
        created_by=job.actors.get("created_by"),
        paused_by=job.actors.get("paused_by"), resumed_by=job.actors.get("resumed_by"),
        cancelled_by=job.actors.get("cancelled_by"), unknown_resolution=dict(job.unknown_resolution),
    )


def waits_for_warmup(job: Job, now: datetime) -> bool:
    """A running job its sending domain's warm-up holds until the next UTC day.

    Its ETA is then the start of the day the rest of its roster fits the ramp (the Task Manager
    worked it out when it stopped: ``task_manager/stops.hold_job_for_warmup``), not an
    extrapolation of a rate that includes the wait.
    """
    if job.status in _NO_ETA or not job.waiting_until:
        return False
    try:
        return parse_iso(job.waiting_until) > now
    except ValueError:
        return False


def progress(job: Job, done: int) -> float:
    """Share of the roster with a terminal outcome; exactly 1.0 once the job completed."""
    if job.status == JobStatus.COMPLETED.value:
        return 1.0
    if job.roster_size <= 0:
        return 0.0
    return min(1.0, max(0.0, done / job.roster_size))


def eta(job: Job, done: int, now: datetime) -> str | None:
    """When the roster should be finished at the average rate since the job started.

    ``None`` when there is nothing to extrapolate from (not started, nothing done yet), nothing
    left to wait for (the job is over), or no progress to expect (paused).
    """
    if job.status in _NO_ETA or not job.started_at or done <= 0 or job.roster_size <= 0:
        return None
    try:
        elapsed = (now - parse_iso(job.started_at)).total_seconds()
    except ValueError:
        return None
    remaining = max(0, job.roster_size - done)
    if elapsed <= 0:
        return None
    return iso(now + timedelta(seconds=remaining * elapsed / done))


def _load_job(storage: Storage, tenant_id: str, job_id: str) -> Job:
    entity = storage.table(JOBS).find(tenant_id, job_id)
    if entity is None:
        raise not_found("job")
    return Job.from_entity(entity)


@router.get("/campaigns/{campaign_id}/jobs", response_model=Page[JobPublic], tags=["campaigns"])
def list_campaign_jobs(
    campaign_id: str, tenant: TenantDep, storage: StorageDep,
    cursor: TenantPageCursor, limit: Limit = DEFAULT_PAGE_LIMIT,
) -> Page[JobPublic]:
    load_campaign(storage, tenant.id, campaign_id)  # 404 for another tenant's campaign
    page = storage.table(JOBS).query_page(
        "PartitionKey eq @t and campaign_id eq @c", {"t": tenant.id, "c": campaign_id},
        limit=limit, continuation=cursor.position,
    )
    now = utcnow()
    return Page[JobPublic](
        items=[job_public(Job.from_entity(e), now) for e in page.items],
        continuation=cursor.next_token(page.continuation),
    )


@router.get("/jobs/{job_id}", response_model=JobPublic)
def get_job(job_id: str, tenant: TenantDep, storage: StorageDep) -> JobPublic:
    job = _load_job(storage, tenant.id, job_id)
    public = job_public(job)
    public.compliance = CompliancePublic(**asdict(compliance_report(storage, job)))
    if not JobStatus(job.status).is_final:
        marks = marks_of_job(storage, job.tenant_id, job.id, holding_only=True)
        due = [mark.get("due_at", "") for mark in marks]
        public.reconciling_until = max(due) if any(due) else None
    return public


# -- deliveries ------------------------------------------------------------------------------


def delivery_query(job_id: str, status: str | None, email: str | None) -> tuple[str, dict[str, Any]]:
    query = only_delivery_rows("PartitionKey ge @lo and PartitionKey lt @hi")
    params: dict[str, Any] = {"lo": f"{job_id}-", "hi": f"{job_id}."}
    if status is not None:
        query += " and status eq @s"
        params["s"] = status
    if email is not None:
        query += " and email eq @e"
        params["e"] = normalize_email(email)
    return query, params


def delivery_public(
    entity: Entity, events: list[DeliveryEvent] | None = None, dry_run: bool = False
) -> DeliveryPublic:
    return DeliveryPublic(
        contact_id=entity["RowKey"], email=entity.get("email", ""), status=entity.get("status", ""),
        reason=entity.get("reason", ""), provider=entity.get("provider", ""),
        provider_message_id=entity.get("provider_message_id", ""),
        attempts=int(entity.get("attempts", 0) or 0), events=events or [],
        updated_at=entity.get("updated_at") or None, dry_run=dry_run,
    )


def with_timelines(storage: Storage, job: Job, rows: list[Entity]) -> list[DeliveryPublic]:
    """Each row with its timeline: its own outcome plus the provider events (one query a page)."""
    provider_events = events_for_rows(storage, rows)
    queued_at = job.started_at or job.created_at
    out = []
    for row in rows:
        steps = timeline(row, provider_events.get((row["PartitionKey"], row["RowKey"]), []), queued_at)
        out.append(delivery_public(row, [DeliveryEvent(**step.as_dict()) for step in steps], job.dry_run))
    return out


@router.get("/jobs/{job_id}/deliveries", response_model=Page[DeliveryPublic])
def list_deliveries(
    job_id: str, tenant: TenantDep, storage: StorageDep,
    cursor: TenantPageCursor, status: StatusFilter = None, email: EmailFilter = None,
    limit: Limit = DEFAULT_PAGE_LIMIT,
) -> Page[DeliveryPublic]:
    job = _load_job(storage, tenant.id, job_id)
    position = cursor.position or {}
    if status == DeliveryStatus.SENDING:  # named by in-flight rows, not a status on the recipients' rows
        return _in_flight_page(storage, tenant.contact_salt, job, email, limit, cursor)
    continuation = None if IN_FLIGHT_AFTER in position else cursor.position  # a token of the other list
    query, params = delivery_query(job_id, status.value if status else None, email)
    page = storage.table(DELIVERIES).query_page(query, params, limit=limit, continuation=continuation)
    return Page[DeliveryPublic](items=with_timelines(storage, job, page.items),
                                continuation=cursor.next_token(page.continuation))


IN_FLIGHT_AFTER = "in_flight_after"  # the position of a ``status=sending`` page: the last key shown


def _in_flight_page(
    storage: Storage, salt: str, job: Job, email: str | None, limit: int, cursor: PageCursor
) -> Page[DeliveryPublic]:
    """Recipients the job's in-flight rows name, in key order, a page at a time."""
    wanted = contact_id_for(salt, normalize_email(email)) if email is not None else None
    after = str((cursor.position or {}).get(IN_FLIGHT_AFTER, ""))
    rows = sorted((row for row in in_flight_deliveries(storage, job.id) if wanted in (None, row["RowKey"])),
                  key=lambda row: (row["PartitionKey"], row["RowKey"]))
    rows = [row for row in rows if _key(row) > after]
    shown = rows[:limit]
    more = {IN_FLIGHT_AFTER: _key(shown[-1])} if len(rows) > limit else None
    return Page[DeliveryPublic](items=with_timelines(storage, job, shown),
                                continuation=cursor.next_token(more))


def _key(row: Entity) -> str:
    return f"{row['PartitionKey']}|{row['RowKey']}"


@router.get("/jobs/{job_id}/deliveries/{contact_id}", response_model=DeliveryPublic)
def get_delivery(job_id: str, contact_id: str, tenant: TenantDep, storage: StorageDep) -> DeliveryPublic:
    """One recipient of one job with its whole timeline: "what happened to this person's email"."""
    job = _load_job(storage, tenant.id, job_id)
    row = find_delivery(storage, tenant.id, job_id, contact_id)
    if row is None or not DeliveryStatus(row.get("status") or "pending").is_terminal:
        row = in_flight_delivery(storage, job_id, contact_id) or row
    if row is None:
        raise not_found("delivery")
    return with_timelines(storage, job, [row])[0]


@router.get(
    "/jobs/{job_id}/deliveries.csv",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/csv": {}}, "description": "The delivery log, one row per recipient."}},
)
def export_deliveries(
    job_id: str, tenant: TenantDep, storage: StorageDep,
    status: StatusFilter = None, email: EmailFilter = None,
) -> StreamingResponse:
    _load_job(storage, tenant.id, job_id)
    query, params = delivery_query(job_id, status.value if status else None, email)
    rows = storage.table(DELIVERIES).query(query, params, select=["RowKey", *CSV_COLUMNS[1:]])
    return StreamingResponse(
        csv_lines(rows), media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="job-{job_id}-deliveries.csv"'},
    )


def cell_text(value: Any) -> str:
    """A text cell, defused against spreadsheet formula injection (OWASP: prefix a quote).

    Addresses may legally start with ``=``, ``+`` or ``-`` and reasons come from providers;
    a support person opening the export in a spreadsheet must not run them as formulas.
    """
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in _FORMULA_STARTS else text


def csv_lines(rows: Iterator[Entity], rows_per_chunk: int = 500) -> Iterator[str]:
    """Header, then the rows in chunks: memory stays flat for a million-row log."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    pending = 0
    for entity in rows:
        writer.writerow([
            entity["RowKey"], *(cell_text(entity.get(column, "")) for column in CSV_COLUMNS[1:6]),
            entity.get("attempts", 0) or 0, entity.get("updated_at", ""),
        ])
        pending += 1
        if pending >= rows_per_chunk:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
            pending = 0
    yield buffer.getvalue()
