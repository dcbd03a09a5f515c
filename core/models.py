"""Stored records and their table entities.

Each record knows how to become a table entity and back, so column names live in one
place. Columns are plain words a person reads in the portal: ``status``, ``email``,
``count_sent``; timestamps are ISO-8601 UTC strings.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from dataclasses import dataclass, field
from typing import Any

from core.counts import count_columns, counts_from_columns, counts_from_json
from core.ids import task_id
from core.status import DeliveryStatus, JobStatus, TaskStatus, zero_counts
from core.storage import Entity, etag_of

TENANT_PARTITION = "tenant"
KEY_PARTITION = "key"
SCHEDULE_PARTITION = "due"
ACTIVE_PARTITION = "active"

# A binary property holds at most 64 KiB; recipients are spread over several.
_CHUNK_BYTES = 60_000
_MAX_CHUNKS = 16


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _loads(value: Any, default: Any) -> Any:
    if value in (None, ""):
        return default
    return json.loads(value)


def _names(value: Any) -> list[str]:
    """A comma-separated column (``sendgrid,acs``) as a list; commas keep it readable in the portal."""
    return [name.strip() for name in str(value or "").split(",") if name.strip()]


@dataclass
class Tenant:
    """A Tenants row. ``providers`` and ``delivery_semantics`` empty: the deployment's settings."""

    id: str
    name: str
    contact_salt: str
    rate_limit_per_minute: int | None = None
    max_roster: int | None = None
    state: str = "active"
    created_at: str = ""
    providers: list[str] = field(default_factory=list)  # failover order; empty: EMAIL_PROVIDERS
    delivery_semantics: str = ""  # at-most-once | at-least-once; empty: DELIVERY_SEMANTICS
    sender_domains: list[str] = field(default_factory=list)  # allowed from_email domains; empty: any
    updated_at: str = ""
    etag: str = ""

    def to_entity(self) -> Entity:
        """Only the columns that are set: a cleared limit or setting is an absent column."""
        entity: Entity = {
            "PartitionKey": TENANT_PARTITION,
            "RowKey": self.id,
            "name": self.name,
            "contact_salt": self.contact_salt,
            "state": self.state,
            "created_at": self.created_at,
        }
        optional: dict[str, Any] = {
            "rate_limit_per_minute": self.rate_limit_per_minute,
            "max_roster": self.max_roster,
            "providers": ",".join(self.providers),
            "delivery_semantics": self.delivery_semantics,
            "sender_domains": ",".join(self.sender_domains),
            "updated_at": self.updated_at,
        }
        entity.update({column: value for column, value in optional.items() if value not in (None, "")})
        return entity

    @classmethod
    def from_entity(cls, e: Entity) -> Tenant:
        return cls(
            id=e["RowKey"],
            name=e.get("name", ""),
            contact_salt=e.get("contact_salt", ""),
            rate_limit_per_minute=e.get("rate_limit_per_minute"),
            max_roster=e.get("max_roster"),
            state=e.get("state", "active"),
            created_at=e.get("created_at", ""),
            providers=_names(e.get("providers")),
            delivery_semantics=e.get("delivery_semantics", "") or "",
            sender_domains=_names(e.get("sender_domains")),
            updated_at=e.get("updated_at", "") or "",
            etag=etag_of(e),
        )

    def allows_sender(self, from_email: str) -> bool:
        """Whether ``from_email``'s domain is one the tenant may send from (exact, case-insensitive)."""
        if not self.sender_domains:
            return True
        return from_email.rpartition("@")[2].lower() in self.sender_domains


TENANT_COLUMNS = frozenset({
    "name", "contact_salt", "state", "created_at", "rate_limit_per_minute", "max_roster", "providers",
    "delivery_semantics", "sender_domains", "updated_at",
})


@dataclass
class Contact:
    id: str
    tenant_id: str
    email: str
    name: str = ""
    attributes: dict[str, Any] = field(default_factory=dict)
    lists: list[str] = field(default_factory=list)
    state: str = "active"
    created_at: str = ""
    updated_at: str = ""

    @classmethod
    def from_entity(cls, e: Entity) -> Contact:
        return cls(
            id=e["RowKey"],
            tenant_id=e["PartitionKey"],
            email=e.get("email", ""),
            name=e.get("name", ""),
            attributes=_loads(e.get("attributes"), {}),
            lists=_loads(e.get("lists"), []),
            state=e.get("state", "active"),
            created_at=e.get("created_at", ""),
            updated_at=e.get("updated_at", ""),
        )


