"""Erasing a contact's address from everything delivery tracking kept (``DELETE /contacts/{id}``).

First an erasure marker (``core/erasures.py``): from then on no Task Manager check misses the
contact, so it is not handed to a provider and its delivery row ends ``skipped`` ("contact
deleted") without an address. Then the contact's unfinished tasks are settled: while a live
owner is sending a task that has not recorded the contact's outcome yet, the erasure waits for
that outcome (the owner's last check may have run before the marker existed); an idle task
(pending, paused, retrying, or its lease expired) has the contact's address, name and
attributes blanked in its compressed recipients under its ETag; a
task another host is sending keeps its copy until the job's delivery log is written, which blanks
what a racing writer left behind (``status_manager/delivery_logs.py``).

The ordering argument. The Task Manager marks a send group's delivery rows ``sending`` (W), reads
the markers (Q, after W and before the hand-over; at most once a second, so not before every
group), then sends (S) and records the outcome (O, replacing ``sending``). The erasure writes
its marker (M), then reads the task row and the contact's delivery row (R), and returns only
when the task is terminal or idle (no live lease: whoever claims it next claims it after M, and
its first group's Q is later still), or the contact's row holds an outcome (O came before R; a
recorded outcome is never handed over again). Otherwise it waits. So a send the owner's Q could
not stop (Q before M) has its O before the DELETE returns, and any Q after M skips the contact:
nothing is handed over once the DELETE has returned. The wait is bounded by how far the owner
is from the contact (a task is seconds at normal provider latency); past ``wait_seconds`` it is
409 and the marker stays, so a repeated DELETE finishes.

Then the delivery *facts* stay (statuses, counts, timelines), the address goes:

- ``Deliveries`` rows: ``email`` blanked (``redacted``);
- ``DeliveryEvents`` rows: the provider's response text blanked (it is scrubbed of
  addresses on the way in; this removes anything a provider phrased unusually);
- ``Tasks``: the compressed recipient list of each finished task that carried the
  contact is rewritten without its address, name and attributes (a running task is left
  to its owner, see above: rewriting it would break the owner's ETag; counted in ``skipped_tasks``);
- exported ``delivery-logs`` CSV blobs: the contact's row rewritten with a blank address;
- ``Suppressions``: the row stays (keyed by a hash, so the address is still never sent
  to) but its ``email`` column is blanked.

``ContactHistory``, ``MessageIndex`` and orphaned events never hold addresses.
"""

from __future__ import annotations

import csv
import io
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice

from core.blobs import delivery_logs, log_blob_name
from core.clock import Clock, parse_iso, utcnow
from core.erasures import record_erasure
from core.errors import Conflict, NotFound, StateConflict
from core.models import (
    Delivery,
    DeliveryEvent,
    Recipient,
    Suppression,
    Task,
    pack_recipients,
    unpack_recipients,
)
from core.status import DeliveryStatus, TaskStatus
from core.storage import (
    CONTACT_HISTORY,
    DELIVERIES,
    DELIVERY_EVENTS,
    JOBS,
    SUPPRESSIONS,
    TASKS,
    Entity,
    Storage,
    Table,
    etag_of,
)

log = logging.getLogger("mailroom.erasure")

# How long a DELETE waits for a chunk that is sending the contact (a chunk's sends are bounded
# by the retry budget, 30 s, plus one provider timeout); past it the DELETE answers 409.
IN_FLIGHT_WAIT_SECONDS = 45.0
_POLL_SECONDS = 0.2


class SendInProgress(StateConflict):
    """A chunk holding the contact is being sent; the erasure could not wait it out."""


@dataclass
class ErasureReport:
    deliveries: int = 0
    events: int = 0
    tasks: int = 0
    skipped_tasks: int = 0
    unfinished_tasks: int = 0  # tasks not yet terminal whose copy of the address was blanked
    waited_for_sends: int = 0  # chunks sending the contact that the erasure waited out
    blobs: int = 0
    suppressions: int = 0


