"""The one place that decides a job is over (the state machine in ``core.job_state`` writes it).

Each timer run walks the ``ActiveJobs`` index (never the whole Jobs table) and, per job:
sums the per-task counters (not the deliveries) into the job's counts (``core.counts``;
after recounting the tasks provider events changed: ``recounts.py``), re-enqueues
what a crash left behind (an expansion whose lease expired, tasks whose lease expired,
a window left short), and closes the job — then its campaign — once the roster is
expanded and every task is terminal.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from core.clock import Clock, iso, parse_iso, utcnow
from core.counts import balance_pending, count_columns, counts_json, sum_task_counts, unknown_report
from core.errors import Conflict, NotFound, StateConflict
from core.job_state import campaign_follows_job, change_job, write_job
from core.messages import JobTicket
from core.models import ACTIVE_PARTITION, TASK_SUMMARY_COLUMNS, UNKNOWN_RESOLUTION_COLUMN, Job
from core.reconciliation import marks_of_job
from core.settings import Settings
from core.status import DeliveryStatus, JobStatus, TaskStatus
from core.storage import ACTIVE_JOBS, JOB_QUEUE, JOBS, TASKS, Entity, Storage
from core.task_window import enqueue_task
from status_manager.cancelled import close_cancelled_tasks
from status_manager.delivery_logs import request_delivery_log
from status_manager.reconcile import reconcile_unknowns
from status_manager.recounts import recount_marked_tasks

log = logging.getLogger("mailroom.status_manager")

@dataclass
class StatusReport:
    jobs_seen: int = 0
    jobs_closed: list[str] = field(default_factory=list)
    closed_jobs: list[Job] = field(default_factory=list)  # as closed, for metrics
    tasks_requeued: int = 0
    expansions_requeued: int = 0
    jobs_recounted: int = 0  # jobs with a task recounted after provider events
    unknowns_settled: int = 0  # unknown recipients reconciliation settled this pass


@dataclass
class _TaskSummary:
    counts: dict[str, int]
    terminal: int
    stalled: list[int]  # claimed, lease expired: the owner died
    pending: list[int]  # never claimed
    paused: list[int] = field(default_factory=list)  # stopped by a pause; resume re-enqueues them
    resolutions: dict[str, int] = field(default_factory=dict)  # the tasks' rows per ``resolution``
    parked_due: list[int] = field(default_factory=list)  # parked (off the window), its retry time come
    tasks: int = 0  # task rows written (a cancelled expansion may stop between two job updates)
    roster: int = 0  # recipients in those rows


def close_finished_jobs(storage: Storage, settings: Settings, clock: Clock = utcnow) -> StatusReport:
    """One pass: settle due unknowns, recount tasks that provider events changed, then every active job."""
    report = StatusReport()
    settled = reconcile_unknowns(storage, settings, clock)
    report.unknowns_settled = settled.not_accepted + settled.resent + settled.no_event_feed
    recounted = recount_marked_tasks(storage)
    for tenant_id, job_id in sorted(recounted | settled.jobs):  # a closed job's report follows its rows
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
            campaign_follows_job(storage, job, clock)
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
    rows = list(storage.table(TASKS).partition(job.id, select=TASK_SUMMARY_COLUMNS))
    totals = sum_task_counts(rows)
    summary = _TaskSummary(counts=totals.counts, terminal=0, stalled=[], pending=[], tasks=totals.tasks,
                           roster=totals.roster, resolutions=totals.resolutions)
    for entity in rows:
        status = TaskStatus(entity.get("status", "pending"))
        index = int(entity["RowKey"])
        if status.is_terminal:
            summary.terminal += 1
        elif status == TaskStatus.SENDING and _expired(entity.get("lease_until", ""), now):
            summary.stalled.append(index)
        elif status == TaskStatus.RETRYING and entity.get("parked"):
            if _expired(entity.get("lease_until", ""), now):
                summary.parked_due.append(index)  # it has no ticket of its own
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

    def decide(job: Job) -> Entity | None:
        if not JobStatus(job.status).is_final or not job.completed_at:
            return None  # open: ``update_job`` sums it this pass
        tasks = summarize_tasks(storage, job, clock)
        counts = balance_pending(tasks.counts, job.roster_size)
        resolution = unknown_report(counts, tasks.resolutions)
        changes: Entity = {}
        if counts != job.counts:
            changes.update(count_columns(counts))
        if resolution != job.unknown_resolution:
            changes[UNKNOWN_RESOLUTION_COLUMN] = counts_json(resolution)
        return changes or None

    try:
        job = change_job(storage, tenant_id, job_id, decide)
    except (NotFound, StateConflict):
        return  # gone, or busy: the task stays counted in its rows and the next event recounts
    if JobStatus(job.status).is_final and job.completed_at:
        campaign_follows_job(storage, job, clock)


def update_job(storage: Storage, job: Job, settings: Settings, clock: Clock, report: StatusReport) -> None:
    """Sum the tasks into the job's counts, re-enqueue what a crash left, close the job when done.

    Every write is ETag-guarded (``core.job_state``): counts are written only as a snapshot
    of the task rows read *after* the job row, so they add up to the ``roster_size`` they
    are written with; a job row that moved meanwhile (a task written by the expansion, a
    pause, a cancel) is read again and decided again.
    """
    now = clock()
    if not job.expanded and _expansion_stalled(job, settings, now):
        storage.queue(JOB_QUEUE).send(JobTicket(tenant_id=job.tenant_id, job_id=job.id).to_text())
        report.expansions_requeued += 1
    grace = timedelta(seconds=settings.refill_after_seconds)
    summary = summarize_tasks(storage, job, clock, grace)
    refilled = False
    if job.status != JobStatus.PAUSED:
        progressed = summary.counts != job.counts or summary.terminal != job.tasks_done
        requeued, refilled = requeue_stalled(storage, job, summary, settings, now, progressed)
        report.tasks_requeued += requeued
    first = [summary]

    def decide(current: Job) -> Entity | None:
        tasks = first.pop() if first else summarize_tasks(storage, current, clock, grace)
        if JobStatus(current.status).is_final:
            return None  # closed meanwhile (a cancel): the next pass settles it
        counts = balance_pending(tasks.counts, current.roster_size)
        resolution = unknown_report(counts, tasks.resolutions)
        changed = counts != current.counts or tasks.terminal != current.tasks_done
        finished = (current.expanded and tasks.terminal >= current.tasks_total
                    and current.status != JobStatus.PAUSED
                    and not awaits_reconciliation(storage, current, counts))
        if not (changed or finished or refilled or resolution != current.unknown_resolution):
            return None
        changes: Entity = {"tasks_done": tasks.terminal, **count_columns(counts),
                           UNKNOWN_RESOLUTION_COLUMN: counts_json(resolution)}
        if changed or refilled:
            changes["progress_at"] = iso(now)  # a refill counts as progress: the next pass waits again
        if finished:
            changes.update(status=JobStatus.COMPLETED.value, completed_at=iso(now))
        return changes

    before = job.status
    try:
        job = change_job(storage, job.tenant_id, job.id, decide)
    except (NotFound, StateConflict) as err:
        log.info("job row busy; next pass job=%s reason=%s", job.id, type(err).__name__)
        return
    campaign_follows_job(storage, job, clock)
    if job.status == JobStatus.COMPLETED and before != JobStatus.COMPLETED:
        request_delivery_log(storage, job)
        storage.table(ACTIVE_JOBS).delete(ACTIVE_PARTITION, f"{job.tenant_id}|{job.id}")
        report.jobs_closed.append(job.id)
        report.closed_jobs.append(job)
        log.info("job closed job=%s roster=%d", job.id, job.roster_size)


def awaits_reconciliation(storage: Storage, job: Job, counts: dict[str, int]) -> bool:
    """Whether a job whose tasks are all terminal must stay open for its unknowns' reconciliation.

    It has a ``Reconciles`` mark that holds it open (a resending tenant's unknown inside its
    window, or one being settled; an at-most-once tenant's marks are settled after the close), or a
    ``retrying`` row waiting for its resend: closing now would leave a non-terminal row in a
    closed job, or change a closed job's counts other than through provider events. The marks
    are read after the task rows, and a task's mark is written before it can be terminal, so a
    task seen finished here has its mark visible. One small query, only for a job about to close.
    """
    if counts.get(DeliveryStatus.RETRYING.value, 0):
        return True
    return bool(marks_of_job(storage, job.tenant_id, job.id, holding_only=True))


def requeue_stalled(
    storage: Storage, job: Job, summary: _TaskSummary, settings: Settings, now: datetime, progressed: bool
) -> tuple[int, bool]:
    """Put back on the queue what a crash left (expired leases, a window left short) and parked
    tasks whose retry time came.

    Parked tasks (only domain-deferred recipients left, off the window) have no ticket: at most
    ``TASK_WINDOW`` of them per job go back per pass, so a long deferral burst over a big job
    keeps the queue short. A job that waits for its sending domain's warm-up day is not idle.
    Returns how many tickets went out and whether that was a refill of an idle job (which
    the caller records as progress).
    """
    indexes = list(summary.stalled) + summary.parked_due[: settings.task_window]
    waiting = bool(job.waiting_until) and parse_iso(job.waiting_until) > now
    idle = bool(
        not progressed
        and not waiting
        and job.progress_at
        and (now - parse_iso(job.progress_at) > timedelta(seconds=settings.refill_after_seconds))
    )
    if idle:
        # A paused task of a running job was stopped while a resume re-enqueued the rest.
        indexes += (summary.paused + summary.pending)[: settings.task_window]
    for index in indexes:
        enqueue_task(storage, job.tenant_id, job.id, index)
    return len(indexes), idle and bool(indexes)


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
    roster = summary.roster if finished else max(job.roster_size, summary.roster)
    changes: Entity = {"tasks_done": summary.terminal, "roster_size": roster,
                       **count_columns(balance_pending(summary.counts, roster))}
    if finished:
        changes.update(completed_at=iso(now), tasks_total=summary.tasks, progress_at=iso(now))
    try:
        write_job(storage, job, changes)
    except Conflict:
        return
    campaign_follows_job(storage, job, clock)
    if finished:
        request_delivery_log(storage, job)
        storage.table(ACTIVE_JOBS).delete(ACTIVE_PARTITION, f"{job.tenant_id}|{job.id}")
        report.jobs_closed.append(job.id)
        report.closed_jobs.append(job)
        log.info("cancelled job closed job=%s roster=%d", job.id, summary.roster)


def _expansion_stalled(job: Job, settings: Settings, now) -> bool:
    if job.lease_until:
        return _expired(job.lease_until, now)
    since = job.created_at or job.progress_at
    return bool(since) and now - parse_iso(since) > timedelta(seconds=settings.lease_seconds)


def _expired(lease_until: str, now) -> bool:
    return bool(lease_until) and parse_iso(lease_until) <= now