@dataclass
class Campaign:
    id: str
    tenant_id: str
    name: str
    template: dict[str, Any]  # empty while ``template_ref`` names the blob holding it
    criteria: dict[str, Any]
    status: str
    send_at: str = ""
    schedule_key: str = ""
    current_job_id: str = ""
    job_count: int = 0
    counts: dict[str, int] = field(default_factory=zero_counts)
    created_at: str = ""
    updated_at: str = ""
    completed_at: str = ""
    template_ref: str = ""  # a template too large for its column: its blob (core.template_store)
    etag: str = ""

    def to_entity(self) -> Entity:
        return {
            "PartitionKey": self.tenant_id,
            "RowKey": self.id,
            "name": self.name,
            "status": self.status,
            "send_at": self.send_at,
            "schedule_key": self.schedule_key,
            "current_job_id": self.current_job_id,
            "job_count": self.job_count,
            "template": "" if self.template_ref else _json(self.template),
            "template_ref": self.template_ref,
            "criteria": _json(self.criteria),
            "counts": _json(self.counts),
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "completed_at": self.completed_at,
        }

    @classmethod
    def from_entity(cls, e: Entity) -> Campaign:
        return cls(
            id=e["RowKey"],
            tenant_id=e["PartitionKey"],
            name=e.get("name", ""),
            template=_loads(e.get("template"), {}),
            criteria=_loads(e.get("criteria"), {}),
            status=e.get("status", "draft"),
            send_at=e.get("send_at", ""),
            schedule_key=e.get("schedule_key", ""),
            current_job_id=e.get("current_job_id", ""),
            job_count=e.get("job_count", 0) or 0,
            counts={**zero_counts(), **counts_from_json(e.get("counts"))},
            created_at=e.get("created_at", ""),
            updated_at=e.get("updated_at", ""),
            completed_at=e.get("completed_at", ""),
            template_ref=e.get("template_ref", "") or "",
            etag=etag_of(e),
        )


@dataclass
class Job:
    id: str
    tenant_id: str
    campaign_id: str
    campaign_name: str
    template: dict[str, Any]  # empty while ``template_ref`` names the blob holding it
    criteria: dict[str, Any]
    status: str = JobStatus.QUEUED.value
    roster_size: int = 0
    roster_cursor: str = ""
    expanded: bool = False
    tasks_total: int = 0
    tasks_done: int = 0
    counts: dict[str, int] = field(default_factory=zero_counts)
    lease_owner: str = ""
    lease_until: str = ""
    failure_reason: str = ""
    last_error: str = ""
    created_at: str = ""
    started_at: str = ""
    expanded_at: str = ""
    completed_at: str = ""
    progress_at: str = ""
    retry_of: str = ""  # a retry-failed job: the job whose failed recipients are its roster
    template_ref: str = ""  # a template too large for its column: its blob (core.template_store)
    test_of: str = ""  # a test send (``POST /campaigns/{id}/test``): the campaign it tests
    etag: str = ""

    def to_entity(self) -> Entity:
        entity: Entity = {
            "PartitionKey": self.tenant_id,
            "RowKey": self.id,
            "campaign_id": self.campaign_id,
            "retry_of": self.retry_of,
            "campaign_name": self.campaign_name,
            "status": self.status,
            "roster_size": self.roster_size,
            "roster_cursor": self.roster_cursor,
            "expanded": self.expanded,
            "tasks_total": self.tasks_total,
            "tasks_done": self.tasks_done,
            "lease_owner": self.lease_owner,
            "lease_until": self.lease_until,
            "failure_reason": self.failure_reason,
            "last_error": self.last_error,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "expanded_at": self.expanded_at,
            "completed_at": self.completed_at,
            "progress_at": self.progress_at,
            "template": "" if self.template_ref else _json(self.template),
            "template_ref": self.template_ref,
            "criteria": _json(self.criteria),
        }
        entity.update(count_columns(self.counts))
        if self.test_of:
            entity["test_of"] = self.test_of
        return entity

    @classmethod
    def from_entity(cls, e: Entity) -> Job:
        counts = counts_from_columns(e)
        return cls(
            id=e["RowKey"],
            tenant_id=e["PartitionKey"],
            campaign_id=e.get("campaign_id", ""),
            campaign_name=e.get("campaign_name", ""),
            template=_loads(e.get("template"), {}),
            criteria=_loads(e.get("criteria"), {}),
            status=e.get("status", "queued"),
            roster_size=e.get("roster_size", 0) or 0,
            roster_cursor=e.get("roster_cursor", ""),
            expanded=bool(e.get("expanded", False)),
            tasks_total=e.get("tasks_total", 0) or 0,
            tasks_done=e.get("tasks_done", 0) or 0,
            counts=counts,
            lease_owner=e.get("lease_owner", ""),
            lease_until=e.get("lease_until", ""),
            failure_reason=e.get("failure_reason", ""),
            last_error=e.get("last_error", ""),
            created_at=e.get("created_at", ""),
            started_at=e.get("started_at", ""),
            expanded_at=e.get("expanded_at", ""),
            completed_at=e.get("completed_at", ""),
            progress_at=e.get("progress_at", ""),
            retry_of=e.get("retry_of", "") or "",
            template_ref=e.get("template_ref", "") or "",
            test_of=e.get("test_of", "") or "",
            etag=etag_of(e),
        )


