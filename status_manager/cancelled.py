"""Settling a cancelled job: its never-attempted recipients end ``cancelled`` (Status Manager).

A cancel (``job_manager.control.cancel_job``) only moves the job's status; each Status
Manager pass then closes the job's idle tasks here, leaves a task that is mid-chunk to its
owner (or re-enqueues it when the owner died, so the Task Manager records its in-flight
recipients ``unknown``), and the job closes once every task is terminal.
"""

from __future__ import annotations

import logging

from core.clock import Clock, iso, later, parse_iso, utcnow
from core.counts import count_delivery_rows
from core.errors import Conflict, NotFound
from core.models import TASK_SUMMARY_COLUMNS, Job, Task, delivery_entity, unpack_recipients
from core.status import DeliveryStatus, TaskStatus
from core.storage import DELIVERIES, TASKS, Storage
from core.task_window import enqueue_task

log = logging.getLogger("mailroom.status_manager")

CANCEL_REASON = "the job was cancelled before this recipient was sent"
CANCEL_OWNER = "status-manager-cancel"


def close_cancelled_tasks(storage: Storage, job: Job, clock: Clock = utcnow, budget: int = 50) -> int:
    """Give the never-attempted recipients of a cancelled job's idle tasks ``cancelled``.

    An idle task (``pending``, or ``paused`` between chunks) is claimed with its ETag like
    the Task Manager claims it, so a host that claims it at the same moment wins or loses
    cleanly. A task mid-chunk is left to its owner, or, when the owner died, re-enqueued so
    the Task Manager records its in-flight recipients ``unknown`` and closes the rest.
    Returns how many tasks were closed (at most ``budget`` per call).
    """
    now = clock()
    closed = 0
    for summary in storage.table(TASKS).partition(job.id, select=TASK_SUMMARY_COLUMNS):
        status = TaskStatus(summary.get("status", "pending"))
        if status.is_terminal:
            continue
        if status == TaskStatus.SENDING:
            lease = summary.get("lease_until", "")
            if not lease or parse_iso(lease) <= now:
                enqueue_task(storage, job.tenant_id, job.id, int(summary["RowKey"]))
            continue
        if closed >= budget:
            break
        if close_idle_task(storage, job.id, summary["RowKey"], clock):
            closed += 1
    return closed


def close_idle_task(storage: Storage, job_id: str, row_key: str, clock: Clock = utcnow) -> bool:
    """Claim one idle task, record its unsent recipients ``cancelled`` and mark it so."""
    tasks = storage.table(TASKS)
    try:
        entity = tasks.get(job_id, row_key)
    except NotFound:
        return False
    task = Task.from_entity(entity)
    if task.status not in (TaskStatus.PENDING, TaskStatus.PAUSED, TaskStatus.RETRYING) or task.in_flight:
        return False
    task.status, task.lease_owner = TaskStatus.SENDING.value, CANCEL_OWNER
    task.lease_until = later(clock, 60)
    task.updated_at = iso(clock())
    try:
        task.etag = tasks.update(task.progress_entity(), etag=task.etag)
    except Conflict:
        return False  # a Task Manager took it; it sees the cancel itself
    recipients = unpack_recipients(entity)
    at = iso(clock())
    remaining = task.leftover + list(range(task.cursor, task.size))
    rows = [
        delivery_entity(task, recipients[i], DeliveryStatus.CANCELLED, at, reason=CANCEL_REASON)
        for i in remaining
    ]
    storage.table(DELIVERIES).batch_upsert(rows)
    task.counts = count_delivery_rows(storage, task.delivery_partition)
    task.status, task.cursor, task.leftover, task.in_flight = TaskStatus.CANCELLED.value, task.size, [], []
    task.lease_owner, task.lease_until = "", ""
    task.updated_at = task.completed_at = at
    try:
        tasks.update(task.progress_entity(), etag=task.etag)
    except Conflict:
        log.warning("cancelled task changed under us job=%s task=%s", job_id, row_key)
        return False
    return True
