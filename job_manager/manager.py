"""Expands a job's criteria into its roster and splits it into tasks.

The roster is streamed page by page from the tenant's contacts (never held whole):
matching contacts fill a task of ``TASK_SIZE`` recipients; each full task is inserted
(one entity, recipients compressed inside) and then the job's ``roster_cursor`` (the
last contact RowKey the task covers) is saved under the expansion lease. A crash or a
duplicate ticket resumes from the cursor; a task that already exists is taken as
written and its own cursor wins, so a re-run never makes two tasks for one contact.

Before its time budget ends the manager re-enqueues a continuation ticket. Tasks go on
``task-queue`` only inside the job's window: task ``k`` is enqueued when it is written
if ``k < TASK_WINDOW`` or task ``k - TASK_WINDOW`` is already done; otherwise the Task
Manager that finishes ``k - TASK_WINDOW`` enqueues it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from core.clock import Clock, iso, later, parse_iso, utcnow
from core.contact_tables import ContactTables
from core.counts import balance_pending, count_columns
from core.criteria import ContactView, Criteria, parse_criteria
from core.errors import AlreadyExists, Conflict, NotFound, StorageError
from core.job_state import fail_job, load_job, write_job
from core.messages import JobTicket
from core.models import TENANT_PARTITION, Job, Recipient, Task, Tenant, pack_recipients, packed_size
from core.settings import Settings
from core.status import JobStatus
from core.storage import JOB_QUEUE, JOBS, TASKS, TENANTS, Entity, Storage
from core.task_window import enqueue_if_in_window
from core.template_store import load_template
from core.templates import TemplateSpec, substitutable
from job_manager.retry_failed import stream_failed_roster
from job_manager.roster_ranges import scan_contacts
from providers.factory import first_provider

log = logging.getLogger("mailroom.job_manager")

_EXPANDABLE = frozenset({JobStatus.QUEUED.value, JobStatus.EXPANDING.value, JobStatus.SENDING.value})

CONTACT_COLUMNS = ["RowKey", "email", "name", "attributes", "lists", "state"]
# Keep one task entity well under the 1 MiB entity limit whatever the attributes weigh.
MAX_TASK_BYTES = 800_000


class ExpansionOutcome(StrEnum):
    EXPANDED = "expanded"  # the roster is complete
    CONTINUED = "continued"  # budget reached; a continuation ticket is queued
    NOT_NEEDED = "not_needed"  # already expanded, final, paused, or gone
    BUSY = "busy"  # another host holds the expansion lease
    REFUSED = "refused"  # the roster is over the tenant's max_roster: the job failed, nothing sent


@dataclass
class _Buffer:
    recipients: list[Recipient]
    cursor: str = ""
    raw_bytes: int = 0  # the JSON of ``recipients[:measured]``: a bound on what they pack to
    measured: int = 0


def expand_roster(
    storage: Storage,
    ticket: JobTicket,
    settings: Settings,
    owner: str,
    clock: Clock = utcnow,
    monotonic: Callable[[], float] = time.monotonic,
) -> ExpansionOutcome:
    """Expand (or continue expanding) the job named by ``ticket``."""
    jobs = storage.table(JOBS)
    job: Job | None  # claiming and each task write may find the job taken
    try:
        job = Job.from_entity(jobs.get(ticket.tenant_id, ticket.job_id))
    except NotFound:
        log.warning("job ticket for a missing job job=%s", ticket.job_id)
        return ExpansionOutcome.NOT_NEEDED
    if job.expanded or JobStatus(job.status).is_final or job.status == JobStatus.PAUSED:
        return ExpansionOutcome.NOT_NEEDED
    job = claim_expansion(storage, job, settings, owner, clock)
    if job is None:
        return ExpansionOutcome.BUSY

    criteria = parse_criteria(job.criteria or {})
    first_run = not job.tasks_total and not job.roster_cursor
    if first_run and refuse_oversized_roster(storage, job, criteria, clock):
        return ExpansionOutcome.REFUSED
    size = task_size_for(storage, job, settings)
    deadline = monotonic() + settings.job_time_budget_seconds
    renewed = deadline - settings.job_time_budget_seconds  # the claim wrote the lease
    buffer = _Buffer(recipients=[])
    for row_key, recipient in roster_of(storage, job, criteria):
        buffer.cursor = row_key
        if recipient is not None:
            buffer.recipients.append(recipient)
        full = len(buffer.recipients) >= size or _too_big(buffer)
        now = monotonic()
        out_of_time = now > deadline
        if full or (out_of_time and buffer.recipients):
            job = write_task(storage, job, buffer, settings, owner, clock)
            if job is None:
                return ExpansionOutcome.BUSY
            buffer = _Buffer(recipients=[])
            renewed = now
        elif now - renewed >= settings.lease_seconds / 3:
            if not renew_expansion_lease(storage, job, settings, owner, clock):
                return ExpansionOutcome.BUSY
            renewed = now
        if out_of_time:
            save_cursor(storage, job, buffer.cursor or job.roster_cursor, clock)
            storage.queue(JOB_QUEUE).send(ticket.to_text())
            log.info("expansion continues job=%s tasks=%d", job.id, job.tasks_total)
            return ExpansionOutcome.CONTINUED
    if buffer.recipients:
        job = write_task(storage, job, buffer, settings, owner, clock)
        if job is None:
            return ExpansionOutcome.BUSY
    finish_expansion(storage, job, owner, clock)
    log.info("roster expanded job=%s roster=%d tasks=%d", job.id, job.roster_size, job.tasks_total)
    return ExpansionOutcome.EXPANDED


def fail_expansion(storage: Storage, ticket: JobTicket, error: str, clock: Clock = utcnow) -> None:
    """The job ticket is going to ``job-queue-poison``: the job fails and says why."""
    fail_job(storage, ticket.tenant_id, ticket.job_id,
             f"roster expansion failed repeatedly ({error}); the ticket is in job-queue-poison", clock)


def claim_expansion(storage: Storage, job: Job, settings: Settings, owner: str, clock: Clock) -> Job | None:
    """Take the job's expansion lease (ETag-guarded); ``None`` when someone else holds it."""
    now = clock()
    if job.lease_owner and job.lease_owner != owner and job.lease_until and parse_iso(job.lease_until) > now:
        return None
    changes = {
        "lease_owner": owner,
        "lease_until": later(clock, settings.lease_seconds),
        "status": JobStatus.EXPANDING.value if job.status == JobStatus.QUEUED else job.status,
        "started_at": job.started_at or iso(now),
    }
    try:
        return write_job(storage, job, changes)
    except Conflict:
        return None