@dataclass(frozen=True, slots=True)
class Recipient:
    """One roster entry as a task carries it: enough to render and send without a lookup."""

    contact_id: str
    email: str
    name: str
    attributes: dict[str, Any]

    def as_row(self) -> list[Any]:
        return [self.contact_id, self.email, self.name, self.attributes]


def pack_recipients(recipients: list[Recipient]) -> dict[str, bytes]:
    """Compress a task's recipients into binary columns ``recipients_0``… (≤64 KiB each)."""
    blob = zlib.compress(_json([r.as_row() for r in recipients]).encode(), 6)
    chunks = [blob[i : i + _CHUNK_BYTES] for i in range(0, len(blob), _CHUNK_BYTES)] or [b""]
    if len(chunks) > _MAX_CHUNKS:
        raise ValueError("recipients too large for one task entity")
    return {f"recipients_{i}": chunk for i, chunk in enumerate(chunks)}


def unpack_recipients(e: Entity) -> list[Recipient]:
    parts: list[bytes] = []
    i = 0
    while f"recipients_{i}" in e:
        value = e[f"recipients_{i}"]
        parts.append(value if isinstance(value, bytes) else bytes(value))
        i += 1
    if not parts or not parts[0]:
        return []
    rows = json.loads(zlib.decompress(b"".join(parts)))
    return [Recipient(r[0], r[1], r[2], r[3]) for r in rows]


def packed_size(columns: dict[str, bytes]) -> int:
    return sum(len(v) for v in columns.values())


