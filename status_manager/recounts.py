"""Counts that follow provider events: tasks recounted from their rows, never moved by deltas.

A provider event changes a delivery row (``sent`` → ``delivered``) long after, or while,
its task counted it. Moving counters by +1/-1 from the event processor raced the task's
own final recount: a row changed between the recount and the task's terminal write was
in neither, and a later move then subtracted from a counter that did not hold it (a
job's counts no longer added up to its roster). So counts are only ever snapshots:

1. The event processor marks each task whose rows it changed: one ``Recounts`` row
   (partition ``due``, RowKey ``{tenant}|{job}|{task}``), written *after* the row change.
2. Each Status Manager pass, for every mark whose task is terminal: count the task's
   delivery rows, write the task's counts (ETag-guarded), then delete the mark only if it
   is unchanged (``If-Match``). A mark rewritten meanwhile survives, so a change the
   recount may have missed is counted next pass. A running task's mark waits: the task's
   own final recount may have been taken before the change.
3. For a closed job with a recounted task, the Status Manager re-sums the job's count
   columns and its campaign's counts from the task rows (``refresh_closed_job_counts``; an
   open job is summed every pass anyway).

So a job's counts add up to its roster at every moment, and match its rows within a pass.
"""

from __future__ import annotations

import logging

from core.counts import RECOUNT_PARTITION, counts_from_json, counts_json, tally_delivery_rows
from core.errors import Conflict
from core.models import Task
from core.status import TaskStatus
from core.storage import RECOUNTS, TASKS, Entity, Storage, etag_of

log = logging.getLogger("mailroom.status_manager")




def recount_marked_tasks(storage: Storage) -> set[tuple[str, str]]:
    """One pass over the marks; returns the (tenant, job) of every task recounted."""
    recounted = 0
    jobs: set[tuple[str, str]] = set()
    for mark in list(storage.table(RECOUNTS).partition(RECOUNT_PARTITION)):
        tenant_id, job_id, task_id = mark["tenant_id"], mark["job_id"], mark["task_id"]
        # Status and counts only: the task row also holds its compressed recipients.
        task = storage.table(TASKS).find(job_id, task_id, select=["status", "counts", "resolutions"])
        if task is not None:
            if not TaskStatus(task.get("status", "pending")).is_terminal:
                continue  # its final recount, or a later pass, counts it
            if not recount_task(storage, job_id, task_id, task):
                continue  # the task changed under us: next pass
            recounted += 1
            jobs.add((tenant_id, job_id))
        try:
            storage.table(RECOUNTS).delete(RECOUNT_PARTITION, mark["RowKey"], etag=etag_of(mark))
        except Conflict:
            pass  # marked again since we read it: recount next pass
    if recounted:
        log.info("tasks recounted after provider events tasks=%d jobs=%d", recounted, len(jobs))
    return jobs


def recount_task(storage: Storage, job_id: str, task_id: str, task: Entity) -> bool:
    """Write the task's counts as its delivery rows say; False when the task changed meanwhile."""
    counts, resolutions = tally_delivery_rows(storage, f"{job_id}-{task_id}")
    stored = counts_from_json(task.get("counts")), counts_from_json(task.get("resolutions"))
    if (counts, resolutions) == stored:
        return True
    try:
        counted = Task.changes((job_id, task_id), counts=counts_json(counts),
                               resolutions=counts_json(resolutions))
        storage.table(TASKS).update(counted, etag=etag_of(task))
    except Conflict:
        return False
    return True
