"""Helpers for delivery-tracking tests: run campaigns in-process, make and apply provider events."""

from __future__ import annotations

import random
import secrets
import time
from typing import Any

from core.blobs import delivery_logs
from core.in_flight import only_delivery_rows
from core.models import Job, Tenant, unpack_recipients
from core.provider_events import DeliveryLogRequest, EventBatch, split_into_messages
from core.settings import Settings
from core.storage import ALL_TABLES, CONTACT_TABLES, DELIVERIES, EVENTS_QUEUE, TASKS, Storage
from devhost.sendgrid_events import events_for
from status_manager import close_finished_jobs
from status_manager.delivery_logs import write_delivery_log
from status_manager.event_processor import EventReport, parse_events_message, process_event_batch
from tests.pipeline import InProcessHost, job_of, schedule_campaign

EVENT_TIME = 1_700_000_000


def people(*locals_: str) -> list[dict[str, Any]]:
    """Contacts whose local parts steer the simulator's feedback (bounce-, complain-, slow-…)."""
    tag = secrets.token_hex(3)
    return [{"email": f"{local}-{tag}@example.com", "name": local.title()} for local in locals_]


def run_campaign(storage: Storage, host: InProcessHost, tenant: Tenant,
                 criteria: dict[str, Any] | None = None) -> Job:
    campaign = schedule_campaign(storage, tenant, criteria)

    def closed() -> bool:
        job = job_of(storage, campaign)
        return job is not None and job.status == "completed"

    host.run_until(closed)
    job = job_of(storage, campaign)
    assert job is not None
    return job


def events_of(records: list[dict[str, Any]], seed: int = 3) -> list[dict[str, Any]]:
    """The simulator's feedback for ``records``, stamped now (after the sends, as in life)."""
    rng = random.Random(seed)
    now = int(time.time())
    return [event for record in records for event in events_for(record, rng, now=now)]


def apply_events(storage: Storage, settings: Settings, events: list[dict[str, Any]]) -> EventReport:
    """What the webhook + events-queue do (split into messages, process each, drain retries),
    then the Status Manager's next pass, which recounts the tasks the events changed."""
    total = EventReport()
    messages, cut = split_into_messages(events)
    assert cut == 0
    for text in messages:
        batch = EventBatch.model_validate_json(text)
        _add(total, process_event_batch(storage, batch, settings, retry_delay=0))
    _add(total, drain_events_queue(storage, settings))
    close_finished_jobs(storage, settings)
    return total


def drain_events_queue(storage: Storage, settings: Settings, timeout: float = 60,
                       max_attempts: int = 8) -> EventReport:
    """Process events-queue until it is empty (retries become visible at once with delay 0)."""
    total = EventReport()
    queue = storage.queue(EVENTS_QUEUE)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        messages = queue.receive(32, visibility_timeout=60)
        if not messages:
            return total
        for message in messages:
            parsed = parse_events_message(message.content)
            if isinstance(parsed, DeliveryLogRequest):
                write_delivery_log(storage, parsed.tenant_id, parsed.job_id)
            else:
                _add(total, process_event_batch(storage, parsed, settings, retry_delay=0,
                                                max_attempts=max_attempts))
            queue.delete(message)
    raise AssertionError("events-queue did not drain")


def _add(total: EventReport, part: EventReport) -> None:
    for name in ("applied", "duplicates", "status_changes", "suppressed", "retried", "orphans", "ignored"):
        setattr(total, name, getattr(total, name) + getattr(part, name))


def delivery_rows(storage: Storage, job_id: str) -> list[dict[str, Any]]:
    return list(storage.table(DELIVERIES).query(
        only_delivery_rows("PartitionKey ge @lo and PartitionKey lt @hi"),
        {"lo": f"{job_id}-", "hi": f"{job_id}."},
    ))


def statuses_by_email(storage: Storage, job_id: str) -> dict[str, tuple[str, str]]:
    return {row["email"]: (row["status"], row["reason"]) for row in delivery_rows(storage, job_id)}


def addresses_everywhere(storage: Storage, email: str) -> set[str]:
    """Every table (compressed task recipients included) and blob that still holds ``email``."""
    found = set()
    for name in ALL_TABLES:
        for entity in storage.table(name).query("RowKey ne @x", {"x": ""}):
            text = " ".join(str(v) for v in entity.values() if isinstance(v, str))
            if email in text:
                found.add("Contacts" if name in CONTACT_TABLES else name)  # one of the sixteen
            if name == TASKS and any(r.email == email for r in unpack_recipients(entity)):
                found.add(name)
    blobs = delivery_logs(storage)
    if any(email.encode() in blobs.read(n) for n in blobs.names()):
        found.add("blob")
    return found
