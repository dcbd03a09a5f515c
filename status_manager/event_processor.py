"""The event processor: provider events → delivery statuses, timelines and suppressions.

For each event of an ``events-queue`` batch:

1. ``locate`` its delivery: ``custom_args`` (tenant, job, task, contact; the Task Manager
   puts them on every message), else the provider message id through ``MessageIndex``.
2. ``store_events`` in ``DeliveryEvents``, keyed by the event so a duplicate is a no-op
   (one existence query and one batch insert per delivery partition).
3. ``merge_into_delivery``: the order-independent lattice join of ``core.provider_events`` on the
   ``Deliveries`` row (ETag-guarded), keeping the Task Manager's original outcome for the
   timeline, and marking its task for the Status Manager's recount (``apply_moves``).
4. ``suppress_if_needed``: hard bounce, complaint and unsubscribe at once; soft bounces
   after ``SOFT_BOUNCE_SUPPRESS_AFTER``.

An event whose delivery row is not written yet (the webhook can beat the Task Manager's
outcome batch) is re-queued with a delay; after ``MAX_ATTEMPTS`` it, like an event naming
nothing we know, is kept as an orphan (``DeliveryEvents`` partition ``orphans-<date>``)
and counted. Nothing here raises on bad events.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any

from core.clock import Clock, iso, utcnow
from core.counts import mark_for_recount
from core.errors import AlreadyExists, BadMessage, Conflict, NotFound
from core.models import ContactHistory, Delivery, DeliveryEvent, Job, MessageIndexEntry, Suppression
from core.provider_events import (
    DeliveryLogRequest,
    EventBatch,
    ProviderEvent,
    event_entity,
    merge_status,
    parse_sendgrid_event,
    suppression_reason,
)
from core.reconciliation import ACCEPTED_BY_EVENT, NO_EVENT_FEED, NOT_ACCEPTED, RESENT
from core.settings import Settings
from core.status import FINAL_JOB_STATUSES, DeliveryStatus, TaskStatus
from core.storage import (
    CONTACT_HISTORY,
    DELIVERIES,
    DELIVERY_EVENTS,
    EVENTS_QUEUE,
    JOBS,
    MESSAGE_INDEX,
    SUPPRESSIONS,
    TASKS,
    Entity,
    Storage,
)
from core.suppressions import add_suppression
from providers.pacing import PacingConfig, scope_of, slow_down
from status_manager.compliance import record_unsubscribe_lags
from status_manager.reputation import record_and_check, tally_events

log = logging.getLogger("mailroom.events")

MAX_ATTEMPTS = 8
RETRY_DELAY_SECONDS = 15
_WRITE_RETRIES = 8
_FINAL = frozenset(s.value for s in FINAL_JOB_STATUSES)


@dataclass
class EventReport:
    """What one batch did (counts only: logs never carry addresses)."""

    applied: int = 0
    duplicates: int = 0
    status_changes: int = 0
    suppressed: int = 0
    retried: int = 0
    orphans: int = 0
    ignored: int = 0
    retry_events: list[dict[str, Any]] = field(default_factory=list, repr=False)


class _Context:
    """Per-batch caches so a batch of one job reads the job once."""

    def __init__(self, storage: Storage, settings: Settings, clock: Clock) -> None:
        self.storage, self.settings, self.clock = storage, settings, clock
        self._jobs: dict[tuple[str, str], Job | None] = {}

    def job(self, tenant_id: str, job_id: str) -> Job | None:
        key = (tenant_id, job_id)
        if key not in self._jobs:
            entity = self.storage.table(JOBS).find(tenant_id, job_id)
            self._jobs[key] = Job.from_entity(entity) if entity else None
        return self._jobs[key]


@dataclass
class _Moves:
    """What this batch changed: the tasks to recount, and closed jobs' contact history rows."""

    tasks: set[tuple[str, str, str]] = field(default_factory=set)  # (tenant, job, task)
    history: list[Entity] = field(default_factory=list)
    fresh: list[ProviderEvent] = field(default_factory=list)  # stored for the first time (reputation)
    suppressed: list[ProviderEvent] = field(default_factory=list)  # suppressed an address (compliance)
    deferred_scopes: set[str] = field(default_factory=set)  # pacing scopes a ``deferred`` event slows

    def add(self, job: Job, task_id: str) -> None:
        self.tasks.add((job.tenant_id, job.id, task_id))


