"""Erasure markers: the contacts a tenant deleted, for the jobs that still carry them.

A job's tasks hold their recipients (addresses included) from the moment the roster is
expanded, so deleting the ``Contacts`` row does not stop a running job from mailing the
person. ``DELETE /contacts/{id}`` therefore first writes a marker here, and whoever is about
to hand an address to a provider, or write it into a row or a blob, asks which of the
tenant's contacts were erased since the job started.

``Erasures``: PartitionKey tenant id, RowKey ``{erased_at}|{contact id}``. Keyed by time
(not by contact) so "erased since this job started" is one key-range query over a short
range, which is what the Task Manager asks once per chunk: usually an empty answer, one
request per ≤200 recipients. A repeated DELETE adds a second marker; that is harmless.
Markers hold no address.

Retention: a marker matters only while a job that started before it can still write, and
``purge_expired_erasures`` keeps it ``DELIVERY_LOG_RETENTION_DAYS`` and at least as long as
the oldest unfinished job has existed.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from core.clock import Clock, iso, parse_iso, utcnow
from core.models import ACTIVE_PARTITION, Erasure, Job
from core.storage import ACTIVE_JOBS, ERASURES, Storage

log = logging.getLogger("mailroom.erasures")

# Markers are stamped by the API host's clock, job starts by the Job Manager host's: look
# this much further back than the job's start so clock skew between hosts cannot hide one.
CLOCK_SKEW = timedelta(minutes=10)
ERASED_REASON = "contact deleted"


def record_erasure(storage: Storage, tenant_id: str, contact_id: str, clock: Clock = utcnow) -> str:
    """Write the marker (before anything else of the erasure); the time it says."""
    erased_at = iso(clock())
    storage.table(ERASURES).upsert(Erasure(tenant_id, contact_id, erased_at).to_entity())
    return erased_at


def job_erasure_horizon(job: Job) -> str:
    """Markers from this instant on may concern the job (its start, less the clock skew)."""
    started = job.started_at or job.created_at
    if not started:
        return ""
    return iso(parse_iso(started) - CLOCK_SKEW)


def erased_since(storage: Storage, tenant_id: str, since: str) -> set[str]:
    """Contact ids the tenant erased at or after ``since`` (one key-range query)."""
    rows = storage.table(ERASURES).query(
        "PartitionKey eq @t and RowKey ge @since", {"t": tenant_id, "since": since}, select=["contact_id"],
        strings_only=True,
    )
    return {row["contact_id"] for row in rows}


def erased_contacts_of_job(storage: Storage, job: Job) -> set[str]:
    """Contacts erased since ``job`` started: it must neither send to nor write their addresses."""
    return erased_since(storage, job.tenant_id, job_erasure_horizon(job))


def purge_expired_erasures(storage: Storage, retention_days: int, clock: Clock = utcnow) -> int:
    """Delete markers no unfinished job could still need; how many went.

    Kept ``retention_days`` (the delivery-log retention) and never younger than the start of
    the oldest job on the ``ActiveJobs`` index, since a paused job may resume much later.
    """
    cutoff = clock() - timedelta(days=retention_days)
    oldest = oldest_active_job_start(storage)
    if oldest is not None:
        cutoff = min(cutoff, oldest - CLOCK_SKEW)
    table = storage.table(ERASURES)
    expired = table.query("RowKey lt @cutoff", {"cutoff": iso(cutoff)}, select=["PartitionKey", "RowKey"])
    keys = [(row["PartitionKey"], row["RowKey"]) for row in expired]
    for key in keys:
        table.delete(*key)
    if keys:
        log.info("erasure markers purged markers=%d", len(keys))
    return len(keys)


def oldest_active_job_start(storage: Storage) -> datetime | None:
    """When the oldest job still on the ActiveJobs index was created (``since``: before its start)."""
    starts = [
        parse_iso(row["since"])
        for row in storage.table(ACTIVE_JOBS).partition(ACTIVE_PARTITION, select=["since"])
        if row.get("since")
    ]
    return min(starts, default=None)
