"""One event schema for provider and internal events, and the order-independent status merge.

Every delivery has a timeline built from two sources: the internal outcome the Task
Manager recorded on its ``Deliveries`` row (sent, suppressed, skipped, failed, unknown…)
and the provider's events stored in ``DeliveryEvents``. Both are ``TimelineEvent``s.

Provider events arrive late, duplicated and shuffled. ``merge_status`` is a join on a
lattice (pending < unknown < sent < deferred < delivered < dropped < bounced < complained),
so applying the same set of events in any order, any number of times, ends in the same
status; ties are broken by the event key, so the winning reason is deterministic too.
Outcomes Mailroom decided itself (suppressed, skipped, failed, cancelled) never reached
the provider and are sealed: provider events are recorded but do not change them.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from core.ids import email_hash, normalize_email
from core.models import DeliveryEvent
from core.status import DeliveryStatus
from core.storage import Entity

SOURCE_MAILROOM = "mailroom"
SOURCE_SENDGRID = "sendgrid"

# The lattice of delivery statuses provider events may move between.
STATUS_RANK: dict[str, int] = {
    DeliveryStatus.PENDING: 0,
    DeliveryStatus.SENDING: 0,
    DeliveryStatus.RETRYING: 0,
    DeliveryStatus.UNKNOWN: 1,
    DeliveryStatus.SENT: 2,
    DeliveryStatus.DEFERRED: 3,
    DeliveryStatus.DELIVERED: 4,
    DeliveryStatus.DROPPED: 5,
    DeliveryStatus.BOUNCED: 6,
    DeliveryStatus.COMPLAINED: 7,
}
SEALED_STATUSES = frozenset(
    {DeliveryStatus.SUPPRESSED, DeliveryStatus.SKIPPED, DeliveryStatus.FAILED, DeliveryStatus.CANCELLED}
)

# SendGrid event name → (our event type, the delivery status it proves or None for engagement).
SENDGRID_EVENTS: dict[str, tuple[str, DeliveryStatus | None]] = {
    "processed": ("processed", DeliveryStatus.SENT),
    "deferred": ("deferred", DeliveryStatus.DEFERRED),
    "delivered": ("delivered", DeliveryStatus.DELIVERED),
    "bounce": ("bounced", DeliveryStatus.BOUNCED),
    "dropped": ("dropped", DeliveryStatus.DROPPED),
    "spamreport": ("complained", DeliveryStatus.COMPLAINED),
    "open": ("opened", None),
    "click": ("clicked", None),
    "unsubscribe": ("unsubscribed", None),
    "group_unsubscribe": ("unsubscribed", None),
    "group_resubscribe": ("resubscribed", None),
}

# Bounces SendGrid classifies as "blocked" are temporary refusals: soft bounces.
SOFT_BOUNCE_TYPES = frozenset({"blocked"})
_ADDRESS = re.compile(r"[^\s<>()\[\]\"',;:]+@[^\s<>()\[\]\"',;:]+")
_MAX_TEXT = 500


def scrub_addresses(text: str) -> str:
    """Provider responses quote addresses; stored text never holds one (privacy, DESIGN §4.6)."""
    return _ADDRESS.sub("<address>", text or "")[:_MAX_TEXT]


@dataclass(frozen=True)
class TimelineEvent:
    """One thing that happened to a delivery, whoever reported it."""

    type: str
    at: str
    source: str = SOURCE_MAILROOM
    reason_code: str = ""
    detail: str = ""
    provider_response: str = ""

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def status_rank(status: str) -> int:
    return STATUS_RANK.get(status, -1)


def merge_status(current: str, current_key: str, proposed: str, proposed_key: str) -> bool:
    """Whether ``proposed`` (proven by the event ``proposed_key``) replaces ``current``.

    A join on the lattice: higher rank wins; equal rank goes to the larger event key, so
    the result does not depend on arrival order. Sealed statuses never change.
    """
    if current in SEALED_STATUSES or proposed not in STATUS_RANK:
        return False
    if current not in STATUS_RANK:
        return False
    mine, theirs = status_rank(current), status_rank(proposed)
    if theirs != mine:
        return theirs > mine
    return proposed != current or proposed_key > current_key


# -- provider events as they arrive ----------------------------------------------------------


@dataclass(frozen=True)
class ProviderEvent:
    """A SendGrid event reduced to what Mailroom keeps (never the address itself)."""

    key: str  # deterministic: duplicates share it
    kind: str  # SendGrid's event name
    type: str  # our event type
    status: DeliveryStatus | None
    at: str
    timestamp: int
    tenant_id: str
    job_id: str
    task_id: str
    contact_id: str
    message_id: str
    reason_code: str
    detail: str
    provider_response: str
    soft_bounce: bool
    email_hash: str  # sha256 of the normalized address: an orphan keeps it; the address never travels
    # This email's own id, ``<X-Message-Id>.<k>`` (``sg_message_id`` is ``<X-Message-Id>.<filter>.<k>``):
    # the emails of one batched request share the X-Message-Id and differ in ``k``. Empty when the
    # event's ``sg_message_id`` has no such suffix.
    email_message_id: str = ""

    @property
    def message_ids(self) -> list[str]:
        """The ids a delivery may be indexed by, the most specific first: a batched send records
        ``<X-Message-Id>.<k>``, a send of one recipient per request the bare ``X-Message-Id``."""
        return [i for i in (self.email_message_id, self.message_id) if i]

    @property
    def matched_by_custom_args(self) -> bool:
        return bool(self.tenant_id and self.job_id and self.task_id and self.contact_id)

    @property
    def partition(self) -> str:
        return f"{self.job_id}-{self.task_id}"

    def timeline(self) -> TimelineEvent:
        return TimelineEvent(self.type, self.at, SOURCE_SENDGRID, self.reason_code, self.detail,
                             self.provider_response)


def event_key(raw: dict[str, Any], kind: str, timestamp: int) -> str:
    """Sortable by time and stable across duplicates (``sg_event_id`` when SendGrid gives one)."""
    identity = raw.get("sg_event_id")
    if not isinstance(identity, str) or not identity:
        identity = json.dumps(raw, sort_keys=True, separators=(",", ":"), default=str)
    digest = hashlib.sha256(identity.encode()).hexdigest()[:16]
    return f"{timestamp:010d}-{kind[:16]}-{digest}"


def _text(raw: dict[str, Any], name: str) -> str:
    value = raw.get(name)
    return value if isinstance(value, str) else ("" if value is None else str(value))


def parse_sendgrid_event(raw: Any) -> ProviderEvent | None:
    """One SendGrid webhook event, or ``None`` when it is not an event we understand."""
    if not isinstance(raw, dict):
        return None
    kind = _text(raw, "event")
    if kind not in SENDGRID_EVENTS:
        return None
    try:
        timestamp = int(raw.get("timestamp") or 0)
    except (TypeError, ValueError):
        timestamp = 0
    timestamp = max(0, min(timestamp, 9_999_999_999))
    event_type, status = SENDGRID_EVENTS[kind]
    bounce_type = _text(raw, "type")
    soft = kind == "bounce" and bounce_type in SOFT_BOUNCE_TYPES
    reason_code = scrub_addresses(_text(raw, "status") or bounce_type or _text(raw, "bounce_classification"))
    response = scrub_addresses(_text(raw, "reason") or _text(raw, "response"))
    return ProviderEvent(
        key=event_key(raw, kind, timestamp),
        kind=kind,
        type=event_type,
        status=status,
        at=datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z"),
        timestamp=timestamp,
        tenant_id=_text(raw, "tenant_id"),
        job_id=_text(raw, "job_id"),
        task_id=_text(raw, "task_id"),
        contact_id=_text(raw, "contact_id"),
        message_id=_text(raw, "sg_message_id").split(".", 1)[0],
        email_message_id=email_message_id(_text(raw, "sg_message_id")),
        reason_code=reason_code[:64],
        detail=describe(kind, bounce_type, raw),
        provider_response=response,
        soft_bounce=soft,
        email_hash=_text(raw, "email_hash") or _hash_of_address(_text(raw, "email")),
    )


def email_message_id(sg_message_id: str) -> str:
    """``<X-Message-Id>.<k>`` from SendGrid's ``<X-Message-Id>.<filter...>.<k>``, else ``""``."""
    parts = sg_message_id.split(".")
    if len(parts) < 3 or not parts[0] or not parts[-1].isdigit():
        return ""
    return f"{parts[0]}.{parts[-1]}"


