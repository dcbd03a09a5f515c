"""The one place that owns a job's final state.

Each timer run walks the ``ActiveJobs`` index (never the whole Jobs table) and, per job:
sums the per-task counters (not the deliveries) into the job's counts (after recounting
the tasks provider events changed: ``recounts.py``), re-enqueues
what a crash left behind (an expansion whose lease expired, tasks whose lease expired,
a window left short), and closes the job — then its campaign — once the roster is
expanded and every task is terminal.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import timedelta

from core.clock import Clock, iso, parse_iso, utcnow
from core.errors import Conflict, NotFound
from core.messages import JobTicket, TaskTicket
from core.models import (
    ACTIVE_PARTITION,
    TASK_SUMMARY_COLUMNS,
    Campaign,
    Job,
    count_column,
)
from core.settings import Settings
from core.status import CampaignStatus, DeliveryStatus, JobStatus, TaskStatus, add_counts, zero_counts
from core.storage import ACTIVE_JOBS, CAMPAIGNS, JOB_QUEUE, JOBS, TASK_QUEUE, TASKS, Entity, Storage, etag_of
from status_manager.control import close_cancelled_tasks
from status_manager.delivery_logs import request_delivery_log
from status_manager.recounts import recount_marked_tasks

log = logging.getLogger("mailroom.status_manager")

_CLOSED_CAMPAIGN = frozenset({CampaignStatus.COMPLETED, CampaignStatus.CANCELLED, CampaignStatus.FAILED})


@dataclass
class StatusReport:
    jobs_seen: int = 0
    jobs_closed: list[str] = field(default_factory=list)
    closed_jobs: list[Job] = field(default_factory=list)  # as closed, for metrics
    tasks_requeued: int = 0
    expansions_requeued: int = 0
    jobs_recounted: int = 0  # jobs with a task recounted after provider events


@dataclass
class _TaskSummary:
    counts: dict[str, int]
    terminal: int
    stalled: list[int]  # claimed, lease expired: the owner died
    pending: list[int]  # never claimed
    paused: list[int] = field(default_factory=list)  # stopped by a pause; resume re-enqueues them
    tasks: int = 0  # task rows written (a cancelled expansion may stop between two job updates)
    roster: int = 0  # recipients in those rows


def close_finished_jobs(storage: Storage, settings: Settings, clock: Clock = utcnow) -> StatusReport:
    """One pass: recount tasks that provider events changed, then every active job."""
    report = StatusReport()
    recounted = recount_marked_tasks(storage)
    for tenant_id, job_id in sorted(recounted):
        refresh_closed_job_counts(storage, tenant_id, job_id, clock)
    report.jobs_recounted = len(recounted)
    for row in storage.table(ACTIVE_JOBS).partition(ACTIVE_PARTITION):
        report.jobs_seen += 1
        try:
            job = Job.from_entity(storage.table(JOBS).get(row["tenant_id"], row["job_id"]))
        except NotFound:
            storage.table(ACTIVE_JOBS).delete(ACTIVE_PARTITION, row["RowKey"])
            continue
        if job.status == JobStatus.CANCELLED and not job.completed_at:
            settle_cancelled_job(storage, job, clock, report)  # closes once every task is terminal
            continue
        if JobStatus(job.status).is_final:
            close_campaign(storage, job, clock)
            request_delivery_log(storage, job)
            storage.table(ACTIVE_JOBS).delete(ACTIVE_PARTITION, row["RowKey"])
            continue
        update_job(storage, job, settings, clock, report)
    if report.jobs_closed or report.tasks_requeued or report.expansions_requeued:
        log.info(
            "status pass jobs=%d closed=%d tasks_requeued=%d expansions_requeued=%d",
            report.jobs_seen,
            len(report.jobs_closed),
            report.tasks_requeued,
            report.expansions_requeued,
        )
    return report


def summarize_tasks(
    storage: Storage, job: Job, clock: Clock, retry_grace: timedelta = timedelta(seconds=60)
) -> _TaskSummary:
    now = clock()
    summary = _TaskSummary(counts=zero_counts(), terminal=0, stalled=[], pending=[])
    for entity in storage.table(TASKS).partition(job.id, select=TASK_SUMMARY_COLUMNS):
        recorded = _json_counts(entity)
        add_counts(summary.counts, recorded)
        summary.counts[DeliveryStatus.PENDING] += max(0, int(entity.get("size", 0)) - sum(recorded.values()))
        status = TaskStatus(entity.get("status", "pending"))
        index = int(entity["RowKey"])
        summary.tasks += 1
        summary.roster += int(entity.get("size", 0) or 0)
        if status.is_terminal:
            summary.terminal += 1
        elif status == TaskStatus.SENDING and _expired(entity.get("lease_until", ""), now):
            summary.stalled.append(index)
        elif status == TaskStatus.RETRYING and _expired(entity.get("lease_until", ""), now - retry_grace):
            # Its delayed re-queue ticket should have arrived by now: treat it as lost.
            summary.stalled.append(index)
        elif status == TaskStatus.PENDING:
            summary.pending.append(index)
        elif status == TaskStatus.PAUSED:
            summary.paused.append(index)
    return summary


def refresh_closed_job_counts(storage: Storage, tenant_id: str, job_id: str, clock: Clock) -> None:
    """A closed job's count columns, and its campaign's counts, as the sum of its tasks' now."""
    entity = storage.table(JOBS).find(tenant_id, job_id)
    if entity is None:
        return
    job = Job.from_entity(entity)
    if not JobStatus(job.status).is_final or not job.completed_at:
        return  # open: ``update_job`` sums it this pass
    counts = summarize_tasks(storage, job, clock).counts
    if counts != job.counts:
        storage.table(JOBS).update(
            {"PartitionKey": tenant_id, "RowKey": job_id, **{count_column(k): v for k, v in counts.items()}}
        )
    campaign = storage.table(CAMPAIGNS).find(tenant_id, job.campaign_id)
    if campaign is None or campaign.get("current_job_id") != job_id:
        return
    if campaign.get("status") not in _CLOSED_CAMPAIGN or _json_counts(campaign) == counts:
        return
    try:
        storage.table(CAMPAIGNS).update(
            {"PartitionKey": tenant_id, "RowKey": job.campaign_id, "counts": _dumps(counts),
             "updated_at": iso(clock())},
            etag=etag_of(campaign),
        )
    except Conflict:
        pass  # a person changed the campaign meanwhile; the next recount of this job writes it


