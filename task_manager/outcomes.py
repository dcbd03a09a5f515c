"""Writing what happened: delivery rows and counts, the stale owner's facts, the task's end.

A host that lost its task writes only terminal facts it observed (``owns_task_for``,
``record_as_stale_owner``; ``task_manager/lease.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from core.clock import iso
from core.counts import mark_for_recount, tally, tally_delivery_rows
from core.errors import Conflict
from core.in_flight import in_flight_row_key
from core.models import InFlightRow, Recipient, Tenant, delivery_entity
from core.reconciliation import RESENDING_SEMANTICS, mark_unknowns, reconcile_due_in
from core.status import DeliveryStatus, TaskStatus
from core.storage import DELIVERIES, TASKS
from task_manager.dispatch import Outcome
from task_manager.run import CHUNK, TaskOutcome, TaskRun, in_chunks

log = logging.getLogger("mailroom.task_manager")


def record_outcomes(
    run: TaskRun, outcomes: Iterable[tuple[int, Outcome]], in_flight: Iterable[int] | None = None
) -> None:
    """The delivery rows of (at most) one chunk, in table batches of ≤100, and the task's counts.

    ``in_flight``: when given, the run's in-flight row (``core/in_flight.py``) is rewritten in the
    same batch to name exactly these recipients (about to be handed over; an empty list once the
    run has nothing in the provider's hands). The outcomes' rows come first, so a batch split in
    two still records an outcome before its recipient leaves the list.
    """
    now = iso(run.clock())
    outcomes = list(outcomes)
    rows: list[dict[str, object]] = []
    for index, outcome in outcomes:
        recipient = run.recipients[index]
        if recipient.contact_id in run.erased:  # the row keeps the outcome, not the address
            recipient = Recipient(recipient.contact_id, "", "", {})
        row = delivery_entity(
            run.task,
            recipient,
            outcome.status,
            now,
            reason=outcome.reason,
            provider=outcome.provider,
            message_id=outcome.message_id,
            attempts=outcome.attempts,
        )
        if outcome.status == DeliveryStatus.RETRYING:
            # When throttling began: the horizon runs from here, across re-queues.
            row["throttled_since"] = run.throttled_since.get(index, now) if outcome.throttled else ""
        rows.append(row)
        replaces = DeliveryStatus.RETRYING.value if index in run.was_retrying else None
        run.was_retrying.discard(index)
        tally(run.task.counts, str(outcome.status), replaces)
    if in_flight is not None:
        rows.append(in_flight_row(run, [run.recipients[index].contact_id for index in in_flight], now))
    if rows:
        run.storage.table(DELIVERIES).batch_upsert(rows)
        mark_unknown_outcomes(run, outcomes)


def in_flight_row(run: TaskRun, contact_ids: list[str], at: str, row_key: str = "") -> dict[str, object]:
    """This run's in-flight row (or, with ``row_key``, an earlier run's) naming ``contact_ids``."""
    task = run.task
    return InFlightRow(task.delivery_partition, row_key or in_flight_row_key(task.attempt),
                       job_id=task.job_id, tenant_id=task.tenant_id, in_flight=contact_ids,
                       in_flight_count=len(contact_ids), updated_at=at).to_entity()


def empty_in_flight_rows(run: TaskRun, row_keys: list[str]) -> None:
    """Earlier runs' in-flight rows once a recovery has recorded what they named: they name nobody."""
    if row_keys:
        now = iso(run.clock())
        run.storage.table(DELIVERIES).batch_upsert(in_flight_row(run, [], now, key) for key in row_keys)


def resends_unknowns(run: TaskRun) -> bool:
    """Whether the tenant chose ``reconcile`` (or ``at-least-once``): only then may an unknown be resent.

    Only those jobs wait for the reconciliation window. An at-most-once job closes as soon as its
    tasks are done: holding every job with an unknown for the whole window (15 min by default)
    would delay the close of most crash-hit jobs; its unknowns are settled after the close as a
    report only (``resolution``), which leaves the closed job's counts as they are.
    """
    tenant_row = run.jobs.tenant(run.storage, run.job.tenant_id)
    tenant = Tenant.from_entity({"RowKey": run.job.tenant_id, **tenant_row})
    return (tenant.delivery_semantics or run.settings.delivery_semantics) in RESENDING_SEMANTICS