def task_size_for(storage: Storage, job: Job, settings: Settings) -> int:
    """``BATCHED_TASK_SIZE`` for a job the Task Manager will send batched, else ``TASK_SIZE``.

    Batched means what ``task_manager.batch_send.decide_send_mode`` decides at the job's first
    claim: batching on, SendGrid first in the tenant's order, a substitutable template. The
    answer only sizes the tasks; the send mode itself is still decided (and shown) there, so a
    job that ends up sent one by one merely has larger tasks.
    """
    if settings.batched_task_size <= 0 or settings.sendgrid_batch_size <= 0:
        return settings.task_size
    tenant = storage.table(TENANTS).find(TENANT_PARTITION, job.tenant_id) or {}
    providers = Tenant.from_entity({"RowKey": job.tenant_id, **tenant}).providers
    if first_provider(settings, providers) != "sendgrid":
        return settings.task_size
    try:
        spec = TemplateSpec.model_validate(load_template(storage, job.template, job.template_ref))
    except (ValueError, StorageError):
        return settings.task_size  # the Task Manager will say what is wrong with it
    return settings.batched_task_size if substitutable(spec) else settings.task_size


def refuse_oversized_roster(storage: Storage, job: Job, criteria: Criteria, clock: Clock) -> bool:
    """Fail the job before its first task when the roster is over the tenant's ``max_roster``.

    Tasks are enqueued as they are written, so the limit is checked by a counting scan before
    any of them exists: an over-limit campaign sends nobody rather than the first part of its
    roster. The scan stops at the first contact past the limit, and only tenants with a
    ``max_roster`` pay for it.
    """
    tenant = storage.table(TENANTS).find(TENANT_PARTITION, job.tenant_id)
    limit = (tenant or {}).get("max_roster")
    if not limit:
        return False
    matched = 0
    for _, recipient in stream_roster(storage, job.tenant_id, criteria, ""):
        matched += recipient is not None
        if matched > limit:
            break
    else:
        return False
    fail_job(storage, job.tenant_id, job.id,
             f"the roster has more than {limit} recipients, the tenant's max_roster; nothing was sent",
             clock, expanded=True, expanded_at=iso(clock()), completed_at=iso(clock()), lease_owner="",
             lease_until="")
    log.warning("roster over max_roster job=%s max_roster=%d", job.id, limit)
    return True


