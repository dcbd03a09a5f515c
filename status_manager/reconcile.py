"""Reconciliation: settle ``unknown`` recipients once the provider's events had time to speak.

The Task Manager marks a task in ``Reconciles`` when it records an ``unknown`` outcome, due at
the end of ``RECONCILE_WINDOW_SECONDS`` (``core.reconciliation``). Each Status Manager pass reads
that one partition (empty when nothing is unknown: one request) and, for a due mark whose task
is terminal (of an open job, or of a closed one: then as a report only), looks only at that
task's ``unknown`` rows:

- a row an event reached is no longer ``unknown`` (the event processor merged it and wrote
  ``resolution=accepted_by_event``): nothing to do;
- sent through a provider without an event feed: ``resolution=no_event_feed``, stays ``unknown``;
- younger than the window: the mark is moved to its end;
- older, ``at-most-once`` (a mark that does not hold the job open; the job may have closed
  already), or of a job a cancel closed: stays ``unknown`` with "not accepted by the provider:
  no event within N s" and ``resolution=not_accepted``, so the job's counts stay as they were
  at its close and its ``unknown_resolution`` says how many were not accepted (a late event
  still lifts the row); from a mark an older Task Manager wrote (it holds the job open):
  ``failed`` with that reason and ``resolution=not_accepted`` (retry-failed may pick it; a late
  event still lifts it);
- older, ``reconcile`` or ``at-least-once``, never resent: ``retrying`` with ``resolution=resent``,
  and the task is re-opened over exactly those rows and re-queued. The Task Manager sends them
  through the usual claim, lease and fencing, as the same task, so the message carries the same
  job/task/contact ids and a late event for the first attempt still finds the row.

Nobody is resent twice, even with two passes at once: a row moves ``unknown`` → ``retrying``
only by an ETag-guarded write that also sets ``resolution=resent``, which no later pass undoes;
the task is re-opened by an ETag-guarded write over a task row read as terminal, with the rows
that say ``retrying`` then; and a task run clears its ``leftover``. A pass that converted rows
but lost the race to re-open the task marks it again (due now), so the next pass re-opens it
for the rows the winner did not see. Counts add up throughout: every write is a whole row or a
task's snapshot of its rows. The job does not close while it has a mark or a ``retrying`` row
(``status_manager/manager.py``), so a closed job's counts change only through provider events.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from core.clock import Clock, iso, parse_iso, utcnow
from core.counts import counts_json, tally_delivery_rows
from core.errors import Conflict
from core.models import (
    RECONCILE_PARTITION,
    TENANT_PARTITION,
    Delivery,
    Job,
    Task,
    Tenant,
    unpack_recipients,
)
from core.reconciliation import (
    NO_EVENT_FEED,
    NOT_ACCEPTED,
    RESENDING_SEMANTICS,
    RESENT,
    has_event_feed,
    mark_holds_job_open,
    mark_unknowns,
    not_accepted_reason,
)
from core.settings import Settings
from core.status import DeliveryStatus, JobStatus, TaskStatus
from core.storage import DELIVERIES, JOBS, RECONCILES, TASKS, TENANTS, Entity, Storage, etag_of
from core.task_window import enqueue_task

log = logging.getLogger("mailroom.status_manager")

_UNSETTLED = "PartitionKey eq @pk and ( status eq @unknown or status eq @retrying )"


@dataclass
class ReconcileReport:
    """What one pass settled (counts only)."""

    not_accepted: int = 0
    resent: int = 0
    no_event_feed: int = 0
    tasks_reopened: int = 0
    jobs: set[tuple[str, str]] = field(default_factory=set)  # (tenant, job) whose rows changed


def reconcile_unknowns(storage: Storage, settings: Settings, clock: Clock = utcnow) -> ReconcileReport:
    """One pass over the due marks (see the module docstring)."""
    report = ReconcileReport()
    now = clock()
    tenants: dict[str, Tenant | None] = {}
    for mark in list(storage.table(RECONCILES).partition(RECONCILE_PARTITION)):
        if mark.get("due_at") and parse_iso(mark["due_at"]) > now:
            continue
        try:
            settle_marked_task(storage, settings, mark, now, clock, tenants, report)
        except Conflict:
            log.info("reconciliation raced; next pass job=%s task=%s",
                     mark.get("job_id"), mark.get("task_id"))
    if report.not_accepted or report.resent or report.no_event_feed:
        log.info("unknowns reconciled not_accepted=%d resent=%d no_event_feed=%d tasks_reopened=%d",
                 report.not_accepted, report.resent, report.no_event_feed, report.tasks_reopened)
    return report


def settle_marked_task(
    storage: Storage, settings: Settings, mark: Entity, now: datetime, clock: Clock,
    tenants: dict[str, Tenant | None], report: ReconcileReport,
) -> None:
    """Settle one task's ``unknown`` rows; the mark goes once nothing is left to wait for."""
    tenant_id, job_id, task_id = mark["tenant_id"], mark["job_id"], mark["task_id"]
    job_row = storage.table(JOBS).find(tenant_id, job_id)
    task_row = storage.table(TASKS).find(job_id, task_id, select=None)
    if job_row is None or task_row is None:
        _drop_mark(storage, mark)  # gone: nothing left to report on
        return
    job = Job.from_entity(job_row)
    task_status = TaskStatus(task_row.get("status", "pending"))
    closed = JobStatus(job.status).is_final
    if closed and not job.completed_at:
        return  # a cancel still settling its tasks: looked at again once the job has closed
    if closed and not task_status.is_terminal:
        _drop_mark(storage, mark)
        return
    if not closed and (job.status == JobStatus.PAUSED or task_status != TaskStatus.DONE):
        return  # running, re-queued or paused: its own outcomes come first; a later pass looks
    # A closed job (an at-most-once job closes without waiting; a cancel closes any job) is only
    # reported on: its rows keep their status, so its counts move only through provider events.
    report_only = closed or not mark_holds_job_open(mark)
    if tenant_id not in tenants:
        found = storage.table(TENANTS).find(TENANT_PARTITION, tenant_id)
        tenants[tenant_id] = Tenant.from_entity(found) if found else None
    tenant = tenants[tenant_id]
    semantics = (tenant.delivery_semantics if tenant else "") or settings.delivery_semantics
    first_provider = first_provider_of(tenant, settings)
    partition = f"{job_id}-{task_id}"
    window = timedelta(seconds=settings.reconcile_window_seconds)
    wait_until: datetime | None = None
    changed = False
    for row in storage.table(DELIVERIES).query(
        _UNSETTLED, {"pk": partition, "unknown": DeliveryStatus.UNKNOWN.value,
                     "retrying": DeliveryStatus.RETRYING.value},
    ):
        if row["status"] != DeliveryStatus.UNKNOWN or row.get("resolution") in (NO_EVENT_FEED, NOT_ACCEPTED):
            continue  # settled already; a ``retrying`` row of a terminal task waits for its resend (below)
        if not has_event_feed(row.get("provider") or first_provider, settings):
            changed |= settle_row(storage, row, NO_EVENT_FEED, report, iso(now))
            continue
        since = parse_iso(row["updated_at"]) if row.get("updated_at") else now
        if since + window > now:
            wait_until = max(wait_until or since + window, since + window)
            continue
        resend = not report_only and semantics in RESENDING_SEMANTICS and not row.get("resolution")
        changed |= settle_row(storage, row, RESENT if resend else NOT_ACCEPTED, report, iso(now),
                              reason=not_accepted_reason(settings.reconcile_window_seconds),
                              keep_unknown=report_only)
    resends = [] if closed else resend_rows(storage, partition)
    if resends:
        if not reopen_task(storage, job, task_row, resends, clock):
            mark_unknowns(storage, [(tenant_id, job_id, task_id)], 0, clock)  # re-open next pass
            return
        report.tasks_reopened += 1
    elif changed:
        recount_settled_task(storage, job_id, task_id, task_row, not report_only)
    if changed or resends:
        report.jobs.add((tenant_id, job_id))
    if wait_until is not None:
        mark_unknowns(storage, [(tenant_id, job_id, task_id)], (wait_until - now).total_seconds(), clock,
                      holds_job_open=not report_only)
    else:
        _drop_mark(storage, mark)


