"""Retry-failed: a new job whose roster is the recipients an earlier job left ``failed``.

The new job is an ordinary job (same template, same campaign, its own tasks, windows and
delivery log) except for where the Job Manager reads its roster: the earlier job's
``failed`` delivery rows, one range query in (task, contact) order, instead of the tenant's
contacts. Each recipient is read back from Contacts, so a contact deleted or unsubscribed
since is left out and the send uses the contact as it is now; suppressions are checked again
at send time as for every job.

Idempotent: the new job's id is derived from the earlier job, so asking twice gives the same
job (and re-enqueues its ticket if a crash lost it).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

from core.clock import Clock, iso, parse_iso, utcnow
from core.contact_tables import ContactTables
from core.errors import StateConflict
from core.ids import job_id_for
from core.job_state import open_job
from core.messages import JobTicket
from core.models import Job, Recipient
from core.status import DeliveryStatus, JobStatus
from core.storage import DELIVERIES, JOB_QUEUE, JOBS, Storage

log = logging.getLogger("mailroom.job_manager")
_FAILED = DeliveryStatus.FAILED.value


def retry_job_id(job: Job) -> str:
    """The retry job of ``job``: one per job, sorting after it (its time is the job's end)."""
    return job_id_for(f"{job.id}|retry-failed", parse_iso(job.completed_at))


def start_retry_job(
    storage: Storage, tenant_id: str, job_id: str, clock: Clock = utcnow, actor: str = ""
) -> Job:
    """Create (or find) the job that retries ``job_id``'s failed recipients and queue it.

    ``NotFound`` for an unknown job; ``StateConflict`` while the job still runs or when
    nothing in it failed. A dry run's retry is a dry run too; ``actor`` (key id) created it.
    """
    old = Job.from_entity(storage.table(JOBS).get(tenant_id, job_id))
    if not JobStatus(old.status).is_final or not old.completed_at:
        raise StateConflict(f"a {old.status} job is still running; retry its failures once it ends")
    if old.counts.get(DeliveryStatus.FAILED.value, 0) <= 0:
        raise StateConflict("no recipient of this job ended failed")
    now = iso(clock())
    job = Job(
        id=retry_job_id(old), tenant_id=tenant_id, campaign_id=old.campaign_id,
        campaign_name=old.campaign_name, template=old.template, template_ref=old.template_ref,
        criteria=old.criteria,
        status=JobStatus.QUEUED.value, created_at=now, progress_at=now, retry_of=old.id,
        dry_run=old.dry_run, actors={"created_by": actor} if actor else {},
    )
    job = open_job(storage, job)
    if JobStatus(job.status).is_final:
        return job
    storage.queue(JOB_QUEUE).send(JobTicket(tenant_id=tenant_id, job_id=job.id).to_text())
    log.info("retry job queued job=%s retry_of=%s failed=%d", job.id, old.id, old.counts["failed"])
    return job


def stream_failed_roster(
    storage: Storage, tenant_id: str, old_job_id: str, after: str
) -> Iterator[tuple[str, Recipient | None]]:
    """The earlier job's failed recipients after cursor ``after`` (``"{partition}|{contact}"``).

    Like ``stream_roster`` it yields every row it passes (``None`` when the contact is gone
    or no longer active) so the cursor always says how far the scan went.
    """
    query = "PartitionKey ge @lo and PartitionKey lt @hi and status eq @s"
    params: dict[str, Any] = {"lo": f"{old_job_id}-", "hi": f"{old_job_id}.", "s": _FAILED}
    if after:
        partition, _, row_key = after.partition("|")
        query += " and ( PartitionKey gt @pk or ( PartitionKey eq @pk and RowKey gt @rk ) )"
        params.update(pk=partition, rk=row_key)
    contacts = ContactTables(storage)
    for row in storage.table(DELIVERIES).query(query, params, select=["PartitionKey", "RowKey"]):
        cursor = f"{row['PartitionKey']}|{row['RowKey']}"
        contact = contacts.find(tenant_id, row["RowKey"])
        if contact is None or contact.get("state", "active") != "active":
            yield cursor, None
            continue
        yield cursor, Recipient(
            row["RowKey"], contact.get("email", ""), contact.get("name", "") or "",
            _json_or(contact.get("attributes"), {}),
        )


def _json_or(value: object, default: Any) -> Any:
    return json.loads(value) if isinstance(value, str) and value else default