def update_job(storage: Storage, job: Job, settings: Settings, clock: Clock, report: StatusReport) -> None:
    now = clock()
    if not job.expanded and _expansion_stalled(job, settings, now):
        storage.queue(JOB_QUEUE).send(JobTicket(tenant_id=job.tenant_id, job_id=job.id).to_text())
        report.expansions_requeued += 1
    summary = summarize_tasks(storage, job, clock, timedelta(seconds=settings.refill_after_seconds))
    changed = summary.counts != job.counts or summary.terminal != job.tasks_done
    if job.status != JobStatus.PAUSED:
        report.tasks_requeued += requeue_stalled(storage, job, summary, settings, now, changed)
    entity: Entity = {"PartitionKey": job.tenant_id, "RowKey": job.id, "tasks_done": summary.terminal}
    entity.update({count_column(k): v for k, v in summary.counts.items()})
    if changed:
        entity["progress_at"] = iso(now)
    finished = job.expanded and summary.terminal >= job.tasks_total and job.status != JobStatus.PAUSED
    if finished:
        entity.update(status=JobStatus.COMPLETED.value, completed_at=iso(now))
    if not changed and not finished:
        return
    try:
        # The count columns are ours alone: merge them without an ETag, so an expansion writing
        # the job row every task does not make every pass skip. Closing is ETag-guarded: a pause
        # or cancel that landed meanwhile wins, and the next pass decides again.
        storage.table(JOBS).update(entity, etag=job.etag if finished else None)
    except Conflict:
        return
    if finished:
        job.status, job.counts, job.completed_at = JobStatus.COMPLETED.value, summary.counts, iso(now)
        close_campaign(storage, job, clock)
        request_delivery_log(storage, job)
        storage.table(ACTIVE_JOBS).delete(ACTIVE_PARTITION, f"{job.tenant_id}|{job.id}")
        report.jobs_closed.append(job.id)
        report.closed_jobs.append(job)
        log.info("job closed job=%s roster=%d", job.id, job.roster_size)