def settle_row(
    storage: Storage, row: Entity, resolution: str, report: ReconcileReport, at: str, reason: str = "",
    keep_unknown: bool = False,
) -> bool:
    """Write one unknown row's resolution, only if it is still the ``unknown`` we read (ETag).

    ``keep_unknown``: a not-accepted row keeps its ``unknown`` status (an at-most-once job's
    counts do not change for it; only its ``resolution`` and reason say what is known now).
    """
    before = row.get("resolution") or ""

    def change(stored: Entity | None) -> Entity | None:
        if stored is None or stored.get("status") != DeliveryStatus.UNKNOWN:
            return None  # an event (or a resend) got there first
        if (stored.get("resolution") or "") != before:
            return None  # another pass settled it
        if resolution == NO_EVENT_FEED:
            return Delivery.changes(stored, resolution=NO_EVENT_FEED)
        columns: dict[str, str] = {"updated_at": at}
        if resolution == RESENT:
            columns.update(status=DeliveryStatus.RETRYING.value, resolution=RESENT,
                           reason=f"{reason}; sent once more (reconcile)")
        else:  # not accepted; a row resent once keeps saying so
            columns.update(reason=reason, resolution=before or NOT_ACCEPTED)
            if not keep_unknown:
                columns["status"] = DeliveryStatus.FAILED.value
        return Delivery.changes(stored, **columns)

    written = storage.table(DELIVERIES).modify(row["PartitionKey"], row["RowKey"], change, current=row)
    if written is None:
        return False
    if resolution == NO_EVENT_FEED:
        report.no_event_feed += 1
    elif resolution == RESENT:
        report.resent += 1
    else:
        report.not_accepted += 1
    return True


