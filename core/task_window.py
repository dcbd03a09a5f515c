"""Task tickets and a job's window: one function puts a task on the queue, one rule decides when.

A job keeps at most ``TASK_WINDOW`` tasks queued or running (fairness, DESIGN §5): task
``k`` may go on ``task-queue`` when ``k < TASK_WINDOW`` or task ``k − TASK_WINDOW`` has let
its slot go: it is terminal, or *parked* (left with only recipients their own domain deferred,
it waits off the window: ``task_manager/stops.requeue_for_retry``; the Status Manager
re-enqueues parked tasks, a few per job per pass). Whoever writes task ``k`` (the Job
Manager) and whoever finishes or parks task ``k − TASK_WINDOW`` (the Task Manager) both
check, after their own write, whether the other has happened: one of the two always sees the
other, so every task is enqueued (a duplicate ticket is harmless: it finds the task claimed
or done). A parked task never holds a slot again, so a slot is let go at most once.

Every ticket carries the current trace context, so a campaign's tasks join its trace.
"""

from __future__ import annotations

from core.ids import task_id
from core.messages import TaskTicket
from core.status import TaskStatus
from core.storage import TASK_QUEUE, TASKS, Storage
from core.telemetry import current_traceparent


def enqueue_task(storage: Storage, tenant_id: str, job_id: str, index: int, delay: int | None = None) -> None:
    """Put task ``index`` of the job on ``task-queue`` (after ``delay`` seconds, if given)."""
    ticket = TaskTicket(
        tenant_id=tenant_id, job_id=job_id, task_index=index, traceparent=current_traceparent()
    )
    storage.queue(TASK_QUEUE).send(ticket.to_text(), visibility_timeout=delay)


def in_window(index: int, window: int, behind_let_go: bool) -> bool:
    """The window rule: the first ``window`` tasks, then each once the one ``window`` before it
    ended or parked."""
    return index < window or behind_let_go


def enqueue_if_in_window(storage: Storage, tenant_id: str, job_id: str, index: int, window: int) -> bool:
    """A task was just written: enqueue it now if the job's window has room for it."""
    behind_let_go = False
    if index >= window:
        behind = storage.table(TASKS).find(job_id, task_id(index - window), select=["status", "parked"])
        behind_let_go = behind is not None and (
            TaskStatus(behind.get("status", "pending")).is_terminal or bool(behind.get("parked")))
    if not in_window(index, window, behind_let_go):
        return False  # the Task Manager finishing or parking task index-window enqueues it
    enqueue_task(storage, tenant_id, job_id, index)
    return True


def enqueue_next_in_window(storage: Storage, tenant_id: str, job_id: str, finished: int, window: int) -> bool:
    """Task ``finished`` ended or parked: the task ``window`` places ahead goes on the queue, if
    written and waiting."""
    index = finished + window
    nxt = storage.table(TASKS).find(job_id, task_id(index), select=["status"])
    if nxt is None or nxt.get("status") != TaskStatus.PENDING:
        return False
    enqueue_task(storage, tenant_id, job_id, index)
    return True