def process_event_batch(
    storage: Storage,
    batch: EventBatch,
    settings: Settings,
    clock: Clock = utcnow,
    retry_delay: int = RETRY_DELAY_SECONDS,
    max_attempts: int = MAX_ATTEMPTS,
) -> EventReport:
    """Apply every event of one queue message; never raises for a bad or unmatched event.

    Events are grouped by delivery partition so a batch costs a few requests per task
    and per delivery, not per event: one existence query and one batch insert of events
    per partition, one merge per delivery, one counter update per task and per job.
    """
    ctx = _Context(storage, settings, clock)
    report = EventReport()
    groups: dict[str, dict[str, list[tuple[ProviderEvent, Any]]]] = {}
    unresolved: list[tuple[ProviderEvent, Any, str]] = []
    for raw in batch.events:
        event = parse_sendgrid_event(raw)
        if event is None:
            report.ignored += 1
            continue
        located = locate(storage, event)
        if located is None:
            unresolved.append((event, raw, "retry"))
            continue
        groups.setdefault(located.partition, {}).setdefault(located.contact_id, []).append((located, raw))
    moves = _Moves()
    for by_contact in groups.values():
        unresolved += apply_partition(ctx, by_contact, report, moves)
    settle_unresolved(storage, batch, unresolved, report, clock, retry_delay, max_attempts)
    apply_moves(storage, moves, clock)
    record_unsubscribe_lags(storage, moves.suppressed, clock)
    record_and_check(storage, settings, tally_events(moves.fresh), clock)
    slow_deferring_domains(storage, settings, moves.deferred_scopes)
    log.info(
        "events batch applied=%d duplicates=%d changes=%d suppressed=%d retried=%d orphans=%d ignored=%d",
        report.applied, report.duplicates, report.status_changes, report.suppressed, report.retried,
        report.orphans, report.ignored,
    )
    return report


def settle_unresolved(
    storage: Storage, batch: EventBatch, unresolved: list[tuple[ProviderEvent, Any, str]],
    report: EventReport, clock: Clock, retry_delay: int, max_attempts: int,
) -> None:
    """Re-queue events whose delivery may still appear; keep the rest as orphans."""
    last_try = batch.attempt + 1 >= max_attempts
    for event, raw, verdict in unresolved:
        if verdict == "retry" and not last_try:
            report.retried += 1
            report.retry_events.append(raw)
        else:
            keep_orphan(storage, event, clock)
            report.orphans += 1
    if report.retry_events:
        again = EventBatch(source=batch.source, events=report.retry_events, attempt=batch.attempt + 1)
        storage.queue(EVENTS_QUEUE).send(again.model_dump_json(), visibility_timeout=retry_delay)


