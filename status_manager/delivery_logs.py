"""A closed job's delivery log: the CSV export, the contact history index, exact counts.

When the Status Manager closes a job it asks for this (``request_delivery_log``: one
``events-queue`` message, so a million-row scan never runs inside the timer). The writer
streams the job's ``Deliveries`` once, partition by partition, and from that one pass:

- uploads ``delivery-logs/{tenant}/{job}.csv`` (one row per recipient, with its timeline)
  and ``{job}.summary.json`` (the counts), streamed in blocks so memory stays flat;
- writes ``ContactHistory`` rows (PartitionKey tenant, RowKey ``{contact}|{job}``: batched
  100 per request, range-scanned by ``GET /contacts/{id}/deliveries``);
- writes ``MessageIndex`` rows (provider message id → delivery) so late events without
  ``custom_args`` still find their delivery;
- sets the job's counts to what the rows say, correcting any drift of the per-task
  counters from events that raced a task's last recount;
- leaves out the address of every contact erased since the job started (``core/erasures.py``)
  and, once the export is written, blanks it wherever a writer racing the erasure left it:
  delivery rows, the tasks' compressed recipients and, for contacts erased while the export
  was being written, the export itself (``forget_erased_in_job``).
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field

from core.blobs import delivery_logs, log_blob_name, summary_blob_name
from core.clock import Clock, iso, utcnow
from core.counts import count_columns
from core.erasures import erased_contacts_of_job
from core.errors import Conflict, NotFound
from core.in_flight import IN_FLIGHT_PREFIX, only_delivery_rows
from core.job_state import campaign_follows_job, load_job, write_job
from core.models import ContactHistory, InFlightRow, Job, MessageIndexEntry
from core.provider_events import DeliveryLogRequest, timeline, timeline_event_from_entity
from core.status import FINAL_JOB_STATUSES, TaskStatus, zero_counts
from core.storage import (
    CONTACT_HISTORY,
    DELIVERIES,
    DELIVERY_EVENTS,
    EVENTS_QUEUE,
    JOBS,
    MESSAGE_INDEX,
    TASKS,
    Entity,
    Storage,
)
from privacy.erasure import forget_erased_in_job

log = logging.getLogger("mailroom.delivery_logs")

LOG_COLUMNS = ("contact_id", "email", "status", "reason", "provider", "provider_message_id", "attempts",
               "updated_at", "events")
_FORMULA_STARTS = frozenset("=+-@\t\r")
_HISTORY_FLUSH = 1_000
_INDEX_FLUSH = 25_600  # ≈100 per MessageIndex partition: full batches


def request_delivery_log(storage: Storage, job: Job) -> None:
    """Queue the writing of a closed job's log (the Status Manager calls this at close)."""
    request = DeliveryLogRequest(tenant_id=job.tenant_id, job_id=job.id)
    storage.queue(EVENTS_QUEUE).send(request.model_dump_json())


@dataclass
class DeliveryLogReport:
    rows: int = 0
    counts: dict[str, int] = field(default_factory=zero_counts)
    blob: str = ""
    counts_corrected: bool = False


class _Pass:
    """State of the one streaming pass over a job's deliveries."""

    def __init__(self, storage: Storage, job: Job, erased: set[str]) -> None:
        self.storage, self.job = storage, job
        self.erased = erased
        self.erased_rows: dict[str, str] = {}  # erased contact → its delivery partition here
        self.report = DeliveryLogReport()
        self.history: list[Entity] = []
        self.index: list[Entity] = []

    def flush(self, force: bool = False) -> None:
        if self.history and (force or len(self.history) >= _HISTORY_FLUSH):
            self.storage.table(CONTACT_HISTORY).batch_upsert(self.history, replace=True)
            self.history = []
        if self.index and (force or len(self.index) >= _INDEX_FLUSH):
            self.storage.table(MESSAGE_INDEX).batch_upsert(self.index, replace=True)
            self.index = []

    def note(self, row: Entity) -> None:
        job, status = self.job, row.get("status", "")
        self.report.rows += 1
        self.report.counts[status] = self.report.counts.get(status, 0) + 1
        task_id = row["PartitionKey"][len(job.id) + 1:]
        self.history.append(ContactHistory(
            job.tenant_id, row["RowKey"], job_id=job.id, task_id=task_id, campaign_id=job.campaign_id,
            campaign_name=job.campaign_name, status=status, reason=row.get("reason", ""),
            provider=row.get("provider", ""), provider_message_id=row.get("provider_message_id", ""),
            updated_at=row.get("updated_at", ""), job_completed_at=job.completed_at,
            dry_run=True if job.dry_run else None,  # what would have happened, not a delivery
        ).to_entity())
        message_id = row.get("provider_message_id", "")
        if message_id:
            self.index.append(MessageIndexEntry(
                message_id, tenant_id=job.tenant_id, job_id=job.id, task_id=task_id, contact_id=row["RowKey"],
            ).to_entity())
        self.flush()

    def csv_chunks(self) -> Iterator[bytes]:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(LOG_COLUMNS)
        queued_at = self.job.started_at or self.job.created_at
        for row, events in job_rows_with_events(self.storage, self.job.id):
            self.note(row)
            if row["RowKey"] in self.erased:
                self.erased_rows[row["RowKey"]] = row["PartitionKey"]
                row = {**row, "email": ""}
            steps = timeline(row, events, queued_at)
            writer.writerow([
                row["RowKey"], *(cell_text(row.get(c, "")) for c in LOG_COLUMNS[1:6]),
                int(row.get("attempts", 0) or 0), row.get("updated_at", ""),
                cell_text("; ".join(f"{e.type} {e.at}" for e in steps)),
            ])
            if buffer.tell() >= 256 * 1024:
                yield buffer.getvalue().encode()
                buffer.seek(0)
                buffer.truncate()
        yield buffer.getvalue().encode()


