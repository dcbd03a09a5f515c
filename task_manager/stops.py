"""The ways a task stops before it is done: a pause or cancel of its job, a re-queue for its
``retrying`` recipients, a provider's refusal as a whole, and a message gone to the poison queue."""

from __future__ import annotations

import logging
from datetime import timedelta

from core.clock import Clock, iso, later, parse_iso, utcnow
from core.counts import sum_task_counts
from core.errors import Conflict, NotFound, WarmupDeferred
from core.ids import task_id
from core.job_state import pause_job_for
from core.messages import TaskTicket
from core.models import TASK_SUMMARY_COLUMNS, Job, Task, unpack_recipients
from core.settings import Settings
from core.status import DeliveryStatus, JobStatus, TaskStatus
from core.storage import JOBS, TASKS, Storage
from core.task_window import enqueue_next_in_window, enqueue_task
from core.warmup_schedule import days_to_send
from task_manager.claim import recover_in_flight
from task_manager.dispatch import HALTED, NOT_ATTEMPTED, Outcome
from task_manager.job_cache import HALTING, JobCache
from task_manager.outcomes import close_unsent, finish_task, record_outcomes
from task_manager.run import CHUNK, Backlog, TaskOutcome, TaskRun, in_chunks
from task_manager.sending import GroupSender, refresh_erasures

log = logging.getLogger("mailroom.task_manager")


def stop_if_job_halted(
    run: TaskRun, rest: list[list[int]], backlog: Backlog, sends: GroupSender
) -> TaskOutcome | None:
    """At a chunk boundary: stop when the job was paused or cancelled meanwhile.

    The job row comes from the host's ``JobCache``, at most ``JOB_STATUS_CHECK_SECONDS`` old
    (and read fresh before stopping), so a pause by a person or by another task's provider
    refusal stops this task within about a second instead of at its end, at the cost of one
    job read per second per host rather than one per task.
    """
    task = run.task
    try:
        status = run.jobs.job(run.storage, run.job.tenant_id, run.job.id,
                              run.settings.job_status_check_seconds).status
    except NotFound:
        return None
    if status not in HALTING:
        return None
    if not sends.flush():
        return TaskOutcome.LOST
    unsent = [i for chunk in rest for i in chunk]
    unsent_set = set(unsent)
    task.leftover = unsent + [i for i in backlog.waiting if i not in unsent_set] + backlog.retry_later
    task.cursor, task.in_flight = task.size, []
    if status != JobStatus.PAUSED:
        if run.lease is not None and not run.lease.still_ours(prove=True):
            return TaskOutcome.LOST  # the new owner settles the cancel; our rows would overwrite its sends
        return close_unsent(run, DeliveryStatus.CANCELLED, "job cancelled before this recipient was sent")
    task.status, task.lease_owner, task.lease_until = TaskStatus.PAUSED.value, "", ""
    task.updated_at = iso(run.clock())
    try:
        task.etag = run.storage.table(TASKS).update(task.progress_entity(), etag=task.etag)
    except Conflict:
        return TaskOutcome.LOST
    log.info("task stopped by a pause job=%s task=%d unsent=%d", task.job_id, task.index, len(task.leftover))
    return TaskOutcome.PAUSED


def requeue_for_retry(run: TaskRun, indexes: list[int], delay: int, park: bool = False) -> TaskOutcome:
    """Put the task back on the queue, invisible for ``delay`` s, for its ``retrying`` recipients.

    The ticket goes first: if saving the task fails after it, the ticket finds the task
    still ours and harmless; if the ticket fails, the host's retry of this message still
    finds the leftovers (saved with every ``in_flight`` write).

    ``park``: every recipient left was deferred by its own domain (a deferral burst, or its pace
    had no token). Such a task must not hold its job's window: other domains' recipients in the
    tasks behind it would wait out the burst with it. So it *parks*: no ticket (the Status
    Manager re-enqueues parked tasks when due, a few per job per pass, so a long burst cannot
    fill the queue with them) and, after its row says ``parked``, the task ``TASK_WINDOW``
    places ahead is enqueued exactly as if this one had finished (``core/task_window.py``).
    """
    task, job = run.task, run.job
    if park:
        task.parked = True
    else:
        enqueue_task(run.storage, job.tenant_id, job.id, task.index, delay)
    task.status, task.in_flight, task.lease_owner = TaskStatus.RETRYING.value, [], ""
    task.lease_until = later(run.clock, delay)  # not before: an early duplicate waits
    task.updated_at = iso(run.clock())
    try:
        task.etag = run.storage.table(TASKS).update(task.progress_entity(), etag=task.etag)
    except Conflict:
        log.warning("task changed before its retry was saved job=%s task=%d", task.job_id, task.index)
        return TaskOutcome.RETRYING
    if park:
        enqueue_next_in_window(run.storage, job.tenant_id, job.id, task.index, run.settings.task_window)
    log.info("task re-queued job=%s task=%d retrying=%d delay=%ds parked=%s",
             task.job_id, task.index, len(indexes), delay, park)
    return TaskOutcome.RETRYING


