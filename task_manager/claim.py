"""Taking a task under a lease, recovering what an earlier owner left, and letting go after an error."""

from __future__ import annotations

import logging

from core.clock import Clock, iso, later, parse_iso
from core.counts import counts_of_statuses
from core.errors import Conflict, NotFound
from core.ids import task_id
from core.in_flight import is_in_flight_row, listed_in_flight
from core.messages import TaskTicket
from core.models import Recipient, Task, unpack_recipients
from core.settings import Settings
from core.status import DeliveryStatus, TaskStatus
from core.storage import DELIVERIES, TASKS, Storage
from task_manager.dispatch import Outcome
from task_manager.outcomes import empty_in_flight_rows, record_outcomes
from task_manager.run import TaskOutcome, TaskRun

log = logging.getLogger("mailroom.task_manager")


def claim_task(
    storage: Storage, ticket: TaskTicket, settings: Settings, owner: str, clock: Clock
) -> tuple[Task, list[Recipient], bool] | TaskOutcome:
    """Take the task under a lease (and its recipients, from the same read), or say why not.

    The flag says whether an earlier owner stopped mid-task (the task row still says ``sending``, or
    an older host left a chunk ``in_flight``): its delivery rows must be recovered first.
    """
    tasks = storage.table(TASKS)
    try:
        entity = tasks.get(ticket.job_id, task_id(ticket.task_index), select=None)
    except NotFound:
        return TaskOutcome.MISSING
    task = Task.from_entity(entity)
    if TaskStatus(task.status).is_terminal:
        return TaskOutcome.ALREADY_DONE
    now = clock()
    if task.status == TaskStatus.SENDING and task.lease_until and parse_iso(task.lease_until) > now:
        return TaskOutcome.BUSY
    if task.status == TaskStatus.RETRYING and task.lease_until and parse_iso(task.lease_until) > now:
        return TaskOutcome.BUSY  # an early duplicate; the delayed ticket is still on its way
    resumed = task.status == TaskStatus.SENDING or bool(task.in_flight)
    if not task.in_flight:  # an older host's chunk keeps its meaning until it is recovered
        task.send_marks = True
    task.status, task.lease_owner = TaskStatus.SENDING.value, owner
    task.lease_until = later(clock, settings.lease_seconds)
    task.attempt += 1
    task.updated_at = iso(now)
    try:
        task.etag = tasks.update(task.progress_entity(), etag=task.etag)
    except Conflict:
        return TaskOutcome.BUSY
    return task, unpack_recipients(entity), resumed


def recover_in_flight(run: TaskRun) -> None:
    """A previous owner stopped mid-task: keep outcomes it recorded; what it handed over is ``unknown``.

    Its delivery rows say how far it got, and its in-flight row (``core/in_flight.py``) what it
    had handed to the provider without recording the answer: those may have been sent, so they
    are ``unknown``, never resent. A recipient without an outcome (no row, or still its earlier
    ``retrying`` one) that no in-flight row names never reached the provider: it goes back to
    ``leftover`` and is sent like any other. A row saying ``sending`` (how hosts before the
    in-flight row marked a group) counts as named. A chunk an older host left ``in_flight``
    without ``send_marks`` is all ``unknown``, as that host recorded it. The in-flight rows read
    here are emptied once the unknowns are recorded: they are settled (a crash in between leaves
    them naming recipients whose rows are terminal, which a later recovery skips).
    """
    task = run.task
    recorded: dict[str, str] = {}
    named: set[str] = set()
    settled: list[str] = []
    for row in run.storage.table(DELIVERIES).partition(
        task.delivery_partition, select=["RowKey", "status", "in_flight"]
    ):
        if is_in_flight_row(row):
            listed = listed_in_flight(row)
            named.update(listed)
            if listed:
                settled.append(row["RowKey"])
        else:
            recorded[row["RowKey"]] = row.get("status", "")
            if row.get("status") == DeliveryStatus.SENDING:
                named.add(row["RowKey"])
    handed_over_unmarked = set() if task.send_marks else set(task.in_flight)
    unknown: list[tuple[int, Outcome]] = []
    never_handed: list[int] = []
    for index in dict.fromkeys(task.in_flight + task.leftover + list(range(task.cursor, task.size))):
        contact_id = run.recipients[index].contact_id
        status = recorded.get(contact_id)
        if status is not None and DeliveryStatus(status).is_terminal:
            continue
        if contact_id in named or index in handed_over_unmarked:
            reason = "the host sending this recipient stopped; it may have been sent, so it is not resent"
            unknown.append((index, Outcome(DeliveryStatus.UNKNOWN, reason)))
        else:
            never_handed.append(index)
    task.counts = counts_of_statuses(recorded.values())
    record_outcomes(run, unknown)
    empty_in_flight_rows(run, settled)
    task.cursor, task.leftover, task.in_flight, task.send_marks = task.size, never_handed, [], True
    log.warning("recovered task job=%s task=%d unknown=%d unsent=%d",
                task.job_id, task.index, len(unknown), len(never_handed))


def release_after_error(run: TaskRun, err: Exception) -> None:
    """Let the host's retry claim the task at once instead of waiting out our lease.

    The task stays ``sending``: the next owner recovers its delivery rows, and whatever an
    in-flight row names may have been sent, so it is recorded ``unknown`` rather than sent again.
    """
    task = run.task
    task.lease_owner, task.lease_until = "", iso(run.clock())
    task.last_error = f"{type(err).__name__} on attempt {task.attempt}"
    try:
        run.storage.table(TASKS).update(task.progress_entity(), etag=task.etag)
    except Exception:  # noqa: BLE001 - best effort; the lease then simply expires
        log.warning("could not release task job=%s task=%d", task.job_id, task.index)