@dataclass
class Task:
    """One chunk of a job's roster, claimed by one host at a time.

    Progress is ``cursor`` (recipients before it have an outcome in Deliveries, except
    those listed in ``leftover``) and ``in_flight`` (the chunk being sent under the current
    lease, written *before* the provider is called). With ``send_marks`` each recipient's
    delivery row also says ``sending`` just before its own hand-over, so a crash leaves
    ``unknown`` only those really handed over; without it (a task a host of an older version
    was sending) the whole ``in_flight`` chunk is treated as handed over.
    """

    job_id: str
    index: int
    tenant_id: str
    size: int
    status: str = TaskStatus.PENDING.value
    cursor: int = 0
    in_flight: list[int] = field(default_factory=list)
    leftover: list[int] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    roster_cursor: str = ""
    send_marks: bool = False
    lease_owner: str = ""
    lease_until: str = ""
    attempt: int = 0
    last_error: str = ""
    created_at: str = ""
    updated_at: str = ""
    completed_at: str = ""
    etag: str = ""

    @property
    def row_key(self) -> str:
        return task_id(self.index)

    @property
    def delivery_partition(self) -> str:
        return f"{self.job_id}-{self.row_key}"

    def progress_entity(self) -> Entity:
        """The columns that change while a task runs (merge, never the recipients)."""
        return {
            "PartitionKey": self.job_id,
            "RowKey": self.row_key,
            "status": self.status,
            "cursor": self.cursor,
            "in_flight": _json(self.in_flight),
            "send_marks": self.send_marks,
            "leftover": _json(self.leftover),
            "counts": _json(self.counts),
            "lease_owner": self.lease_owner,
            "lease_until": self.lease_until,
            "attempt": self.attempt,
            "last_error": self.last_error,
            "updated_at": self.updated_at,
            "completed_at": self.completed_at,
        }

    def to_entity(self, recipients: list[Recipient]) -> Entity:
        entity = self.progress_entity()
        entity.update(
            tenant_id=self.tenant_id,
            size=self.size,
            roster_cursor=self.roster_cursor,
            created_at=self.created_at,
        )
        entity.update(pack_recipients(recipients))
        return entity

    @classmethod
    def from_entity(cls, e: Entity) -> Task:
        return cls(
            job_id=e["PartitionKey"],
            index=int(e["RowKey"]),
            tenant_id=e.get("tenant_id", ""),
            size=e.get("size", 0) or 0,
            status=e.get("status", "pending"),
            cursor=e.get("cursor", 0) or 0,
            in_flight=_loads(e.get("in_flight"), []),
            send_marks=bool(e.get("send_marks", False)),
            leftover=_loads(e.get("leftover"), []),
            counts=_loads(e.get("counts"), {}),
            roster_cursor=e.get("roster_cursor", ""),
            lease_owner=e.get("lease_owner", ""),
            lease_until=e.get("lease_until", ""),
            attempt=e.get("attempt", 0) or 0,
            last_error=e.get("last_error", ""),
            created_at=e.get("created_at", ""),
            updated_at=e.get("updated_at", ""),
            completed_at=e.get("completed_at", ""),
            etag=etag_of(e),
        )


# Columns the Status Manager reads from every task of an active job (not the recipients).
TASK_SUMMARY_COLUMNS = [
    "RowKey",
    "status",
    "size",
    "counts",
    "lease_until",
    "attempt",
    "cursor",
    "updated_at",
]


def delivery_entity(
    task: Task,
    recipient: Recipient,
    status: DeliveryStatus | str,
    at: str,
    *,
    reason: str = "",
    provider: str = "",
    message_id: str = "",
    attempts: int = 0,
) -> Entity:
    """One row of the per-recipient delivery log (what support staff read)."""
    return {
        "PartitionKey": task.delivery_partition,
        "RowKey": recipient.contact_id,
        "job_id": task.job_id,
        "tenant_id": task.tenant_id,
        "email": recipient.email,
        "status": str(status),
        "reason": reason,
        "provider": provider,
        "provider_message_id": message_id,
        "attempts": attempts,
        "updated_at": at,
    }


def delivery_mark_entity(task: Task, recipient: Recipient, at: str) -> Entity:
    """A recipient's row just before its hand-over to the provider: ``sending``.

    Merged over what is there, so a ``retrying`` row keeps its ``attempts`` and
    ``throttled_since``; the outcome replaces it once the provider answers.
    """
    return {
        "PartitionKey": task.delivery_partition,
        "RowKey": recipient.contact_id,
        "job_id": task.job_id,
        "tenant_id": task.tenant_id,
        "email": recipient.email,
        "status": DeliveryStatus.SENDING.value,
        "reason": "handed to the provider; no answer recorded yet",
        "updated_at": at,
    }


def schedule_key(send_at: str, tenant_id: str, campaign_id: str) -> str:
    """RowKey of a campaign's row in the Schedule index: sorts by due time."""
    return f"{send_at}|{tenant_id}|{campaign_id}"


def message_index_partition(message_id: str) -> str:
    """MessageIndex: 256 partitions spread the index; the id alone names the partition (a point read)."""
    return hashlib.sha256(message_id.encode()).hexdigest()[:2]


def active_job_key(tenant_id: str, job_id: str) -> str:
    """RowKey of a job in the ActiveJobs index the Status Manager walks."""
    return f"{tenant_id}|{job_id}"
