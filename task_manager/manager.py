"""Sends one task: claim → recover → drop suppressed → render → send → record.

The at-most-once argument (DESIGN §4, invariant 2) in two kinds of write:

1. ``claim_task`` takes the task with an ETag-guarded update and a lease. A duplicate
   message, or a second host, finds the lease held (or the task done) and stops.
2. Recipients go to the provider in send groups (``SEND_GROUP_SIZE``, at most 50). One table
   batch per group writes the previous group's outcomes *and* the run's in-flight row naming
   this group (``core/in_flight.py``); only then is the group handed over. Suppressed, erased,
   invalid and unrenderable recipients are decided before any hand-over and written with the
   next batch: they are never named in flight. A recipient's own row is written once, with
   its outcome. The task row itself is written again only when the task finishes, pauses or
   is re-queued (and by the lease's heartbeat): the delivery rows are the progress, so storage
   work per email is about one request per send group.

A host that dies mid-task leaves the task ``sending`` under a lease that runs out. Whoever
claims it next reads the task's delivery partition: recorded outcomes stand, a recipient an
in-flight row names (handed over, answer not recorded: at most one group per run) becomes
``unknown``, and every other recipient without an outcome (never handed over) goes back to
``leftover`` and is sent normally.

While a chunk's sends are in flight a heartbeat keeps the lease alive, and before its
outcomes are written the owner shows it still holds the lease; a host that lost it writes
only terminal facts it observed, never ``retrying`` (``task_manager/lease.py``).

Throttling (429, ``Retry-After``) is not failure: a throttled recipient is deferred as
``retrying`` without spending an attempt, for ``THROTTLE_HORIZON_SECONDS`` at most (from
``throttled_since`` on its delivery row), after which it is ``failed`` with the reason.
A recipient the sending domain's warm-up allowance turned away waits for the next UTC day the
same way, with no horizon (``hold_job_for_warmup`` tells the job). A task whose only leftovers
were deferred by their own domain parks off its job's window (``requeue_for_retry``).

Transient failures that outlast the task's retry budget (DESIGN §5) do not keep the host:
their delivery rows say ``retrying`` (with the attempts so far and the last reason), their
indexes go to ``leftover`` — saved with every ``in_flight`` write, so a crash cannot lose
them — and the task is re-queued with a visibility delay as ``retrying``. A ``retrying``
recipient was *not* handed over (the provider refused it before accepting), so sending it
again is not a second hand-off; its attempt count carries over so ``MAX_SEND_ATTEMPTS``
bounds it across re-queues, after which it is ``failed`` with the last reason.

The steps live in modules named for what they hold (one import order, each only below it):
``run`` (the run's state, ``TaskOutcome``), ``outcomes`` (delivery rows, the task's end),
``claim`` (claim, recovery, release), ``sending`` (decide, render, mark, hand over send groups),
``stops`` (pause, cancel, re-queue, provider refusal, poison failure); this module is the pipeline.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext

from core.clock import Clock, utcnow
from core.errors import NotFound
from core.messages import TaskTicket
from core.settings import Settings
from core.status import DeliveryStatus, JobStatus
from core.storage import Storage
from core.suppressions import SuppressionCache
from core.task_window import enqueue_next_in_window
from task_manager.claim import claim_task, recover_in_flight, release_after_error
from task_manager.dispatch import Dispatcher
from task_manager.job_cache import JobCache
from task_manager.lease import TaskLease
from task_manager.mark_budget import MarkShare
from task_manager.outcomes import close_unsent, finish_task
from task_manager.run import CHUNK, Backlog, TaskOutcome, TaskRun, in_chunks
from task_manager.sending import GroupSender, open_group_sender, refresh_erasures, send_group_size
from task_manager.stops import (
    hold_job_for_warmup,
    pause_for_provider,
    record_task_failure,
    requeue_for_retry,
    stop_if_job_halted,
)

# Importable from here as before the split (callers and tests name them by this module).
__all__ = ["CHUNK", "TaskOutcome", "record_task_failure", "run_claimed_task", "send_group_size", "send_task"]

log = logging.getLogger("mailroom.task_manager")


def send_task(
    storage: Storage,
    ticket: TaskTicket,
    settings: Settings,
    dispatcher: Dispatcher,
    suppressions: SuppressionCache,
    jobs: JobCache,
    owner: str,
    clock: Clock = utcnow,
) -> TaskOutcome:
    """Send every recipient of one task exactly once (or account for why not)."""
    try:  # read fresh: a task never starts on a pause or cancel it could have seen
        job = jobs.job(storage, ticket.tenant_id, ticket.job_id, max_age=0)
    except NotFound:
        return TaskOutcome.MISSING
    if job.status == JobStatus.PAUSED:
        return TaskOutcome.PAUSED  # resume re-enqueues the job's unfinished tasks
    # Wait for a share of the host's in-flight budget before the claim: waiting, the task
    # holds no lease (no heartbeat to pay) and another host may take it (``mark_budget.py``).
    share = MarkShare(dispatcher.marks, ticket.tenant_id, send_group_size(settings))
    share.hold()
    try:
        claimed = claim_task(storage, ticket, settings, owner, clock)
        if isinstance(claimed, TaskOutcome):
            return claimed
        task, recipients, resumed = claimed
        run = TaskRun(storage, settings, job, task, recipients, clock, jobs, resumed=resumed)
        run.lease = TaskLease(storage, task, settings.lease_seconds, clock)
        try:
            return run_claimed_task(run, dispatcher, suppressions, share)
        except Exception as err:
            release_after_error(run, err)
            raise
    finally:
        share.give_back()


def run_claimed_task(
    run: TaskRun, dispatcher: Dispatcher, suppressions: SuppressionCache, share: MarkShare | None = None
) -> TaskOutcome:
    """A claimed task, top to bottom: recover → per chunk: stop if halted, send its groups → finish.

    Each group of a chunk is decided, named in flight, handed over and recorded with the next
    group's marks (``GroupSender.send_chunk``); what is left ends in a re-queue, a pause or done.
    """
    task, job = run.task, run.job
    closed = job.status in (JobStatus.CANCELLED, JobStatus.FAILED)
    if run.resumed or closed:
        refresh_erasures(run)  # these paths write rows before any group is checked
    if run.resumed:
        recover_in_flight(run)
    if closed:
        return close_unsent(run, DeliveryStatus.CANCELLED, "job cancelled before this recipient was sent")
    pending = task.leftover + list(range(task.cursor, task.size))
    sends = open_group_sender(run, dispatcher, suppressions, pending, share)
    pending = [i for i in pending if i not in run.recorded_leftover]
    try:
        return send_chunks(run, sends, pending)
    finally:
        sends.give_back_marks()  # whatever ended the run, its share of the host's marks goes back


def send_chunks(run: TaskRun, sends: GroupSender, pending: list[int]) -> TaskOutcome:
    """The claimed task's recipients chunk by chunk, then its end: done, re-queued, paused or lost."""
    task, job = run.task, run.job
    had_leftover = bool(task.leftover)  # a retry or a reconciliation resend: recount at the end
    backlog = Backlog(waiting=[i for i in task.leftover if i not in run.recorded_leftover])
    chunks = in_chunks(pending, CHUNK)
    for number, chunk in enumerate(chunks):
        if number > 0 and (stopped := stop_if_job_halted(run, chunks[number:], backlog, sends)):
            return stopped
        backlog.take(chunk)
        with run.lease.kept_alive() if run.lease is not None else nullcontext():
            outcomes = sends.send_chunk(chunk)
        if sends.lost:
            log.warning("task lease lost mid-task job=%s task=%d", task.job_id, task.index)
            return TaskOutcome.LOST
        if halted := backlog.note_sent(task, chunk, outcomes):
            if not sends.flush():
                return TaskOutcome.LOST
            return pause_for_provider(run, halted, chunk, outcomes)
    if not sends.flush():
        log.warning("task lease lost before its last outcomes job=%s task=%d", task.job_id, task.index)
        return TaskOutcome.LOST
    if backlog.retry_later:
        if backlog.warmup is not None:
            hold_job_for_warmup(run, backlog.warmup)
        return requeue_for_retry(run, backlog.retry_later, backlog.retry_after, park=backlog.parks)
    # Running counts stand, except after leftovers: their rows may have moved (events, a
    # reconciliation's resolutions) since the task's counts were written.
    finish_task(run, recount=had_leftover)
    enqueue_next_in_window(run.storage, job.tenant_id, job.id, task.index, run.settings.task_window)
    log.info("task done job=%s task=%d recipients=%d", task.job_id, task.index, task.size)
    return TaskOutcome.DONE
