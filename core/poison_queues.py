"""Dead letters: what waits in the ``-poison`` queues, and putting one back or throwing it away.

A message lands in ``<queue>-poison`` when it was malformed (``functions.runtime.reject_message``)
or failed ``maxDequeueCount`` times; either way its job's ``last_error`` (and a task's own
``last_error``) says why. Support staff read the messages with the job and reason they name;
the operator replays one (sends its text to the queue it came from, then deletes it) or
discards it. Nothing consumes the poison queues, so receiving one to act on it races nobody but
another operator.

Limits of the service this lives with: peek and receive see at most 32 messages, so a listing
and an action reach the first 32 visible messages of a poison queue (its depth is reported
apart). A message's text holds ids and cursors only (tickets, event batches with addresses
hashed), and the listing shows none of it beyond the ids it parses.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from core.clock import iso
from core.errors import BadMessage, NotFound
from core.ids import task_id
from core.messages import JobTicket, TaskTicket, ids_in, parse_ticket
from core.storage import ALL_QUEUES, JOB_QUEUE, JOBS, POISON_SUFFIX, TASK_QUEUE, TASKS, Storage

PEEK_LIMIT = 32
RECEIVE_VISIBILITY_SECONDS = 30  # how long messages we receive to find one stay hidden at most


@dataclass(frozen=True)
class PoisonMessage:
    """One dead letter and what it names."""

    id: str
    queue: str  # the queue it came from (replay sends it back there)
    kind: str  # job ticket, task ticket, provider events, delivery log, unreadable
    inserted_at: str
    dequeue_count: int
    tenant_id: str
    job_id: str
    task_index: int | None
    job_status: str
    reason: str


def check_queue(queue: str) -> str:
    """``queue`` when it is one of ours (``job-queue``, ``task-queue``, ``events-queue``)."""
    if queue not in ALL_QUEUES:
        raise NotFound(f"no queue named {queue!r}")
    return queue


def list_poison(storage: Storage, queue: str) -> list[PoisonMessage]:
    """The first 32 visible messages of ``queue``'s poison twin, oldest first."""
    messages = storage.poison(check_queue(queue)).peek_messages(PEEK_LIMIT)
    return [describe(storage, queue, message) for message in messages]


def replay_poison(storage: Storage, queue: str, message_id: str) -> PoisonMessage:
    """Send the message's text back to ``queue``, then delete it from the poison queue.

    Sent before deleted: a crash in between leaves a duplicate ticket, which the managers
    already treat as a no-op (a held lease, a finished task), never a lost one.
    """
    return _take(storage, queue, message_id, replay=True)


def discard_poison(storage: Storage, queue: str, message_id: str) -> PoisonMessage:
    """Delete the message from the poison queue for good."""
    return _take(storage, queue, message_id, replay=False)


def _take(storage: Storage, queue: str, message_id: str, replay: bool) -> PoisonMessage:
    poison = storage.poison(check_queue(queue))
    received = poison.receive(PEEK_LIMIT, visibility_timeout=RECEIVE_VISIBILITY_SECONDS)
    wanted = next((m for m in received if m.id == message_id), None)
    try:
        if wanted is None:
            raise NotFound(f"no message {message_id!r} in the first {PEEK_LIMIT} of {queue}{POISON_SUFFIX}")
        described = describe(storage, queue, wanted)
        if replay:
            storage.queue(queue).send(wanted.content)
        poison.delete(wanted)
        return described
    finally:
        for message in received:
            if message is not wanted:
                poison.release(message)


def describe(storage: Storage, queue: str, message: Any) -> PoisonMessage:
    """What a dead letter names: its kind, tenant, job, task, the job's status and the reason."""
    text = message.content or ""
    kind, tenant_id, job_id, task_index, reason = _parse(queue, text)
    job_status = ""
    if tenant_id and job_id:
        job = storage.table(JOBS).find(tenant_id, job_id, select=["status", "last_error", "failure_reason"])
        if job is not None:
            job_status = job.get("status", "")
            reason = reason or job.get("last_error", "") or job.get("failure_reason", "")
        if task_index is not None:
            task = storage.table(TASKS).find(job_id, task_id(task_index), select=["last_error"])
            reason = (task or {}).get("last_error", "") or reason
    inserted = message.inserted_on
    return PoisonMessage(
        id=message.id, queue=queue, kind=kind,
        inserted_at=iso(inserted) if isinstance(inserted, datetime) else "",
        dequeue_count=int(message.dequeue_count or 0), tenant_id=tenant_id or "", job_id=job_id or "",
        task_index=task_index, job_status=job_status, reason=reason or "no reason recorded",
    )


def _parse(queue: str, text: str) -> tuple[str, str | None, str | None, int | None, str]:
    """(kind, tenant, job, task index, reason when the text itself is the problem)."""
    try:
        if queue == TASK_QUEUE:
            task = parse_ticket(TaskTicket, text)
            return "task ticket", task.tenant_id, task.job_id, task.task_index, ""
        if queue == JOB_QUEUE:
            job = parse_ticket(JobTicket, text)
            return "job ticket", job.tenant_id, job.job_id, None, ""
        return _parse_events(text)
    except BadMessage as err:
        tenant_id, job_id = ids_in(text)
        return "unreadable", tenant_id, job_id, None, f"malformed message: {err}"


def _parse_events(text: str) -> tuple[str, str | None, str | None, int | None, str]:
    try:
        value = json.loads(text)
    except ValueError as err:
        raise BadMessage("not JSON") from err
    if not isinstance(value, dict):
        raise BadMessage("not a JSON object")
    if value.get("kind") == "delivery_log":
        tenant_id, job_id = ids_in(text)
        return "delivery log", tenant_id, job_id, None, ""
    events = value.get("events")
    count = len(events) if isinstance(events, list) else 0
    return "provider events", None, None, None, f"a batch of {count} provider events that failed repeatedly"
