"""Purging delivery logs older than ``DELIVERY_LOG_RETENTION_DAYS``.

Called from the Status Manager timer, but cheap: a marker row (``ContactHistory``,
PartitionKey ``~housekeeping``, which no tenant id can equal) makes it run at most once an
hour across all hosts, and each run purges at most ``max_jobs`` jobs. A purged job keeps
its row and counts (the summary); its per-recipient rows, events, history and exported
blobs go, and ``logs_purged_at`` records when. The same hourly run purges erasure markers no
unfinished job can need any more (``core/erasures.py``).
"""

from __future__ import annotations

import logging
from datetime import timedelta

from core.blobs import delivery_logs, log_blob_name, summary_blob_name
from core.clock import Clock, iso, parse_iso, utcnow
from core.erasures import purge_expired_erasures
from core.errors import Conflict, StorageError
from core.in_flight import is_in_flight_row
from core.models import ContactHistory, Job, MessageIndexEntry, RetentionMarker
from core.settings import Settings
from core.storage import (
    CONTACT_HISTORY,
    DELIVERIES,
    DELIVERY_EVENTS,
    JOBS,
    MESSAGE_INDEX,
    Storage,
    Table,
    etag_of,
)

log = logging.getLogger("mailroom.retention")

RUN_EVERY = timedelta(hours=1)


def purge_expired_delivery_logs(
    storage: Storage, settings: Settings, clock: Clock = utcnow, every: timedelta = RUN_EVERY,
    max_jobs: int = 20,
) -> list[str]:
    """Purge the logs of jobs closed before the retention window; the job ids purged."""
    now = clock()
    if not claim_run(storage, now, every):
        return []
    purge_expired_erasures(storage, settings.delivery_log_retention_days, clock)
    cutoff = iso(now - timedelta(days=settings.delivery_log_retention_days))
    expired = storage.table(JOBS).query(
        "completed_at lt @cutoff and completed_at gt @empty", {"cutoff": cutoff, "empty": ""},
        select=["PartitionKey", "RowKey", "logs_purged_at"],
    )
    purged: list[str] = []
    for job in expired:
        if job.get("logs_purged_at"):
            continue
        purge_job_logs(storage, job["PartitionKey"], job["RowKey"])
        storage.table(JOBS).update(Job.changes(job, logs_purged_at=iso(now)))
        purged.append(job["RowKey"])
        if len(purged) >= max_jobs:
            break
    if purged:
        log.info("delivery logs purged jobs=%d", len(purged))
    return purged


def claim_run(storage: Storage, now, every: timedelta) -> bool:
    """At most one run per ``every`` across hosts (the marker row is ETag-guarded)."""
    table = storage.table(CONTACT_HISTORY)
    marker = table.find(*RetentionMarker.key())
    entity = RetentionMarker(last_run=iso(now)).to_entity()
    if marker is None:
        try:
            table.insert(entity)
        except StorageError:
            return False
        return True
    if parse_iso(marker["last_run"]) > now - every:
        return False
    try:
        table.update(entity, etag=etag_of(marker))
    except Conflict:
        return False
    return True


def purge_job_logs(storage: Storage, tenant_id: str, job_id: str) -> int:
    """Delete one job's per-recipient rows, events, history, message index and blobs."""
    span = {"lo": f"{job_id}-", "hi": f"{job_id}."}
    rows = list(storage.table(DELIVERIES).query(
        "PartitionKey ge @lo and PartitionKey lt @hi", span,
        select=["PartitionKey", "RowKey", "provider_message_id"],
    ))
    events = storage.table(DELIVERY_EVENTS).query(
        "PartitionKey ge @lo and PartitionKey lt @hi", span, select=["PartitionKey", "RowKey"]
    )
    _delete(storage.table(DELIVERY_EVENTS), [(e["PartitionKey"], e["RowKey"]) for e in events])
    # In-flight rows go with the rest, but name no contact: no history row to look for.
    history = [ContactHistory.key(tenant_id, r["RowKey"], job_id) for r in rows if not is_in_flight_row(r)]
    _delete(storage.table(CONTACT_HISTORY), history)
    _delete(storage.table(MESSAGE_INDEX), [
        MessageIndexEntry.key(r["provider_message_id"]) for r in rows if r.get("provider_message_id")
    ])
    _delete(storage.table(DELIVERIES), [(r["PartitionKey"], r["RowKey"]) for r in rows])
    blobs = delivery_logs(storage)
    blobs.delete(log_blob_name(tenant_id, job_id))
    blobs.delete(summary_blob_name(tenant_id, job_id))
    return len(rows)


def _delete(table: Table, keys: list[tuple[str, str]]) -> None:
    """Batched deletes; a batch naming a missing row fails as a whole, so retry it row by row."""
    by_partition: dict[str, list[tuple[str, str]]] = {}
    for key in keys:
        by_partition.setdefault(key[0], []).append(key)
    for group in by_partition.values():
        for i in range(0, len(group), 100):
            chunk = group[i:i + 100]
            try:
                table.batch_delete(chunk)
            except StorageError:
                for partition, row in chunk:
                    table.delete(partition, row)