def apply_partition(
    ctx: _Context, by_contact: dict[str, list[tuple[ProviderEvent, Any]]], report: EventReport, moves: _Moves
) -> list[tuple[ProviderEvent, Any, str]]:
    """Store and merge the events of one delivery partition; returns those it could not place."""
    first = next(iter(by_contact.values()))[0][0]
    job = ctx.job(first.tenant_id, first.job_id)
    if job is None:
        return [(e, raw, "orphan") for items in by_contact.values() for e, raw in items]
    rows = read_deliveries(ctx.storage, first.partition, list(by_contact))
    missing = [c for c, row in rows.items() if row is None]
    unplaced: list[tuple[ProviderEvent, Any, str]] = []
    if missing:
        verdict = "orphan" if _task_is_terminal(ctx.storage, first) else "retry"
        unplaced = [(e, raw, verdict) for c in missing for e, raw in by_contact[c]]
    placed = {c: items for c, items in by_contact.items() if rows[c] is not None}
    if not placed:
        return unplaced
    fresh = store_events(ctx.storage, first.partition, [e for items in placed.values() for e, _ in items])
    for contact_id, items in placed.items():
        row = rows[contact_id]
        assert row is not None  # placed holds only contacts with a row
        events = [e for e, _ in items]
        stored_now = len({e.key for e in events if e.key in fresh})
        report.applied += stored_now
        report.duplicates += len(events) - stored_now
        # Merging duplicates again is harmless (a join) and finishes a crashed earlier try.
        change = merge_into_delivery(ctx, events, row)
        if change is not None or stored_now < len(events):
            # A replayed event may finish a try that crashed after changing the row.
            moves.add(job, first.task_id)
        if change is not None:
            _, new, reason = change
            report.status_changes += 1
            if job.status in _FINAL:
                moves.history.append(history_update(job, contact_id, new, reason))
        seen: set[str] = set()
        for event in events:
            if event.key in fresh and event.key not in seen:
                seen.add(event.key)
                moves.fresh.append(event)
                sender = job.template.get("from_email", "")
                if event.kind == "deferred" and sender and row.get("email"):
                    moves.deferred_scopes.add(scope_of(job.tenant_id, sender, row["email"]))
                if suppress_if_needed(ctx, job, event, row.get("email", "")):
                    report.suppressed += 1
                    moves.suppressed.append(event)
    return unplaced


# Azure Tables allows 15 comparisons in a filter: the PartitionKey and 14 RowKeys.
_ROWS_PER_QUERY = 14


def read_deliveries(storage: Storage, partition: str, contact_ids: list[str]) -> dict[str, Entity | None]:
    """The delivery rows of ``contact_ids`` in one partition, 14 per query (``None``: not written yet)."""
    found: dict[str, Entity | None] = dict.fromkeys(contact_ids)
    for i in range(0, len(contact_ids), _ROWS_PER_QUERY):
        chunk = contact_ids[i:i + _ROWS_PER_QUERY]
        params = {"pk": partition, **{f"r{j}": c for j, c in enumerate(chunk)}}
        # The SDK substitutes only space-separated "@name" words: keep spaces inside the parentheses.
        clauses = " or ".join(f"RowKey eq @r{j}" for j in range(len(chunk)))
        for row in storage.table(DELIVERIES).query(f"PartitionKey eq @pk and ( {clauses} )", params):
            found[row["RowKey"]] = row
    return found


def locate(storage: Storage, event: ProviderEvent) -> ProviderEvent | None:
    """The event with its delivery's ids filled in, or ``None`` when we cannot tell yet."""
    if event.matched_by_custom_args:
        return event
    entry = None
    for message_id in event.message_ids:  # a batched email's own id first, then the request's
        entry = storage.table(MESSAGE_INDEX).find(*MessageIndexEntry.key(message_id))
        if entry is not None:
            break
    if entry is None:
        return None
    return replace(
        event, tenant_id=entry.get("tenant_id", ""), job_id=entry.get("job_id", ""),
        task_id=entry.get("task_id", ""), contact_id=entry.get("contact_id", ""),
    )


def store_events(storage: Storage, partition: str, events: list[ProviderEvent]) -> set[str]:
    """Insert the events not stored yet; the keys of those this call stored (the rest are duplicates).

    One query finds which keys exist, one batch inserts the rest; if a concurrent host
    stored one in between, the batch fails as a whole and each is inserted alone.
    """
    unique = {e.key: e for e in events}
    contacts = sorted({e.contact_id for e in unique.values()})
    existing = {
        row["RowKey"].split("|", 1)[1]
        for row in storage.table(DELIVERY_EVENTS).query(
            "PartitionKey eq @pk and RowKey ge @lo and RowKey lt @hi",
            {"pk": partition, "lo": f"{contacts[0]}|", "hi": f"{contacts[-1]}}}"}, select=["RowKey"],
        )
    }
    new = [e for key, e in unique.items() if key not in existing]
    if not new:
        return set()
    try:
        storage.table(DELIVERY_EVENTS).batch_insert([event_entity(e) for e in new])
        return {e.key for e in new}
    except AlreadyExists:
        stored = set()
        for event in new:
            try:
                storage.table(DELIVERY_EVENTS).insert(event_entity(event))
                stored.add(event.key)
            except AlreadyExists:
                continue
        return stored