def _hash_of_address(address: str) -> str:
    return email_hash(normalize_email(address)) if address.strip() else ""


def describe(kind: str, bounce_type: str, raw: dict[str, Any]) -> str:
    """A sentence support staff can read out to a customer."""
    if kind == "processed":
        return "accepted by SendGrid for delivery"
    if kind == "deferred":
        attempt = _text(raw, "attempt")
        suffix = f" (attempt {attempt})" if attempt else ""
        return "the receiving server deferred it; SendGrid retries" + suffix
    if kind == "delivered":
        return "the receiving server accepted it"
    if kind == "bounce":
        if bounce_type in SOFT_BOUNCE_TYPES:
            return "the receiving server blocked it (soft bounce)"
        return "the receiving server rejected the address (hard bounce)"
    if kind == "dropped":
        return f"SendGrid dropped it: {scrub_addresses(_text(raw, 'reason')) or 'no reason given'}"
    if kind == "spamreport":
        return "the recipient marked it as spam"
    if kind == "open":
        return "opened"
    if kind == "click":
        return "a link was clicked"
    if kind in ("unsubscribe", "group_unsubscribe"):
        return "the recipient unsubscribed through SendGrid"
    return kind


def suppression_reason(event: ProviderEvent) -> str | None:
    """Why this event suppresses its address at once (``None``: it does not)."""
    if event.kind == "bounce" and not event.soft_bounce:
        return "hard_bounce"
    if event.kind == "spamreport":
        return "complaint"
    if event.kind in ("unsubscribe", "group_unsubscribe"):
        return "unsubscribed"
    if event.kind == "dropped":
        reason = event.detail.lower()
        if "unsubscribed" in reason:
            return "unsubscribed"
        if "spam" in reason:
            return "complaint"
        if "bounced" in reason:
            return "hard_bounce"
    return None