def hold_job_for_warmup(run: TaskRun, held: WarmupDeferred) -> None:
    """Say on the job why it stopped sending and when it goes on: its sending domain's warm-up.

    ``waiting_until`` is the next UTC day; ``waiting_eta`` the start of the day the rest of the
    roster fits the ramp (what is left: the roster less the outcomes in the other task rows and
    this run's own). A read of the job's task rows and one merge of three columns, once a day
    per job and host (skipped when the job already says so); the Status Manager does not refill
    the window of a job that waits, and ``GET /jobs/{id}`` shows the reason and that ETA until
    the wait is over.
    """
    job, task = run.job, run.task
    if job.waiting_until == held.continues_at:
        return
    others = [row for row in run.storage.table(TASKS).partition(job.id, select=TASK_SUMMARY_COLUMNS)
              if int(row["RowKey"]) != task.index]
    counts = sum_task_counts(others).counts
    done = sum(n for counted in (counts, task.counts) for status, n in counted.items()
               if DeliveryStatus(status).is_terminal)
    remaining = max(1, job.roster_size - done)
    eta = parse_iso(held.continues_at) + timedelta(days=days_to_send(held.allowances_ahead, remaining))
    job.waiting_reason, job.waiting_until, job.waiting_eta = held.reason, held.continues_at, iso(eta)
    run.storage.table(JOBS).update(Job.changes(
        (job.tenant_id, job.id), waiting_reason=held.reason, waiting_until=held.continues_at,
        waiting_eta=iso(eta)))
    log.info("job waits for warm-up job=%s until=%s", job.id, held.continues_at)


def pause_for_provider(
    run: TaskRun, halted: list[int], chunk: list[int], outcomes: list[Outcome]
) -> TaskOutcome:
    """The provider refused as a whole: keep the rest unattempted and pause the job."""
    task, job = run.task, run.job
    reason = next(o.reason for o in outcomes if o.status == HALTED and o.reason != NOT_ATTEMPTED)
    task.leftover = halted + task.leftover + list(range(task.cursor, task.size))
    task.cursor = task.size
    task.in_flight = []
    task.status, task.lease_owner, task.lease_until = TaskStatus.PAUSED.value, "", ""
    task.last_error = f"provider refused: {reason}"
    task.updated_at = iso(run.clock())
    run.storage.table(TASKS).update(task.progress_entity(), etag=task.etag)
    # ETag-guarded through the state machine: a cancel that lands at the same moment wins.
    pause_job_for(run.storage, job.tenant_id, job.id,
                  f"paused: the email provider refused to send ({reason})", run.clock)
    log.error("job paused by provider job=%s task=%d", job.id, task.index)
    return TaskOutcome.PAUSED


def record_task_failure(
    storage: Storage, ticket: TaskTicket, settings: Settings, reason: str, clock: Clock = utcnow
) -> None:
    """A task message is going to the poison queue: account for its recipients and say why.

    Recipients that have no outcome yet end ``failed`` with the reason (those in flight
    ``unknown``), the task is closed and the job's ``last_error`` names the task.
    """
    try:
        task = Task.from_entity(storage.table(TASKS).get(ticket.job_id, task_id(ticket.task_index)))
        job = Job.from_entity(storage.table(JOBS).get(ticket.tenant_id, ticket.job_id))
    except NotFound:
        return
    if TaskStatus(task.status).is_terminal:
        return
    run = TaskRun(storage, settings, job, task, [], clock, JobCache())
    run.recipients = unpack_recipients(storage.table(TASKS).get(task.job_id, task.row_key))
    refresh_erasures(run)
    if task.in_flight or task.status == TaskStatus.SENDING:
        recover_in_flight(run)
    remaining = task.leftover + list(range(task.cursor, task.size))
    for chunk in in_chunks(remaining, CHUNK):
        record_outcomes(run, [(i, Outcome(DeliveryStatus.FAILED, f"task failed: {reason}")) for i in chunk])
    task.last_error = reason
    finish_task(run)
    last_error = f"task {task.row_key} failed and went to task-queue-poison: {reason}"
    storage.table(JOBS).update(Job.changes((job.tenant_id, job.id), last_error=last_error))