def merge_into_delivery(
    ctx: _Context, events: list[ProviderEvent], row: Entity
) -> tuple[str, str, str] | None:
    """Join the events' statuses into the delivery row; (old, new, reason) if the status changed."""
    proving = [e for e in events if e.status is not None]
    merged: tuple[str, str, str] | None = None

    def merge(stored: Entity | None) -> Entity | None:
        nonlocal merged
        if stored is None:
            raise NotFound("the delivery row went while its events were merged")
        old = stored.get("status", "")
        status = merge_base(stored)
        key, winner = stored.get("status_event", ""), None
        for event in proving:
            if merge_status(status, key, str(event.status), event.key):
                status, key, winner = str(event.status), event.key, event
        if winner is None:
            return None
        columns: Entity = {"status": status, "reason": winner.detail, "status_event": key,
                           "updated_at": iso(ctx.clock())}
        resolved = resolution_after_event(stored)
        if resolved:
            columns["resolution"] = resolved
        if not stored.get("outcome"):
            columns.update(outcome=old, outcome_at=stored.get("updated_at", ""),
                           outcome_reason=stored.get("reason", ""))
        if winner.message_ids and not stored.get("provider_message_id"):
            columns["provider_message_id"] = winner.message_ids[0]
        if not stored.get("provider"):
            columns["provider"] = "sendgrid"
        merged = (old, status, winner.detail)
        return Delivery.changes(stored, **columns)

    try:
        written = ctx.storage.table(DELIVERIES).modify(
            row["PartitionKey"], row["RowKey"], merge, tries=_WRITE_RETRIES, current=row
        )
    except Conflict:
        log.warning("delivery kept changing partition=%s", row.get("PartitionKey"))
        return None
    if written is None or merged is None or merged[0] == merged[1]:
        return None
    return merged


def merge_base(stored: Entity) -> str:
    """The status events merge over: a row reconciliation judged not accepted is still ``unknown``.

    Such a row is ``failed`` only because no event came within the window; an event that comes
    later proves the provider took it after all, so it lifts the row like any ``unknown`` one.
    """
    status = str(stored.get("status", ""))
    if status == DeliveryStatus.FAILED and stored.get("resolution") == NOT_ACCEPTED:
        return DeliveryStatus.UNKNOWN.value
    return status


def resolution_after_event(stored: Entity) -> str:
    """The row's new ``resolution`` when a proving event lifts it ("" for none).

    An ``unknown`` (or judged not accepted) row becomes ``accepted_by_event``, and so does one
    waiting for its reconciliation resend (``retrying``, ``resent``): the Task Manager then
    skips it, as its outcome is on record. A row already resent keeps saying so.
    """
    status, resolution = stored.get("status", ""), stored.get("resolution") or ""
    if status == DeliveryStatus.UNKNOWN and resolution in ("", NO_EVENT_FEED):
        return ACCEPTED_BY_EVENT
    if merge_base(stored) == DeliveryStatus.UNKNOWN and resolution == NOT_ACCEPTED:
        return ACCEPTED_BY_EVENT
    if status == DeliveryStatus.RETRYING and resolution == RESENT:
        return ACCEPTED_BY_EVENT
    return ""


def slow_deferring_domains(storage: Storage, settings: Settings, scopes: set[str]) -> None:
    """A SendGrid ``deferred`` event is the receiving domain asking to slow down: pace it (AIMD)."""
    config = PacingConfig.from_settings(settings)
    for scope in sorted(scopes):
        slow_down(storage, config, scope, time.time())
    if scopes:
        log.info("deferred events slowed scopes=%d", len(scopes))


def apply_moves(storage: Storage, moves: _Moves, clock: Clock = utcnow) -> None:
    """Mark the tasks whose rows changed for the Status Manager's recount; follow closed jobs' history.

    No counter is moved here: counts are snapshots of the rows, taken by the task's own final
    recount and then by ``status_manager/recounts.py`` (why: that module's docstring).
    """
    mark_for_recount(storage, moves.tasks, clock)
    if moves.history:
        storage.table(CONTACT_HISTORY).batch_upsert(moves.history)