def roster_of(storage: Storage, job: Job, criteria: Criteria) -> Iterator[tuple[str, Recipient | None]]:
    """A retry-failed job's roster is an earlier job's failed recipients; other jobs', the criteria."""
    if job.retry_of:
        return stream_failed_roster(storage, job.tenant_id, job.retry_of, job.roster_cursor)
    return stream_roster(storage, job.tenant_id, criteria, job.roster_cursor)


def stream_roster(
    storage: Storage, tenant_id: str, criteria: Criteria, after: str
) -> Iterator[tuple[str, Recipient | None]]:
    """Every contact after ``after`` in RowKey order, with its ``Recipient`` if it matches.

    Non-matching contacts are yielded too (as ``None``) so the caller always knows how
    far the scan has gone: that RowKey is the resume cursor. Pages come in key ranges
    (``roster_ranges``), so a page costs the same at the start of a 1M roster as at its end.
    """
    for entity in scan_contacts(ContactTables(storage), tenant_id, after, CONTACT_COLUMNS):
        view = ContactView(
            email=entity.get("email", ""),
            name=entity.get("name", "") or "",
            attributes=_json_or(entity.get("attributes"), {}),
            lists=_json_or(entity.get("lists"), []),
            state=entity.get("state", "active"),
        )
        matched = criteria.matches(view)
        yield (
            entity["RowKey"],
            (Recipient(entity["RowKey"], view.email, view.name, view.attributes) if matched else None),
        )


def write_task(
    storage: Storage, job: Job, buffer: _Buffer, settings: Settings, owner: str, clock: Clock
) -> Job | None:
    """Insert the next task, then advance the job's cursor under the lease.

    Returns the updated job, or ``None`` when the lease was lost (another host resumed).
    """
    index = job.tasks_total
    now = iso(clock())
    task = Task(
        job_id=job.id,
        index=index,
        tenant_id=job.tenant_id,
        size=len(buffer.recipients),
        roster_cursor=buffer.cursor,
        created_at=now,
        updated_at=now,
    )
    cursor, size = buffer.cursor, task.size
    try:
        storage.table(TASKS).insert(task.to_entity(buffer.recipients))
    except AlreadyExists:
        # Written by a run that crashed before saving its cursor: that task is the truth.
        existing = Task.from_entity(storage.table(TASKS).get(job.id, task.row_key))
        cursor, size = existing.roster_cursor, existing.size
    job.tasks_total = index + 1
    job.roster_size += size
    job.roster_cursor = cursor
    job.lease_until = later(clock, settings.lease_seconds)
    roster_size = job.roster_size

    def progress(current: Job) -> Entity:
        # The task's recipients join the roster as ``pending``, so the counts add up at once.
        return {
            "tasks_total": job.tasks_total, "roster_size": roster_size, "roster_cursor": job.roster_cursor,
            "lease_until": job.lease_until, **count_columns(balance_pending(current.counts, roster_size)),
        }

    if not update_under_lease(storage, job, progress, owner):
        return None
    if cursor != buffer.cursor:
        return None  # resume from the stored task's cursor on the next ticket
    enqueue_if_in_window(storage, job.tenant_id, job.id, index, settings.task_window)
    return job


