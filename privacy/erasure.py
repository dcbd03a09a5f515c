"""Erasing a contact's address from everything delivery tracking kept (``DELETE /contacts/{id}``).

The delivery *facts* stay (statuses, counts, timelines), the address goes:

- ``Deliveries`` rows: ``email`` blanked (``redacted``);
- ``DeliveryEvents`` rows: the provider's response text blanked (it is scrubbed of
  addresses on the way in; this removes anything a provider phrased unusually);
- ``Tasks``: the compressed recipient list of each finished task that carried the
  contact is rewritten without its address, name and attributes (a running task is left
  to its owner: rewriting it would break the owner's ETag; it is counted in ``skipped_tasks``);
- exported ``delivery-logs`` CSV blobs: the contact's row rewritten with a blank address;
- ``Suppressions``: the row stays (keyed by a hash, so the address is still never sent
  to) but its ``email`` column is blanked.

``ContactHistory``, ``MessageIndex`` and orphaned events never hold addresses.
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass

from core.blobs import delivery_logs
from core.errors import Conflict, NotFound
from core.ids import email_hash, normalize_email
from core.models import Recipient, log_blob_name, pack_recipients, unpack_recipients
from core.status import TaskStatus
from core.storage import (
    CONTACT_HISTORY,
    DELIVERIES,
    DELIVERY_EVENTS,
    JOBS,
    SUPPRESSIONS,
    TASKS,
    Entity,
    Storage,
    etag_of,
)

log = logging.getLogger("mailroom.erasure")


@dataclass
class ErasureReport:
    deliveries: int = 0
    events: int = 0
    tasks: int = 0
    skipped_tasks: int = 0
    blobs: int = 0
    suppressions: int = 0


def erase_contact_traces(storage: Storage, tenant_id: str, contact_id: str, email: str) -> ErasureReport:
    """Remove ``email`` (the contact's address) from delivery tracking; keep the facts."""
    report = ErasureReport()
    for job_id, partition in contact_partitions(storage, tenant_id, contact_id):
        redact_delivery_row(storage, partition, contact_id, report)
        redact_events(storage, partition, contact_id, report)
        redact_task(storage, job_id, partition[len(job_id) + 1:], contact_id, report)
        redact_blob(storage, tenant_id, job_id, contact_id, report)
    if email:
        redact_suppression(storage, tenant_id, email, report)
    log.info("contact erased tenant=%s contact=%s deliveries=%d tasks=%d skipped_tasks=%d blobs=%d",
             tenant_id, contact_id, report.deliveries, report.tasks, report.skipped_tasks, report.blobs)
    return report


def contact_partitions(storage: Storage, tenant_id: str, contact_id: str) -> list[tuple[str, str]]:
    """(job, delivery partition) of every delivery row of the contact in the tenant's jobs."""
    found: dict[str, str] = {}
    history = storage.table(CONTACT_HISTORY).query(
        "PartitionKey eq @t and RowKey ge @lo and RowKey lt @hi",
        {"t": tenant_id, "lo": f"{contact_id}|", "hi": f"{contact_id}}}"},
    )
    for row in history:
        if row.get("job_id") and row.get("task_id"):
            found[row["job_id"]] = f"{row['job_id']}-{row['task_id']}"
    for job in storage.table(JOBS).query("PartitionKey eq @t", {"t": tenant_id}, select=["RowKey"]):
        job_id = job["RowKey"]
        if job_id in found:
            continue
        rows = storage.table(DELIVERIES).query(
            "PartitionKey ge @lo and PartitionKey lt @hi and RowKey eq @c",
            {"lo": f"{job_id}-", "hi": f"{job_id}.", "c": contact_id}, select=["PartitionKey"],
        )
        for row in rows:
            found[job_id] = row["PartitionKey"]
    return sorted(found.items())


def redact_delivery_row(storage: Storage, partition: str, contact_id: str, report: ErasureReport) -> None:
    deliveries = storage.table(DELIVERIES)
    if deliveries.find(partition, contact_id) is None:
        return
    deliveries.update({"PartitionKey": partition, "RowKey": contact_id, "email": "", "redacted": True})
    report.deliveries += 1


def redact_events(storage: Storage, partition: str, contact_id: str, report: ErasureReport) -> None:
    table = storage.table(DELIVERY_EVENTS)
    rows = list(table.query(
        "PartitionKey eq @pk and RowKey ge @lo and RowKey lt @hi",
        {"pk": partition, "lo": f"{contact_id}|", "hi": f"{contact_id}}}"}, select=["PartitionKey", "RowKey"],
    ))
    updates: list[Entity] = [
        {"PartitionKey": r["PartitionKey"], "RowKey": r["RowKey"], "provider_response": "", "redacted": True}
        for r in rows
    ]
    table.batch_upsert(updates)
    report.events += len(updates)


def redact_task(storage: Storage, job_id: str, task_id: str, contact_id: str, report: ErasureReport) -> None:
    """Rewrite a finished task's recipients without the contact's personal data (ETag-guarded)."""
    tasks = storage.table(TASKS)
    for _ in range(5):
        try:
            entity = tasks.get(job_id, task_id)
        except NotFound:
            return
        if not TaskStatus(entity.get("status", "pending")).is_terminal:
            report.skipped_tasks += 1
            return
        recipients = unpack_recipients(entity)
        if not any(r.contact_id == contact_id and (r.email or r.name) for r in recipients):
            return
        cleaned = [
            Recipient(r.contact_id, "", "", {}) if r.contact_id == contact_id else r for r in recipients
        ]
        columns = pack_recipients(cleaned)
        stale = [k for k in entity if k.startswith("recipients_") and k not in columns]
        update: Entity = {"PartitionKey": job_id, "RowKey": task_id, **columns}
        update.update({k: b"" for k in stale})
        try:
            tasks.update(update, etag=etag_of(entity))
        except Conflict:
            continue
        report.tasks += 1
        return


def redact_blob(
    storage: Storage, tenant_id: str, job_id: str, contact_id: str, report: ErasureReport
) -> None:
    """Blank the contact's address in the job's exported CSV, if one was written."""
    blobs = delivery_logs(storage)
    name = log_blob_name(tenant_id, job_id)
    try:
        text = blobs.read(name).decode("utf-8")
    except NotFound:
        return
    out = io.StringIO()
    writer = csv.writer(out)
    changed = False
    for row in csv.reader(io.StringIO(text)):
        if row and row[0] == contact_id and len(row) > 1 and row[1]:
            row[1] = ""
            changed = True
        writer.writerow(row)
    if changed:
        blobs.put(name, out.getvalue().encode("utf-8"), "text/csv; charset=utf-8")
        report.blobs += 1


def redact_suppression(storage: Storage, tenant_id: str, email: str, report: ErasureReport) -> None:
    """Keep the suppression (hash-keyed, still enforced) but forget the address text."""
    table = storage.table(SUPPRESSIONS)
    key = email_hash(normalize_email(email))
    if table.find(tenant_id, key) is None:
        return
    table.update({"PartitionKey": tenant_id, "RowKey": key, "email": "", "redacted": True})
    report.suppressions += 1