def history_update(job: Job, contact_id: str, status: str, reason: str) -> Entity:
    """A closed job's contact history row follows late events (``ContactHistory``, merged)."""
    key = ContactHistory.key(job.tenant_id, contact_id, job.id)
    return ContactHistory.changes(key, status=status, reason=reason)


def suppress_if_needed(ctx: _Context, job: Job, event: ProviderEvent, row_email: str) -> bool:
    """Hard bounce, complaint, unsubscribe: suppress now. Soft bounces: after N of them.

    The address is the matched delivery row's: queued events carry only its hash.
    """
    email = row_email
    if not email:
        return False
    reason = suppression_reason(event)
    if reason is not None:
        add_suppression(ctx.storage, job.tenant_id, email, reason=reason, source="sendgrid",
                        campaign_id=job.campaign_id, clock=ctx.clock)
        return True
    if event.soft_bounce:
        return count_soft_bounce(ctx, job, email)
    return False


def count_soft_bounce(ctx: _Context, job: Job, email: str) -> bool:
    """One more soft bounce on the (inactive) suppression row; suppress at the threshold."""
    table = ctx.storage.table(SUPPRESSIONS)
    key = Suppression.key(job.tenant_id, email)
    row = table.find(*key)
    if row is not None and row.get("active", True):
        return False
    bounces = int((row or {}).get("soft_bounces", 0) or 0) + 1
    if bounces >= ctx.settings.soft_bounce_suppress_after:
        add_suppression(ctx.storage, job.tenant_id, email, reason="soft_bounces", source="sendgrid",
                                 campaign_id=job.campaign_id, clock=ctx.clock)
        table.update(Suppression.changes(key, soft_bounces=bounces))
        return True
    now = iso(ctx.clock())
    table.upsert(Suppression(*key, email=email, reason="soft_bounce", source="sendgrid",
                             active=False, soft_bounces=bounces, at=now, updated_at=now).to_entity())
    return False


def keep_orphan(storage: Storage, event: ProviderEvent, clock: Clock) -> None:
    """An event we cannot match: kept (without the address) for support, never an error."""
    entity = DeliveryEvent(
        DeliveryEvent.orphan_partition(iso(clock())[:10]), event.key, type=event.type, at=event.at,
        source="sendgrid", provider_message_id=event.message_id, tenant_id=event.tenant_id,
        job_id=event.job_id, task_id=event.task_id, contact_id=event.contact_id, detail=event.detail,
        email_hash=event.email_hash,
    ).to_entity()
    try:
        storage.table(DELIVERY_EVENTS).insert(entity)
    except AlreadyExists:
        pass


def orphan_count(storage: Storage, day: str) -> int:
    """How many orphaned events were kept on ``day`` (``YYYY-MM-DD``)."""
    orphans = storage.table(DELIVERY_EVENTS).partition(DeliveryEvent.orphan_partition(day), select=["RowKey"])
    return sum(1 for _ in orphans)


def _task_is_terminal(storage: Storage, event: ProviderEvent) -> bool:
    task = storage.table(TASKS).find(event.job_id, event.task_id)
    if task is None:
        return True  # no such task: waiting cannot help
    try:
        return TaskStatus(task.get("status", "pending")).is_terminal
    except ValueError:
        return True


def parse_events_message(text: str) -> EventBatch | DeliveryLogRequest:
    """Decode an ``events-queue`` message; raises ``BadMessage`` when it is neither kind."""
    try:
        value = json.loads(text)
    except ValueError as err:
        raise BadMessage("events-queue message is not JSON") from err
    kind = value.get("kind") if isinstance(value, dict) else None
    try:
        if kind == "delivery_log":
            return DeliveryLogRequest.model_validate(value)
        return EventBatch.model_validate(value)
    except ValueError as err:
        raise BadMessage(f"events-queue message rejected: {type(err).__name__}") from err


__all__ = ["EventReport", "process_event_batch", "parse_events_message", "orphan_count"]