def renew_expansion_lease(storage: Storage, job: Job, settings: Settings, owner: str, clock: Clock) -> bool:
    """Keep the expansion lease while a scan finds few matches (no task written to renew it).

    A selective criterion can scan many pages of contacts between two tasks; without this the
    lease (short, so a dead host's expansion resumes soon) ran out mid-scan and a second host
    resumed the same expansion. False: the lease was lost (another host resumed, or a pause).
    """
    job.lease_until = later(clock, settings.lease_seconds)
    return update_under_lease(storage, job, {"lease_until": job.lease_until}, owner)


def finish_expansion(storage: Storage, job: Job, owner: str, clock: Clock) -> None:
    now = iso(clock())
    done = {"expanded": True, "expanded_at": now, "status": JobStatus.SENDING.value, "lease_owner": "",
            "lease_until": "", "progress_at": now}
    if not update_under_lease(storage, job, done, owner):
        log.warning("expansion finished after losing its lease job=%s", job.id)


def update_under_lease(
    storage: Storage, job: Job, fields: Entity | Callable[[Job], Entity], owner: str, attempts: int = 5
) -> bool:
    """An ETag-guarded job update that survives writers of *other* columns.

    The Status Manager rewrites a job's counts while its roster expands, which changes the
    ETag but not the lease. On a conflict we re-read: while the lease is still ours and the
    job still expanding (not paused or cancelled meanwhile) we retry with the new ETag (and
    ``fields``, when a function, decided again on the row as it is now); otherwise another
    host resumed the expansion, or a person stopped it, and we stop.
    """
    current = job
    for _ in range(attempts):
        changes = fields(current) if callable(fields) else fields
        try:
            write_job(storage, current, changes)
            if current is not job:
                _copy(job, current)
            return True
        except Conflict:
            current = load_job(storage, job.tenant_id, job.id)
            if current.lease_owner != owner or current.status not in _EXPANDABLE:
                return False
    return False


def _copy(job: Job, current: Job) -> None:
    """Keep the caller's in-memory job in step with the row it just wrote."""
    job.etag, job.status, job.counts = current.etag, current.status, current.counts


def save_cursor(storage: Storage, job: Job, cursor: str, clock: Clock) -> None:
    """Record how far the scan went and hand the lease to whoever takes the continuation.

    The owner is cleared so any host may claim it; ``lease_until`` stays set so the
    Status Manager re-enqueues the ticket only if nobody picks it up in time.
    """
    handed_over = {"roster_cursor": cursor, "lease_owner": "", "lease_until": later(clock, 120)}
    update_under_lease(storage, job, handed_over, job.lease_owner)  # False: someone resumed further


def _too_big(buffer: _Buffer) -> bool:
    """Whether the task would pack to more than ``MAX_TASK_BYTES``, looked at every 50 recipients.

    Each look adds only the new recipients' JSON to a running total (what they pack to is at most
    that, plus zlib's few bytes per block); only once the total nears the limit is the whole
    buffer packed and measured. Packing it at every look would cost a task of 500 the
    compression of 2,750 recipients."""
    count = len(buffer.recipients)
    if count % 50:
        return False
    fresh = [r.as_row() for r in buffer.recipients[buffer.measured:]]
    buffer.raw_bytes += len(json.dumps(fresh, separators=(",", ":"), ensure_ascii=False).encode())
    buffer.measured = count
    if buffer.raw_bytes < MAX_TASK_BYTES * 0.99:
        return False
    return packed_size(pack_recipients(buffer.recipients)) > MAX_TASK_BYTES


def _json_or(value: str | None, default: Any) -> Any:
    if not value:
        return default
    return json.loads(value)
