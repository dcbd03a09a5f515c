"""Transactional email (``POST /emails``): a one-task job on the same Task Manager path.

A transactional email is a job with no campaign whose single task holds its recipients
(≤50), so it is claimed, rendered, suppression-checked, sent, retried and accounted for
exactly like a campaign's task, and the Status Manager closes it the same way. Its id is
the job id.

``idempotency_key``: a row in ``IdempotencyKeys`` (PartitionKey tenant, RowKey the
sha256 of the key) maps the key to the email id for 24 hours. The row is written before
the job, so two concurrent requests with one key race on one insert and the loser answers
the winner's id; every creation step after it is idempotent (an existing job or task is
taken as written, a duplicate ticket finds the task claimed or done), so a request that
died halfway is finished by its retry, and nothing is sent twice.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from core.clock import Clock, iso, parse_iso, utcnow
from core.errors import AlreadyExists, Conflict
from core.ids import contact_id_for, new_id, normalize_email
from core.job_state import open_job
from core.models import IdempotencyKey, Job, Recipient, Task, Tenant
from core.status import JobStatus
from core.storage import IDEMPOTENCY_KEYS, JOBS, TASKS, Entity, Storage
from core.task_window import enqueue_task
from core.template_store import store_template

log = logging.getLogger("mailroom.transactional")

IDEMPOTENCY_HOURS = 24
IDEMPOTENCY_TIME = timedelta(hours=IDEMPOTENCY_HOURS)
TRANSACTIONAL = "transactional"  # the campaign name a transactional job shows


@dataclass(frozen=True)
class TransactionalEmail:
    """A validated request: the API's schema builds it."""

    to: list[str]
    template: dict[str, Any]  # a TemplateSpec as a dict (subject, html, text, from_email, ...)
    data: dict[str, Any] = field(default_factory=dict)
    idempotency_key: str | None = None


@dataclass(frozen=True)
class Submitted:
    id: str
    created: bool  # False: an earlier request with the same idempotency_key made it


def submit_email(
    storage: Storage, tenant: Tenant, email: TransactionalEmail, clock: Clock = utcnow
) -> Submitted:
    """Queue one transactional email (or return the one its idempotency key already made)."""
    email_id, created = new_id(), True
    if email.idempotency_key:
        email_id, created = claim_idempotency_key(storage, tenant.id, email.idempotency_key, email_id, clock)
        if not created and storage.table(JOBS).find(tenant.id, email_id) is not None:
            return Submitted(email_id, created=False)
    create_email_job(storage, tenant, email, email_id, clock)
    return Submitted(email_id, created)


def claim_idempotency_key(
    storage: Storage, tenant_id: str, key: str, email_id: str, clock: Clock
) -> tuple[str, bool]:
    """(email id, whether this request owns it): the key's id for 24 h, else ``email_id``."""
    table = storage.table(IDEMPOTENCY_KEYS)
    now = clock()
    row = IdempotencyKey(*IdempotencyKey.key(tenant_id, key), email_id=email_id, created_at=iso(now))
    entity = row.to_entity()
    try:
        table.insert(entity)  # the usual case: a key not seen before, one request
        return email_id, True
    except AlreadyExists:
        pass
    honoured = email_id

    def claim(existing: Entity | None) -> Entity | None:
        nonlocal honoured
        if existing is not None and now - parse_iso(existing["created_at"]) < IDEMPOTENCY_TIME:
            honoured = existing["email_id"]
            return None
        honoured = email_id
        return entity  # gone or expired: the key is free again

    try:
        table.modify(*row.keys(), claim, replace=True)
    except Conflict as err:
        raise Conflict("the idempotency key is being claimed by concurrent requests") from err
    return honoured, honoured == email_id


def create_email_job(
    storage: Storage, tenant: Tenant, email: TransactionalEmail, email_id: str, clock: Clock
) -> None:
    """The email's recipients (each address once) as a one-task job."""
    now = iso(clock())
    recipients = [
        Recipient(contact_id_for(tenant.contact_salt, address), address, "", dict(email.data))
        for address in dict.fromkeys(normalize_email(a) for a in email.to)
    ]
    template_ref = store_template(storage, tenant.id, email_id, email.template)  # a large body: a blob
    job = Job(
        id=email_id, tenant_id=tenant.id, campaign_id="", campaign_name=TRANSACTIONAL,
        template={} if template_ref else email.template, template_ref=template_ref,
        criteria={}, status=JobStatus.SENDING.value,
        roster_size=len(recipients), expanded=True, tasks_total=1,
        created_at=now, started_at=now, expanded_at=now, progress_at=now,
    )
    queue_one_task_job(storage, job, recipients, clock)


def queue_one_task_job(storage: Storage, job: Job, recipients: list[Recipient], clock: Clock) -> None:
    """Job, active-job index, one task, one ticket: each step safe to repeat.

    ``job`` is an expanded job holding all of ``recipients`` in task 0; from here the Task
    Manager and the Status Manager treat it like any campaign job.
    """
    now = iso(clock())
    open_job(storage, job)
    task = Task(job_id=job.id, index=0, tenant_id=job.tenant_id, size=len(recipients), created_at=now,
                updated_at=now)
    try:
        storage.table(TASKS).insert(task.to_entity(recipients))
    except AlreadyExists:
        pass
    enqueue_task(storage, job.tenant_id, job.id, 0)
    log.info("one-task send queued tenant=%s id=%s recipients=%d", job.tenant_id, job.id, len(recipients))


def is_transactional(job: Job) -> bool:
    """A ``POST /emails`` email or a campaign's test send: what ``GET /emails/{id}`` shows."""
    return not job.campaign_id and (job.campaign_name == TRANSACTIONAL or bool(job.test_of))