def erase_contact_traces(
    storage: Storage, tenant_id: str, contact_id: str, email: str, clock: Clock = utcnow,
    wait_seconds: float = IN_FLIGHT_WAIT_SECONDS,
) -> ErasureReport:
    """Stop every send to the contact, then remove ``email`` from delivery tracking; keep the facts.

    Raises ``SendInProgress`` when a chunk sending the contact outlasts ``wait_seconds``: the
    marker is written by then, so a repeated call finishes the job.
    """
    report = ErasureReport()
    record_erasure(storage, tenant_id, contact_id, clock)
    for job_id, task_id in unfinished_tasks_of_contact(storage, tenant_id, contact_id):
        settle_unfinished_task(storage, job_id, task_id, contact_id, report, clock, wait_seconds)
    for job_id, partition in contact_partitions(storage, tenant_id, contact_id):
        redact_delivery_row(storage, partition, contact_id, report)
        redact_events(storage, partition, contact_id, report)
        redact_task(storage, job_id, partition[len(job_id) + 1:], contact_id, report)
        redact_blob(storage, tenant_id, job_id, contact_id, report)
    if email:
        redact_suppression(storage, tenant_id, email, report)
    log.info("contact erased tenant=%s contact=%s deliveries=%d tasks=%d unfinished_tasks=%d "
             "skipped_tasks=%d waited_for_sends=%d blobs=%d", tenant_id, contact_id, report.deliveries,
             report.tasks, report.unfinished_tasks, report.skipped_tasks,
             report.waited_for_sends, report.blobs)
    return report


def unfinished_tasks_of_contact(
    storage: Storage, tenant_id: str, contact_id: str
) -> Iterator[tuple[str, str]]:
    """(job, task) of every not-yet-terminal task of an open job that may carry the contact.

    A campaign job's tasks cover consecutive contact ids in index order (``roster_cursor`` is
    the last id a task covers), so the one candidate is the first task whose cursor is at or
    past the contact: one small query per open job. Retry-failed and transactional jobs are
    not in contact order; all their unfinished tasks are candidates (they are few).
    """
    tasks = storage.table(TASKS)
    jobs = storage.table(JOBS).query(
        "PartitionKey eq @t", {"t": tenant_id}, select=["RowKey", "completed_at", "retry_of", "campaign_id"]
    )
    for job in jobs:
        if job.get("completed_at"):
            continue
        job_id = job["RowKey"]
        if job.get("retry_of") or not job.get("campaign_id"):
            rows = tasks.query("PartitionKey eq @j", {"j": job_id}, select=["RowKey", "status"])
        else:
            rows = islice(tasks.query("PartitionKey eq @j and roster_cursor ge @c",
                                      {"j": job_id, "c": contact_id}, select=["RowKey", "status"]), 1)
        for row in rows:
            if not TaskStatus(row.get("status", "pending")).is_terminal:
                yield job_id, row["RowKey"]


def settle_unfinished_task(
    storage: Storage, job_id: str, task_id: str, contact_id: str, report: ErasureReport, clock: Clock,
    wait_seconds: float,
) -> None:
    """Wait while a live owner has not recorded the contact's outcome; blank the contact if nobody holds it.

    A task sent under a live lease is left as it is once the contact's row holds an outcome (its
    copy of the address is blanked with the job's delivery log); one whose lease expired is idle:
    its next owner never re-sends what was handed over, and its first check finds the marker.
    """
    tasks = storage.table(TASKS)
    deadline = time.monotonic() + wait_seconds
    waited = False
    while True:
        entity = tasks.find(job_id, task_id)
        if entity is None:
            return
        task = Task.from_entity(entity)
        recipients = unpack_recipients(entity)
        index = next((i for i, r in enumerate(recipients) if r.contact_id == contact_id), None)
        if index is None or TaskStatus(task.status).is_terminal:
            return  # a terminal task is redacted with the contact's delivery rows
        leased = (task.status == TaskStatus.SENDING and bool(task.lease_until)
                  and parse_iso(task.lease_until) > clock())
        if leased and not outcome_recorded(storage, job_id, task_id, contact_id):
            if time.monotonic() > deadline:
                raise SendInProgress("a message to this contact is being sent; retry the delete shortly")
            waited = True
            time.sleep(_POLL_SECONDS)
            continue
        report.waited_for_sends += int(waited)
        if leased:
            report.skipped_tasks += 1
            return
        if blank_contact_in_task(tasks, entity, recipients, contact_id):
            report.unfinished_tasks += 1
            return