def write_delivery_log(
    storage: Storage, tenant_id: str, job_id: str, clock: Clock = utcnow
) -> DeliveryLogReport:
    """Export one closed job's delivery log and index it (idempotent: rewrites the same blobs)."""
    try:
        entity = storage.table(JOBS).get(tenant_id, job_id)
    except NotFound:
        return DeliveryLogReport()
    job = Job.from_entity(entity)
    blobs = delivery_logs(storage)
    run = _Pass(storage, job, erased_contacts_of_job(storage, job))
    name = log_blob_name(tenant_id, job_id)
    blobs.put(name, run.csv_chunks(), "text/csv; charset=utf-8")
    run.flush(force=True)
    forget_erased_contacts(storage, job, run)
    report = run.report
    report.blob = name
    summary = {
        "job_id": job.id, "tenant_id": job.tenant_id, "campaign_id": job.campaign_id,
        "campaign_name": job.campaign_name, "status": job.status, "roster_size": job.roster_size,
        "started_at": job.started_at, "completed_at": job.completed_at, "recipients": report.rows,
        "counts": report.counts, "written_at": iso(clock()), "dry_run": job.dry_run,
    }
    blobs.put(summary_blob_name(tenant_id, job_id), json.dumps(summary, indent=2).encode(),
              "application/json")
    report.counts_corrected = correct_job_counts(storage, entity, report, clock)
    log.info("delivery log written job=%s rows=%d corrected=%s", job_id, report.rows, report.counts_corrected)
    return report


def forget_erased_contacts(storage: Storage, job: Job, run: _Pass) -> None:
    """Blank erased contacts' addresses left in the job's rows and tasks, and in the export
    for contacts erased while it was written (their DELETE may have looked for it too early)."""
    late = erased_contacts_of_job(storage, job) - run.erased
    for contact_id in late:
        row = find_delivery(storage, job.tenant_id, job.id, contact_id)
        if row is not None:
            run.erased_rows[contact_id] = row["PartitionKey"]
    forget_erased_in_job(storage, job.tenant_id, job.id, run.erased_rows, late)


def correct_job_counts(storage: Storage, entity: Entity, report: DeliveryLogReport, clock: Clock) -> bool:
    """Make a closed job's counts what its rows say, and its campaign's with them.

    ETag-guarded through the state machine: a concurrent event's recount wins, and the link
    to the log is written on its own then.
    """
    job = Job.from_entity(entity)
    changed = (job.status in {s.value for s in FINAL_JOB_STATUSES} and report.rows == job.roster_size
               and report.counts != job.counts)
    update: Entity = {"delivery_log": report.blob, "delivery_log_at": iso(clock())}
    if changed:
        update.update(count_columns(report.counts))
    try:
        write_job(storage, job, update)
    except Conflict:
        write_job(storage, load_job(storage, job.tenant_id, job.id),
                  {k: v for k, v in update.items() if not k.startswith("count_")})
        return False
    if changed:
        campaign_follows_job(storage, job, clock)
    return changed


def job_rows_with_events(storage: Storage, job_id: str) -> Iterator[tuple[Entity, list[Entity]]]:
    """Every delivery row of a job with its provider events: one events query per task partition."""
    current = ""
    events: dict[str, list[Entity]] = {}
    rows = storage.table(DELIVERIES).query(
        only_delivery_rows("PartitionKey ge @lo and PartitionKey lt @hi"),
        {"lo": f"{job_id}-", "hi": f"{job_id}."},
    )
    for row in rows:
        if row["PartitionKey"] != current:
            current = row["PartitionKey"]
            events = events_by_contact(storage, current)
        yield row, events.get(row["RowKey"], [])