def resend_rows(storage: Storage, partition: str) -> list[str]:
    """Contact ids of the task's rows waiting for their reconciliation resend."""
    rows = storage.table(DELIVERIES).query(
        "PartitionKey eq @pk and status eq @retrying and resolution eq @resent",
        {"pk": partition, "retrying": DeliveryStatus.RETRYING.value, "resent": RESENT},
        select=["RowKey"],
    )
    return [row["RowKey"] for row in rows]


def reopen_task(storage: Storage, job: Job, task_row: Entity, contact_ids: list[str], clock: Clock) -> bool:
    """Put a finished task back to ``retrying`` over just ``contact_ids`` and queue it; False: it moved.

    One ETag-guarded write over the row read as ``done``: of two passes, one re-opens it. Its
    counts are the snapshot of its rows taken after the conversions, so they add up to its size.
    """
    task = Task.from_entity(task_row)
    index_of = {r.contact_id: i for i, r in enumerate(unpack_recipients(task_row))}
    leftover = sorted(index_of[c] for c in contact_ids if c in index_of)
    counts, resolutions = tally_delivery_rows(storage, task.delivery_partition)
    task.status, task.leftover = TaskStatus.RETRYING.value, leftover
    task.counts, task.resolutions = counts, resolutions
    task.lease_owner, task.lease_until, task.completed_at = "", iso(clock()), ""
    task.updated_at = iso(clock())
    try:
        storage.table(TASKS).update(task.progress_entity(), etag=etag_of(task_row))
    except Conflict:
        return False
    enqueue_task(storage, job.tenant_id, job.id, task.index)
    log.info("task re-opened for reconciliation job=%s task=%d recipients=%d",
             job.id, task.index, len(leftover))
    return True


def recount_settled_task(
    storage: Storage, job_id: str, task_id: str, task_row: Entity, holds_job_open: bool = True
) -> None:
    """The task's counts and resolutions as its rows say now (ETag-guarded; a lost race: next pass)."""
    counts, resolutions = tally_delivery_rows(storage, f"{job_id}-{task_id}")
    changes = Task.changes((job_id, task_id), counts=counts_json(counts),
                           resolutions=counts_json(resolutions))
    try:
        storage.table(TASKS).update(changes, etag=etag_of(task_row))
    except Conflict:
        mark_unknowns(storage, [(task_row.get("tenant_id", ""), job_id, task_id)], 0,
                      holds_job_open=holds_job_open)


def first_provider_of(tenant: Tenant | None, settings: Settings) -> str:
    """The provider a row with none recorded most likely went to: the first of the tenant's order."""
    if tenant and tenant.providers:
        return tenant.providers[0]
    names = [n.strip() for n in settings.email_providers.split(",") if n.strip()]
    return names[0] if names else settings.email_provider


def _drop_mark(storage: Storage, mark: Entity) -> None:
    try:
        storage.table(RECONCILES).delete(RECONCILE_PARTITION, mark["RowKey"], etag=etag_of(mark))
    except Conflict:
        pass  # marked again since we read it: the next pass looks again