def requeue_stalled(
    storage: Storage, job: Job, summary: _TaskSummary, settings: Settings, now, progressed: bool
) -> int:
    """Put back on the queue what a crash left: expired leases, and a window left short."""
    indexes = list(summary.stalled)
    idle = (
        not progressed
        and job.progress_at
        and (now - parse_iso(job.progress_at) > timedelta(seconds=settings.refill_after_seconds))
    )
    if idle:
        # A paused task of a running job was stopped while a resume re-enqueued the rest.
        indexes += (summary.paused + summary.pending)[: settings.task_window]
    for index in indexes:
        storage.queue(TASK_QUEUE).send(
            TaskTicket(tenant_id=job.tenant_id, job_id=job.id, task_index=index).to_text()
        )
    if idle and indexes:
        # Count the refill as progress so the next pass waits again before refilling.
        storage.table(JOBS).update({"PartitionKey": job.tenant_id, "RowKey": job.id, "progress_at": iso(now)})
    return len(indexes)


def settle_cancelled_job(storage: Storage, job: Job, clock: Clock, report: StatusReport) -> None:
    """A cancelled job: close its idle tasks, then the job once every task row is terminal.

    The roster is what was written before the cancel: an expansion stopped by it may have
    written one task past ``tasks_total``, so the totals come from the task rows, counted
    once the expansion lease has run out (nobody writes tasks after that).
    """
    now = clock()
    close_cancelled_tasks(storage, job, clock)
    summary = summarize_tasks(storage, job, clock)
    expansion_over = job.expanded or not job.lease_owner or _expired(job.lease_until, now)
    finished = expansion_over and summary.terminal >= summary.tasks
    entity: Entity = {"PartitionKey": job.tenant_id, "RowKey": job.id, "tasks_done": summary.terminal}
    entity.update({count_column(k): v for k, v in summary.counts.items()})
    if finished:
        entity.update(completed_at=iso(now), tasks_total=summary.tasks, roster_size=summary.roster,
                      progress_at=iso(now))
    try:
        storage.table(JOBS).update(entity, etag=job.etag)
    except Conflict:
        return
    if finished:
        job.counts, job.completed_at = summary.counts, iso(now)
        close_campaign(storage, job, clock)
        request_delivery_log(storage, job)
        storage.table(ACTIVE_JOBS).delete(ACTIVE_PARTITION, f"{job.tenant_id}|{job.id}")
        report.jobs_closed.append(job.id)
        report.closed_jobs.append(job)
        log.info("cancelled job closed job=%s roster=%d", job.id, summary.roster)


def close_campaign(storage: Storage, job: Job, clock: Clock) -> None:
    """A campaign ends with its job: same final status, the job's counts."""
    try:
        campaign = Campaign.from_entity(storage.table(CAMPAIGNS).get(job.tenant_id, job.campaign_id))
    except NotFound:
        return
    open_statuses = (CampaignStatus.RUNNING, CampaignStatus.PAUSED)
    if job.status == JobStatus.CANCELLED:  # a cancel already shows on the campaign; add counts
        open_statuses += (CampaignStatus.CANCELLED,)
    if campaign.current_job_id != job.id or campaign.status not in open_statuses:
        return
    final = {
        JobStatus.COMPLETED: CampaignStatus.COMPLETED,
        JobStatus.CANCELLED: CampaignStatus.CANCELLED,
        JobStatus.FAILED: CampaignStatus.FAILED,
    }.get(JobStatus(job.status))
    if final is None:
        return
    try:
        storage.table(CAMPAIGNS).update(
            {
                "PartitionKey": job.tenant_id,
                "RowKey": campaign.id,
                "status": final.value,
                "counts": _dumps(job.counts),
                "completed_at": job.completed_at or iso(clock()),
                "updated_at": iso(clock()),
            },
            etag=campaign.etag,
        )
    except Conflict:
        pass  # the next pass retries


def _expansion_stalled(job: Job, settings: Settings, now) -> bool:
    if job.lease_until:
        return _expired(job.lease_until, now)
    since = job.created_at or job.progress_at
    return bool(since) and now - parse_iso(since) > timedelta(seconds=settings.lease_seconds)


def _expired(lease_until: str, now) -> bool:
    return bool(lease_until) and parse_iso(lease_until) <= now


def _json_counts(entity: Entity) -> dict[str, int]:
    raw = entity.get("counts") or "{}"
    return {k: int(v) for k, v in json.loads(raw).items()}


def _dumps(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))