def events_by_contact(
    storage: Storage, partition: str, lo: str = "", hi: str = ""
) -> dict[str, list[Entity]]:
    """Provider events of one delivery partition (optionally a contact range), by contact."""
    query, params = "PartitionKey eq @pk", {"pk": partition}
    if lo:
        query += " and RowKey ge @lo and RowKey lt @hi"
        params.update(lo=f"{lo}|", hi=f"{hi}}}")
    found: dict[str, list[Entity]] = {}
    for entity in storage.table(DELIVERY_EVENTS).query(query, params):
        found.setdefault(entity["RowKey"].split("|", 1)[0], []).append(entity)
    return found


def events_for_rows(storage: Storage, rows: list[Entity]) -> dict[tuple[str, str], list[Entity]]:
    """Provider events of a page of delivery rows in one query, by (partition, contact).

    A page sorted by (PartitionKey, RowKey) covers a contiguous key range: one partition and
    a contact range when it stays inside one task, else the range of its partitions.
    """
    if not rows:
        return {}
    first, last = rows[0], rows[-1]
    if first["PartitionKey"] == last["PartitionKey"]:
        query = "PartitionKey eq @pk and RowKey ge @lo and RowKey lt @hi"
        params = {"pk": first["PartitionKey"], "lo": f"{first['RowKey']}|", "hi": f"{last['RowKey']}}}"}
    else:  # the tail of the first partition, the middle ones whole, the head of the last
        query = ("( PartitionKey eq @p0 and RowKey ge @lo )"
                 " or ( PartitionKey gt @p0 and PartitionKey lt @pn )"
                 " or ( PartitionKey eq @pn and RowKey lt @hi )")
        params = {"p0": first["PartitionKey"], "pn": last["PartitionKey"], "lo": f"{first['RowKey']}|",
                  "hi": f"{last['RowKey']}}}"}
    found: dict[tuple[str, str], list[Entity]] = {}
    for entity in storage.table(DELIVERY_EVENTS).query(query, params):
        key = (entity["PartitionKey"], entity["RowKey"].split("|", 1)[0])
        found.setdefault(key, []).append(entity)
    return found


def find_delivery(storage: Storage, tenant_id: str, job_id: str, contact_id: str) -> Entity | None:
    """One contact's delivery row of a job: via its history row when the job is closed (a point
    read), else a filtered range query over the job's partitions."""
    history = storage.table(CONTACT_HISTORY).find(tenant_id, f"{contact_id}|{job_id}")
    if history is not None and history.get("task_id"):
        return storage.table(DELIVERIES).find(f"{job_id}-{history['task_id']}", contact_id)
    rows = storage.table(DELIVERIES).query(
        "PartitionKey ge @lo and PartitionKey lt @hi and RowKey eq @c",
        {"lo": f"{job_id}-", "hi": f"{job_id}.", "c": contact_id},
    )
    return next(iter(rows), None)


def in_flight_deliveries(storage: Storage, job_id: str) -> list[Entity]:
    """The job's recipients in a provider's hands right now, as ``sending`` delivery rows.

    A recipient handed over is named in its task run's in-flight row (``core/in_flight.py``)
    until the answer is recorded; its own row is written once, with the outcome. Only a task
    that says ``sending`` can have one in flight, so this reads the job's task summaries (one
    partition) and each such task's in-flight rows (a key range within its partition).
    """
    tasks = storage.table(TASKS).query("PartitionKey eq @j and status eq @s",
                                       {"j": job_id, "s": TaskStatus.SENDING.value}, select=["RowKey"])
    rows: list[Entity] = []
    for task in tasks:
        partition = f"{job_id}-{task['RowKey']}"
        marks = storage.table(DELIVERIES).query(
            "PartitionKey eq @pk and RowKey ge @lo and RowKey lt @hi",
            {"pk": partition, "lo": IN_FLIGHT_PREFIX, "hi": IN_FLIGHT_PREFIX[:-1] + "."},
        )
        for mark in marks:
            rows.extend(InFlightRow.from_entity(mark).as_sending())
    return rows


def in_flight_delivery(storage: Storage, job_id: str, contact_id: str) -> Entity | None:
    """The contact's ``sending`` row when a task run names it as handed over, else ``None``."""
    return next((row for row in in_flight_deliveries(storage, job_id) if row["RowKey"] == contact_id), None)


def cell_text(value: object) -> str:
    """Defused against spreadsheet formula injection, like the API's CSV export."""
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in _FORMULA_STARTS else text


__all__ = [
    "DeliveryLogReport", "LOG_COLUMNS", "events_by_contact", "events_for_rows", "find_delivery",
    "in_flight_deliveries", "in_flight_delivery",
    "job_rows_with_events", "log_blob_name",
    "request_delivery_log", "summary_blob_name", "timeline_event_from_entity", "write_delivery_log",
]