# -- events-queue messages -------------------------------------------------------------------


class EventBatch(BaseModel):
    """A slice of one webhook batch (fits a 64 KiB queue message); ``attempt`` counts re-tries."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["events"] = "events"
    source: str = SOURCE_SENDGRID
    events: list[Any]  # a non-object element is ignored by the processor, not a bad message
    attempt: int = Field(0, ge=0)


class DeliveryLogRequest(BaseModel):
    """Asks the event processor to write a closed job's delivery log (off the timer)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["delivery_log"] = "delivery_log"
    tenant_id: str = Field(min_length=1, max_length=64)
    job_id: str = Field(min_length=1, max_length=64)


# Base64 grows text by 4/3; 64 KiB on the wire leaves 48 KiB of JSON, minus headroom.
MAX_MESSAGE_JSON_BYTES = 45_000
# What the event processor reads of a SendGrid event (``parse_sendgrid_event``): a queued event
# carries only these, so events-queue never holds an address (DESIGN §4.6). Strings are scrubbed
# of addresses (bounce reasons quote them) and the address itself travels as ``email_hash``: the
# processor finds the delivery by ids, suppresses the address of the delivery row it matched, and
# keeps only the hash on an orphan.
QUEUED_FIELDS = ("event", "timestamp", "sg_event_id", "sg_message_id", "type", "status", "reason",
                 "response", "bounce_classification", "attempt", "tenant_id", "job_id", "task_id",
                 "contact_id", "email_hash")


def queued_event(raw: Any) -> dict[str, Any] | None:
    """The part of one webhook event the processor needs, without addresses; ``None``: not an event."""
    if not isinstance(raw, dict):
        return None
    reduced = dict(raw)
    address = reduced.pop("email", None)
    if isinstance(address, str) and address.strip() and not reduced.get("email_hash"):
        reduced["email_hash"] = _hash_of_address(address)
    kept: dict[str, Any] = {}
    for name in QUEUED_FIELDS:
        value = reduced.get(name)
        if isinstance(value, str):
            kept[name] = scrub_addresses(value)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            kept[name] = value
    return kept