def mark_unknown_outcomes(run: TaskRun, outcomes: Iterable[tuple[int, Outcome]]) -> None:
    """Ask the Status Manager to settle this task's ``unknown`` recipients (``core.reconciliation``).

    Written after their rows and before the task can finish, so a job never looks finished to
    the Status Manager while an unknown it would reconcile has no mark. Every tenant's unknowns
    are marked (each job reports how its unknowns were resolved); only a resending tenant's
    mark holds the job open.
    """
    waits = [reconcile_due_in(o.provider, run.settings)
             for _, o in outcomes if o.status == DeliveryStatus.UNKNOWN]
    if waits:
        task = run.task
        mark_unknowns(run.storage, [(task.tenant_id, task.job_id, task.row_key)], max(waits), run.clock,
                      holds_job_open=resends_unknowns(run))


def owns_task_for(run: TaskRun, outcomes: list[tuple[int, Outcome]]) -> bool:
    """Whether we may write these outcome rows as the task's owner (see ``task_manager/lease.py``).

    Non-terminal rows need proof (an ETag-guarded renewal): a ``retrying`` row left by a host
    that lost the task would stay in a finished job forever.
    """
    if run.lease is None:
        return True
    needs_proof = any(not DeliveryStatus(o.status).is_terminal for _, o in outcomes)
    return run.lease.still_ours(prove=needs_proof)


def record_as_stale_owner(run: TaskRun, outcomes: list[tuple[int, Outcome]]) -> None:
    """Another host took the task while we sent: keep only the terminal facts we observed.

    The new owner recorded our chunk ``unknown`` (or is about to). A provider's acceptance
    or rejection is a fact worth keeping, so it replaces a missing or ``unknown`` row and
    nothing else (a row events have moved on, or the new owner's own outcome, stands); a
    non-terminal state (``retrying``) is never written. The task's counts are not ours to
    write any more: the rows changed, so the task is marked for the Status Manager's recount.
    """
    facts = [(i, o) for i, o in outcomes
             if DeliveryStatus(o.status).is_terminal and o.status != DeliveryStatus.UNKNOWN]
    if not facts:
        return
    task = run.task
    rows_now = run.storage.table(DELIVERIES).partition(task.delivery_partition, select=["RowKey", "status"])
    recorded = {row["RowKey"]: row.get("status", "") for row in rows_now}
    now = iso(run.clock())
    rows = [
        delivery_entity(task, run.recipients[i], o.status, now, reason=o.reason, provider=o.provider,
                        message_id=o.message_id, attempts=o.attempts)
        for i, o in facts
        if recorded.get(run.recipients[i].contact_id, DeliveryStatus.UNKNOWN.value) == DeliveryStatus.UNKNOWN
    ]
    if rows:
        run.storage.table(DELIVERIES).batch_upsert(rows)
        mark_for_recount(run.storage, [(task.tenant_id, task.job_id, task.row_key)], run.clock)
    log.warning("stale owner kept facts job=%s task=%d rows=%d", task.job_id, task.index, len(rows))


def finish_task(run: TaskRun, status: TaskStatus = TaskStatus.DONE, recount: bool = True) -> None:
    """Mark the task terminal with its counts.

    ``recount``: counted from its delivery rows (one partition scan). A task that sent all its
    recipients itself finishes with its running counts instead: they tally every row it wrote
    (recovery starts them from the rows), and a row a provider event moved meanwhile has a
    ``Recounts`` mark the Status Manager acts on once the task is terminal, before it sums the
    job (``status_manager/recounts.py``), so the job's counts are exact within a pass either way.
    """
    task = run.task
    if recount:
        task.counts, task.resolutions = tally_delivery_rows(run.storage, task.delivery_partition)
    task.status, task.in_flight, task.leftover = status.value, [], []
    task.cursor = task.size
    task.lease_owner, task.lease_until = "", ""
    task.updated_at = task.completed_at = iso(run.clock())
    try:
        task.etag = run.storage.table(TASKS).update(task.progress_entity(), etag=task.etag)
    except Conflict:
        log.warning("task finished by another owner job=%s task=%d", task.job_id, task.index)


def close_unsent(run: TaskRun, status: DeliveryStatus, reason: str) -> TaskOutcome:
    """Give every not-yet-attempted recipient a terminal ``status`` (cancel)."""
    task = run.task
    remaining = task.leftover + list(range(task.cursor, task.size))
    for chunk in in_chunks(remaining, CHUNK):
        record_outcomes(run, [(i, Outcome(status, reason)) for i in chunk])
    finish_task(run, TaskStatus.CANCELLED)
    return TaskOutcome.CANCELLED