def outcome_recorded(storage: Storage, job_id: str, task_id: str, contact_id: str) -> bool:
    """Whether the contact's delivery row in the task holds an outcome (a terminal status)."""
    row = storage.table(DELIVERIES).find(f"{job_id}-{task_id}", contact_id, select=["status"])
    return row is not None and DeliveryStatus(row.get("status", "pending")).is_terminal


def blank_contact_in_task(tasks: Table, entity: Entity, recipients: list[Recipient], contact_id: str) -> bool:
    """Rewrite the task's recipients without the contact's data; False if the task changed meanwhile."""
    update = task_without_contact(entity, recipients, contact_id)
    if update is None:
        return True
    try:
        tasks.update(update, etag=etag_of(entity))
    except Conflict:
        return False
    return True


def task_without_contact(entity: Entity, recipients: list[Recipient], contact_id: str) -> Entity | None:
    """The task's recipient columns with the contact's data blanked (``None``: nothing to blank)."""
    if not any(r.contact_id == contact_id and (r.email or r.name or r.attributes) for r in recipients):
        return None
    cleaned = [Recipient(r.contact_id, "", "", {}) if r.contact_id == contact_id else r for r in recipients]
    columns = pack_recipients(cleaned)
    columns.update({k: b"" for k in entity if k.startswith("recipients_") and k not in columns})
    return Task.changes(entity, **columns)


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
    deliveries.update(Delivery.changes((partition, contact_id), email="", redacted=True))
    report.deliveries += 1


def redact_events(storage: Storage, partition: str, contact_id: str, report: ErasureReport) -> None:
    table = storage.table(DELIVERY_EVENTS)
    rows = list(table.query(
        "PartitionKey eq @pk and RowKey ge @lo and RowKey lt @hi",
        {"pk": partition, "lo": f"{contact_id}|", "hi": f"{contact_id}}}"}, select=["PartitionKey", "RowKey"],
    ))
    updates = [DeliveryEvent.changes(r, provider_response="", redacted=True) for r in rows]
    table.batch_upsert(updates)
    report.events += len(updates)


def redact_task(storage: Storage, job_id: str, task_id: str, contact_id: str, report: ErasureReport) -> None:
    """Rewrite a finished task's recipients without the contact's personal data (ETag-guarded)."""
    unfinished = False

    def blank(entity: Entity | None) -> Entity | None:
        nonlocal unfinished
        if entity is None:
            return None
        if not TaskStatus(entity.get("status", "pending")).is_terminal:
            unfinished = True
            return None
        recipients = unpack_recipients(entity)
        if not any(r.contact_id == contact_id and (r.email or r.name) for r in recipients):
            return None
        return task_without_contact(entity, recipients, contact_id)

    try:
        written = storage.table(TASKS).modify(job_id, task_id, blank)
    except Conflict:
        return  # it kept changing: left as it is, like a task another host is sending
    report.skipped_tasks += int(unfinished)
    report.tasks += int(written is not None)


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
    key = Suppression.key(tenant_id, email)
    if table.find(*key) is None:
        return
    table.update(Suppression.changes(key, email="", redacted=True))
    report.suppressions += 1


def forget_erased_in_job(
    storage: Storage, tenant_id: str, job_id: str, partitions: dict[str, str], export_too: set[str]
) -> ErasureReport:
    """Blank erased contacts' addresses in a closed job: rows and tasks a racing writer left.

    ``partitions``: contact id → its delivery partition in the job. ``export_too``: contacts
    whose address may also be in the job's exported CSV (erased while it was being written).
    The delivery log writer calls this once the export is written (``delivery_logs.py``).
    """
    report = ErasureReport()
    for contact_id, partition in sorted(partitions.items()):
        redact_delivery_row(storage, partition, contact_id, report)
        redact_task(storage, job_id, partition[len(job_id) + 1:], contact_id, report)
        if contact_id in export_too:
            redact_blob(storage, tenant_id, job_id, contact_id, report)
    if partitions:
        log.info("erased contacts forgotten in a closed job job=%s contacts=%d tasks=%d blobs=%d",
                 job_id, len(partitions), report.tasks, report.blobs)
    return report