def split_into_messages(events: list[Any], limit: int = MAX_MESSAGE_JSON_BYTES) -> tuple[list[str], int]:
    """Queue message texts holding every event's ``queued_event`` form, each within ``limit`` bytes;
    and how many were left out (not an event object, or too large even reduced)."""
    messages: list[str] = []
    current: list[str] = []
    size = 0
    dropped = 0
    envelope = len(EventBatch(events=[]).model_dump_json()) + 8
    for raw in events:
        event = queued_event(raw)
        if event is None:
            dropped += 1
            continue
        text = json.dumps(event, separators=(",", ":"), ensure_ascii=False)
        weight = len(text.encode()) + 1
        if weight + envelope > limit:
            dropped += 1
            continue
        if current and size + weight + envelope > limit:
            messages.append(_batch_text(current))
            current, size = [], 0
        current.append(text)
        size += weight
    if current:
        messages.append(_batch_text(current))
    return messages, dropped


def _batch_text(event_texts: list[str]) -> str:
    return '{"kind":"events","source":"sendgrid","events":[' + ",".join(event_texts) + '],"attempt":0}'


def event_entity(event: ProviderEvent) -> Entity:
    """The ``DeliveryEvents`` row of one provider event (insert-only: a duplicate is a no-op)."""
    return DeliveryEvent(
        event.partition, DeliveryEvent.row_key_for(event.contact_id, event.key),
        tenant_id=event.tenant_id, job_id=event.job_id, contact_id=event.contact_id, type=event.type,
        at=event.at, source=SOURCE_SENDGRID, reason_code=event.reason_code, detail=event.detail,
        provider_response=event.provider_response, provider_message_id=event.message_id,
    ).to_entity()


def timeline_event_from_entity(entity: Entity) -> TimelineEvent:
    return TimelineEvent(
        type=entity.get("type", ""),
        at=entity.get("at", ""),
        source=entity.get("source", SOURCE_SENDGRID),
        reason_code=entity.get("reason_code", ""),
        detail=entity.get("detail", ""),
        provider_response=entity.get("provider_response", ""),
    )


def internal_events(row: Entity, queued_at: str = "") -> list[TimelineEvent]:
    """The Mailroom side of a delivery's timeline, synthesized from its ``Deliveries`` row.

    The event processor keeps the Task Manager's original outcome in ``outcome`` /
    ``outcome_at`` / ``outcome_reason`` when it first changes a row's status, so the
    timeline still shows ``sent`` (or ``unknown``) after the row says ``delivered``.
    """
    events: list[TimelineEvent] = []
    if queued_at:
        events.append(TimelineEvent("queued", queued_at, detail="the job put this recipient on its roster"))
    outcome = row.get("outcome") or row.get("status", "")
    at = row.get("outcome_at") or row.get("updated_at", "")
    reason = row.get("outcome_reason") if row.get("outcome") else row.get("reason", "")
    if outcome == DeliveryStatus.SENT:
        provider = row.get("provider", "") or "the provider"
        attempts = int(row.get("attempts", 0) or 0)
        detail = f"handed to {provider}" + (f" after {attempts} attempt(s)" if attempts > 1 else "")
        events.append(TimelineEvent("sent", at, detail=detail, reason_code=reason or ""))
    elif outcome:
        events.append(TimelineEvent(outcome, at, detail=reason or outcome))
    return events


def timeline(row: Entity, provider_rows: list[Entity], queued_at: str = "") -> list[TimelineEvent]:
    """The whole timeline of one delivery, oldest first."""
    events = internal_events(row, queued_at) + [timeline_event_from_entity(e) for e in provider_rows]
    # Provider timestamps have whole seconds: compare to the second, Mailroom's own first on ties.
    return sorted(events, key=lambda e: e.at[:19])
