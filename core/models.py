"""Stored records and their table entities.

Each record knows how to become a table entity and back, so column names live in one
place. Columns are plain words a person reads in the portal: ``status``, ``email``,
``count_sent``; timestamps are ISO-8601 UTC strings.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from collections.abc import Callable, Mapping
from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Any, ClassVar, Self

from core.counts import RECOUNT_PARTITION, count_columns, counts_from_columns, counts_from_json
from core.ids import email_hash, normalize_email, task_id
from core.in_flight import IN_FLIGHT_NOTE
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


# -- how a record becomes a row ---------------------------------------------------------------------

RowKeys = tuple[str, str]  # (PartitionKey, RowKey)


def keyed(key: RowKeys | Mapping[str, Any], columns: Mapping[str, Any]) -> Entity:
    """An entity of ``columns`` at ``key``: a (partition, row) pair or an entity read from the table.

    The one place a row's keys are put next to its columns.
    """
    if not isinstance(key, tuple):
        key = (key["PartitionKey"], key["RowKey"])
    return {"PartitionKey": key[0], "RowKey": key[1], **columns}


def key_field(read: Callable[[str, str], Any]) -> Any:
    """A record field read from its row's keys (``read(partition, row)``), never stored as a column."""
    return field(metadata={"from_key": read})


def partition_key_field() -> Any:
    """A record field that is its row's PartitionKey."""
    return key_field(lambda partition, row: partition)


def row_key_field() -> Any:
    """A record field that is its row's RowKey."""
    return key_field(lambda partition, row: row)


def json_column(default_factory: Callable[[], Any]) -> Any:
    """A column stored as compact JSON text (readable in the portal), a dict or list in the record."""
    return field(default_factory=default_factory, metadata={"json": True})


def _is_column(f: Field[Any]) -> bool:
    return f.name != "etag" and "from_key" not in f.metadata


_COLUMNS: dict[type, tuple[tuple[str, bool], ...]] = {}


def _columns(cls: type) -> tuple[tuple[str, bool], ...]:
    """(column name, stored as JSON) of each column field of a record class, in field order (cached)."""
    known = _COLUMNS.get(cls)
    if known is None:
        known = _COLUMNS[cls] = tuple(
            (f.name, bool(f.metadata.get("json"))) for f in fields(cls) if _is_column(f)
        )
    return known


def _field_default(f: Field[Any]) -> Any:
    if f.default_factory is not MISSING:
        return f.default_factory()
    return None if f.default is MISSING else f.default


class Keyed:
    """A record whose row may be changed a few columns at a time (a merge keeps the others)."""

    @classmethod
    def _stored(cls, columns: Mapping[str, Any]) -> Mapping[str, Any]:
        return columns

    @classmethod
    def changes(cls, key: RowKeys | Mapping[str, Any], **columns: Any) -> Entity:
        """The row's key and the changed ``columns``, for a merge (``Table.update``/``upsert``)."""
        return keyed(key, cls._stored(columns))


class Row(Keyed):
    """A row whose columns are the record's dataclass fields, under the same names.

    Subclasses are dataclasses and say where the row lives (``keys``). Every field is a column,
    except ``etag`` and fields read from the keys (``partition_key_field``, ``row_key_field``,
    or a ``from_key`` reader of their own); a ``json_column`` is stored as JSON text. A column
    whose value is ``None`` is left out of the entity, so an optional column stays absent
    (``None`` defaults are how a record keeps the exact columns a row has always had).
    """

    #: A record with a ``key(...)`` function: the fields it is called with (else ``keys`` is its own).
    key_fields: ClassVar[tuple[str, ...]] = ()

    def keys(self) -> RowKeys:
        """(PartitionKey, RowKey) of this record's row."""
        key: Callable[..., RowKeys] = getattr(self, "key")  # noqa: B009 (only some records have one)
        return key(*(getattr(self, name) for name in self.key_fields))

    def to_entity(self) -> Entity:
        columns = {name: getattr(self, name) for name, _ in _columns(type(self))}
        return keyed(self.keys(), self._stored(columns))

    @classmethod
    def from_entity(cls, e: Mapping[str, Any]) -> Self:
        """The record of a stored row; a column the row lacks (an older row) takes the field's default."""
        values: dict[str, Any] = {}
        for f in fields(cls):  # type: ignore[arg-type]  # every Row subclass is a dataclass
            if "from_key" in f.metadata:
                values[f.name] = f.metadata["from_key"](e["PartitionKey"], e["RowKey"])
            elif f.name == "etag":
                values[f.name] = etag_of(e)
            elif e.get(f.name) is not None:
                values[f.name] = _loads(e[f.name], _field_default(f)) if f.metadata.get("json") else e[f.name]
        factory: Any = cls
        return factory(**values)

    @classmethod
    def _stored(cls, columns: Mapping[str, Any]) -> Mapping[str, Any]:
        """``columns`` as stored: JSON columns as text, ``None`` left out; a name that is not one of
        the record's columns is a ``ValueError`` (a typo would add a column people then misread)."""
        known = dict(_columns(cls))
        unknown = set(columns) - set(known)
        if unknown:
            raise ValueError(f"{cls.__name__} has no column {sorted(unknown)}")
        return {
            name: _json(value) if known[name] else value
            for name, value in columns.items() if value is not None
        }


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
    delivery_semantics: str = ""  # at-most-once | at-least-once | reconcile; empty: DELIVERY_SEMANTICS
    sender_domains: list[str] = field(default_factory=list)  # allowed from_email domains; empty: any
    warmup: str = ""  # "on", "off" or a schedule "50,100,..."; empty: WARMUP_NEW_DOMAINS decides
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
            "warmup": self.warmup,
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
            warmup=e.get("warmup", "") or "",
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
    "delivery_semantics", "sender_domains", "warmup", "updated_at",
})


#: Who did it: the key id (never the key) behind each act on a campaign or a job, one column each.
ACTOR_COLUMNS = ("created_by", "scheduled_by", "paused_by", "resumed_by", "cancelled_by")
#: A campaign's last audience estimate (JSON), which the operator's volume forecast reads.
ESTIMATE_COLUMN = "estimate"
#: A job's report of how its ``unknown`` recipients were resolved (JSON; ``core.counts.unknown_report``).
UNKNOWN_RESOLUTION_COLUMN = "unknown_resolution"


def actors_of(e: Entity) -> dict[str, str]:
    """The ``*_by`` columns a row has (absent: nobody did that yet)."""
    return {column: e[column] for column in ACTOR_COLUMNS if e.get(column)}


@dataclass
class Contact(Row):
    """A Contacts row (PartitionKey tenant, RowKey the contact id)."""

    id: str = row_key_field()
    tenant_id: str = partition_key_field()
    email: str = ""
    name: str = ""
    attributes: dict[str, Any] = json_column(dict)
    lists: list[str] = json_column(list)
    state: str = "active"
    created_at: str = ""
    updated_at: str = ""

    def keys(self) -> RowKeys:
        return self.tenant_id, self.id


@dataclass
class Campaign(Keyed):
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
    actors: dict[str, str] = field(default_factory=dict)  # who did it: ``created_by`` → key id, …
    estimate: dict[str, Any] = field(default_factory=dict)  # the last audience estimate (cached)
    etag: str = ""

    def to_entity(self) -> Entity:
        return {
            **self.actors,
            **({ESTIMATE_COLUMN: _json(self.estimate)} if self.estimate else {}),
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
            actors=actors_of(e),
            estimate=_loads(e.get(ESTIMATE_COLUMN), {}),
            etag=etag_of(e),
        )


@dataclass
class Job(Keyed):
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
    dry_run: bool = False  # validated and accounted for like a real run, handed to nobody for delivery
    send_mode: str = ""  # ``batched`` or ``per-recipient``: decided once, at the job's first claim
    send_mode_reason: str = ""  # why (task_manager/batch_send.py decides it)
    actors: dict[str, str] = field(default_factory=dict)  # who did it: ``created_by`` → key id, …
    # How its ``unknown`` recipients were resolved (``core.counts.unknown_report``); empty: none yet.
    unknown_resolution: dict[str, int] = field(default_factory=dict)
    # Held by the sending domain's warm-up: why, until when (the next UTC day) and the day the rest fits.
    waiting_reason: str = ""
    waiting_until: str = ""
    waiting_eta: str = ""
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
        if self.dry_run:
            entity["dry_run"] = True
        if self.unknown_resolution:
            entity[UNKNOWN_RESOLUTION_COLUMN] = _json(self.unknown_resolution)
        if self.waiting_until:
            entity.update(waiting_reason=self.waiting_reason, waiting_until=self.waiting_until,
                          waiting_eta=self.waiting_eta)
        if self.send_mode:
            entity["send_mode"], entity["send_mode_reason"] = self.send_mode, self.send_mode_reason
        entity.update(self.actors)
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
            dry_run=bool(e.get("dry_run", False)),
            send_mode=e.get("send_mode", "") or "",
            send_mode_reason=e.get("send_mode_reason", "") or "",
            actors=actors_of(e),
            unknown_resolution=_loads(e.get(UNKNOWN_RESOLUTION_COLUMN), {}),
            waiting_reason=e.get("waiting_reason", "") or "",
            waiting_until=e.get("waiting_until", "") or "",
            waiting_eta=e.get("waiting_eta", "") or "",
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
class Task(Keyed):
    """One chunk of a job's roster, claimed by one host at a time.

    Progress is ``cursor`` and ``leftover`` as of the task's last write (claim, finish, pause,
    re-queue); while it runs, its delivery rows are the progress: each send group's rows say
    ``sending`` just before their hand-over (``send_marks``), so a crash leaves ``unknown`` only
    those really handed over. ``in_flight`` is only ever non-empty on a row a host of an older
    version was sending: without ``send_marks`` that whole chunk is treated as handed over.
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
    # How many of its rows carry each ``resolution`` (``core.counts.tally_delivery_rows``).
    resolutions: dict[str, int] = field(default_factory=dict)
    roster_cursor: str = ""
    send_marks: bool = False
    lease_owner: str = ""
    lease_until: str = ""
    attempt: int = 0
    last_error: str = ""
    created_at: str = ""
    updated_at: str = ""
    completed_at: str = ""
    # Handed its window slot on: it was left with only recipients their domain deferred, so it waits
    # off the window (the Status Manager re-enqueues it when due) and never holds a slot again.
    parked: bool = False
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
            "resolutions": _json(self.resolutions),
            "lease_owner": self.lease_owner,
            "lease_until": self.lease_until,
            "attempt": self.attempt,
            "last_error": self.last_error,
            "updated_at": self.updated_at,
            "completed_at": self.completed_at,
            "parked": self.parked,
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
            resolutions=_loads(e.get("resolutions"), {}),
            roster_cursor=e.get("roster_cursor", ""),
            lease_owner=e.get("lease_owner", ""),
            lease_until=e.get("lease_until", ""),
            attempt=e.get("attempt", 0) or 0,
            last_error=e.get("last_error", ""),
            created_at=e.get("created_at", ""),
            updated_at=e.get("updated_at", ""),
            completed_at=e.get("completed_at", ""),
            parked=bool(e.get("parked", False)),
            etag=etag_of(e),
        )


# Columns the Status Manager reads from every task of an active job (not the recipients).
TASK_SUMMARY_COLUMNS = [
    "RowKey",
    "status",
    "size",
    "counts",
    "resolutions",
    "lease_until",
    "attempt",
    "cursor",
    "updated_at",
    "parked",
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


def schedule_key(send_at: str, tenant_id: str, campaign_id: str) -> str:
    """RowKey of a campaign's row in the Schedule index: sorts by due time."""
    return f"{send_at}|{tenant_id}|{campaign_id}"


#: The Schedule RowKey suffix of a dry run (``{send_at}|{tenant}|{campaign}|dry-run``).
DRY_RUN_SUFFIX = "|dry-run"


def message_index_partition(message_id: str) -> str:
    """MessageIndex: 256 partitions spread the index; the id alone names the partition (a point read)."""
    return hashlib.sha256(message_id.encode()).hexdigest()[:2]


def active_job_key(tenant_id: str, job_id: str) -> str:
    """RowKey of a job in the ActiveJobs index the Status Manager walks."""
    return f"{tenant_id}|{job_id}"


# -- the other tables' rows -------------------------------------------------------------------------
# Column names are the ones support staff read in the portal and rows already stored hold:
# never rename one. Each record builds its keys in one place (``key``/``keys``).


@dataclass
class Delivery(Row):
    """A Deliveries row: one recipient's outcome (``delivery_entity`` writes the Task Manager's)."""

    partition: str = partition_key_field()  # {job id}-{task index}
    contact_id: str = row_key_field()
    job_id: str = ""
    tenant_id: str = ""
    email: str = ""
    status: str = ""
    reason: str = ""
    provider: str = ""
    provider_message_id: str = ""
    attempts: int = 0
    updated_at: str = ""
    throttled_since: str | None = None  # a throttled ``retrying`` row: when throttling began
    outcome: str | None = None  # once events change the status: the Task Manager's outcome
    outcome_at: str | None = None
    outcome_reason: str | None = None
    status_event: str | None = None  # the event key whose status won
    redacted: bool | None = None  # the contact was erased
    # Once it was ``unknown``: how that was resolved (``core.reconciliation``: accepted_by_event,
    # not_accepted, resent, no_event_feed); the task's outcome writes merge, so it survives them.
    resolution: str | None = None

    def keys(self) -> RowKeys:
        return self.partition, self.contact_id


@dataclass
class InFlightRow(Row):
    """A Deliveries row that is not a recipient's: the recipients one task run has handed to the
    provider and not yet recorded (``core/in_flight.py`` says why it exists and who reads it)."""

    partition: str = partition_key_field()  # {job id}-{task index}, the task's delivery partition
    row_key: str = row_key_field()  # ~in-flight-{attempt}: after every contact id
    job_id: str = ""
    tenant_id: str = ""
    in_flight: list[str] = json_column(list)  # contact ids; empty: nothing in the provider's hands
    in_flight_count: int = 0
    note: str = IN_FLIGHT_NOTE
    updated_at: str = ""

    def keys(self) -> RowKeys:
        return self.partition, self.row_key

    def as_sending(self) -> list[Entity]:
        """Its recipients as ``sending`` delivery rows, for readers that show each recipient."""
        return [
            Delivery(self.partition, contact_id, job_id=self.job_id, tenant_id=self.tenant_id,
                     status=DeliveryStatus.SENDING.value, updated_at=self.updated_at,
                     reason="handed to the provider; no answer recorded yet").to_entity()
            for contact_id in self.in_flight
        ]


@dataclass
class DeliveryEvent(Row):
    """A DeliveryEvents row: one provider event, insert-only (a duplicate is a no-op)."""

    partition: str = partition_key_field()  # {job id}-{task index}, or orphans-{day}
    row_key: str = row_key_field()  # {contact id}|{event key}; an orphan's: the event key
    tenant_id: str = ""
    job_id: str = ""
    task_id: str | None = None  # orphans only
    contact_id: str = ""
    type: str = ""
    at: str = ""
    source: str = ""
    reason_code: str | None = None
    detail: str = ""
    provider_response: str | None = None
    provider_message_id: str = ""
    email_hash: str | None = None  # orphans only: the address travels as its hash
    redacted: bool | None = None

    def keys(self) -> RowKeys:
        return self.partition, self.row_key

    @staticmethod
    def row_key_for(contact_id: str, event_key: str) -> str:
        return f"{contact_id}|{event_key}"

    @staticmethod
    def orphan_partition(day: str) -> str:
        """Events that match no delivery, one partition per day (``YYYY-MM-DD``)."""
        return f"orphans-{day}"


@dataclass
class ActiveJob(Row):
    """An ActiveJobs row: a job the Status Manager walks until it closes."""

    tenant_id: str
    job_id: str
    since: str = ""  # the job's creation: erasure markers older than the oldest are purged

    def keys(self) -> RowKeys:
        return ACTIVE_PARTITION, active_job_key(self.tenant_id, self.job_id)


@dataclass
class Recount(Row):
    """A Recounts row: a finished task whose delivery rows changed, for the next recount."""

    tenant_id: str
    job_id: str
    task_id: str
    marked_at: str = ""

    def keys(self) -> RowKeys:
        return RECOUNT_PARTITION, f"{self.tenant_id}|{self.job_id}|{self.task_id}"


RECONCILE_PARTITION = "due"  # Reconciles: one partition the Status Manager walks each pass


@dataclass
class ReconcileMark(Row):
    """A Reconciles row: a task with ``unknown`` recipients the Status Manager settles once due.

    Written by whoever records an ``unknown`` outcome, with ``due_at`` the end of the window in
    which the provider's events may still prove the message accepted (``core.reconciliation``).
    """

    tenant_id: str
    job_id: str
    task_id: str
    due_at: str = ""
    # False: the job does not wait for it (an at-most-once tenant: its unknowns are only
    # reported); True, or absent on an older row: the job stays open until it is settled.
    holds_job_open: bool | None = None

    def keys(self) -> RowKeys:
        return RECONCILE_PARTITION, f"{self.tenant_id}|{self.job_id}|{self.task_id}"


@dataclass
class ScheduleEntry(Row):
    """A Schedule row: a scheduled campaign, keyed so the index sorts by due time."""

    tenant_id: str
    campaign_id: str
    send_at: str
    traceparent: str = ""  # the run's trace continues from the call that scheduled it
    dry_run: bool | None = None  # a dry run's own row (its RowKey ends ``|dry-run``)
    scheduled_by: str | None = None  # the key id that scheduled a dry run

    def keys(self) -> RowKeys:
        key = schedule_key(self.send_at, self.tenant_id, self.campaign_id)
        return SCHEDULE_PARTITION, key + DRY_RUN_SUFFIX if self.dry_run else key


@dataclass
class Suppression(Row):
    """A Suppressions row, keyed by the sha256 of the normalized address (so the row can outlive it)."""

    tenant_id: str = partition_key_field()
    email_hash: str = row_key_field()
    email: str = ""
    reason: str = ""
    source: str = ""
    campaign_id: str | None = None
    active: bool = True
    at: str = ""
    updated_at: str = ""
    soft_bounces: int | None = None
    redacted: bool | None = None

    def keys(self) -> RowKeys:
        return self.tenant_id, self.email_hash

    @staticmethod
    def key(tenant_id: str, email: str) -> RowKeys:
        return tenant_id, email_hash(normalize_email(email))


@dataclass
class ContactHistory(Row):
    """A ContactHistory row: a closed job's outcome for one contact (no address)."""

    tenant_id: str = partition_key_field()
    contact_id: str = key_field(lambda partition, row: row.split("|", 1)[0])
    job_id: str = ""
    task_id: str = ""
    campaign_id: str = ""
    campaign_name: str = ""
    status: str = ""
    reason: str = ""
    provider: str = ""
    provider_message_id: str = ""
    updated_at: str = ""
    job_completed_at: str = ""
    dry_run: bool | None = None  # what a dry run would have done, not a delivery

    key_fields = ("tenant_id", "contact_id", "job_id")

    @staticmethod
    def key(tenant_id: str, contact_id: str, job_id: str) -> RowKeys:
        return tenant_id, f"{contact_id}|{job_id}"


@dataclass
class RetentionMarker(Row):
    """The retention run's marker (in ``ContactHistory``, a partition no tenant id can equal)."""

    last_run: str = ""

    key_fields = ()

    @staticmethod
    def key() -> RowKeys:
        return "~housekeeping", "retention"


@dataclass
class MessageIndexEntry(Row):
    """A MessageIndex row: finds a delivery by its provider message id."""

    message_id: str = row_key_field()
    tenant_id: str = ""
    job_id: str = ""
    task_id: str = ""
    contact_id: str = ""

    key_fields = ("message_id",)

    @staticmethod
    def key(message_id: str) -> RowKeys:
        return message_index_partition(message_id), message_id


@dataclass
class Erasure(Row):
    """An Erasures marker: a deleted contact running jobs must skip (no address)."""

    tenant_id: str = partition_key_field()
    contact_id: str = ""
    erased_at: str = ""

    def keys(self) -> RowKeys:
        return self.tenant_id, f"{self.erased_at}|{self.contact_id}"  # time first: one key range


@dataclass
class RateLimitWindow(Row):
    """A RateLimits row: the tokens of one scope leased in the current one-second window."""

    scope: str = partition_key_field()  # provider:<name> or tenant:<id>
    window: int = -1  # the epoch second
    taken: int = 0
    rate_per_second: float = 0.0

    key_fields = ("scope",)

    @staticmethod
    def key(scope: str) -> RowKeys:
        return scope, "window"


@dataclass
class ProviderHealthRow(Row):
    """A ProviderHealth row: a provider's shared breaker; ISO times beside the epoch seconds compared."""

    provider: str = partition_key_field()
    state: str = "closed"
    until: str = ""
    until_epoch: float = 0.0
    window: str = "{}"  # JSON of the window's per-bucket [ok, failed] counts, sorted
    probe_owner: str = ""
    probe_until: str = ""
    probe_until_epoch: float = 0.0
    last_probe_at: str | None = None  # when the last half-open probe ended, and how (ok/failed)
    last_probe: str | None = None
    updated_at: str = ""

    key_fields = ("provider",)

    @staticmethod
    def key(provider: str) -> RowKeys:
        return provider, "health"


@dataclass
class IdempotencyKey(Row):
    """An IdempotencyKeys row: a transactional email's ``idempotency_key`` (as its sha256)."""

    tenant_id: str = partition_key_field()
    key_hash: str = row_key_field()
    email_id: str = ""
    created_at: str = ""

    def keys(self) -> RowKeys:
        return self.tenant_id, self.key_hash

    @staticmethod
    def key(tenant_id: str, idempotency_key: str) -> RowKeys:
        return tenant_id, hashlib.sha256(idempotency_key.encode()).hexdigest()


@dataclass
class SupportAuditEntry(Row):
    """A SupportAudit row: one read a support key made (never the key, never a query string)."""

    tenant_id: str  # ``*`` for an operator-wide listing of tenants
    id: str = row_key_field()  # a ULID: a tenant's trail reads in time order
    key_id: str = ""
    method: str = ""
    resource: str = ""
    resource_ids: str = "{}"  # JSON of the path's ids, keys sorted
    at: str = ""
    reason: str | None = None  # a system action's why (the reputation brake)

    def keys(self) -> RowKeys:
        return self.tenant_id, self.id


@dataclass
class ApiKey(Row):
    """An ApiKeys row, keyed by the sha256 of the key (never the key itself)."""

    key_hash: str = row_key_field()
    key_id: str = ""
    tenant_id: str = ""
    role: str = ""
    created_at: str = ""
    revoked: bool = False
    revoked_at: str | None = None

    def keys(self) -> RowKeys:
        return KEY_PARTITION, self.key_hash


@dataclass
class ReputationBucket(Row):
    """A Reputation row: a tenant's delivered, hard-bounce and complaint events in one time bucket."""

    tenant_id: str = partition_key_field()
    bucket: str = row_key_field()  # ISO start of the bucket
    delivered: int = 0
    bounced: int = 0
    complained: int = 0

    def keys(self) -> RowKeys:
        return self.tenant_id, self.bucket


@dataclass
class ReputationBrake(Row):
    """The Reputation row ``brake`` of a tenant: its last trip (the window counts from there)."""

    tenant_id: str = partition_key_field()
    tripped_at: str = ""
    reason: str = ""
    sample: int = 0
    bounced: int = 0
    complained: int = 0
    jobs_paused: str = ""  # comma-separated job ids
    bucket: str = ""
    base_delivered: int = 0  # the bucket's counters at the trip: only later events count
    base_bounced: int = 0
    base_complained: int = 0

    ROW: ClassVar[str] = "brake"

    def keys(self) -> RowKeys:
        return self.tenant_id, self.ROW


@dataclass
class ComplianceTally(Row):
    """A Compliance row: one job's unsubscribes and the longest event-to-suppression lag."""

    tenant_id: str = partition_key_field()
    job_id: str = row_key_field()
    unsubscribes: int = 0
    unsubscribe_max_lag_seconds: float = 0.0

    def keys(self) -> RowKeys:
        return self.tenant_id, self.job_id


@dataclass
class PacingRow(Row):
    """A Pacing row: the send rate in force for one (tenant, sending domain, recipient group) scope."""

    scope: str = partition_key_field()
    rate: float | None = None  # 0: unpaced
    ceiling: float | None = None
    changed_at: float | None = None  # epoch seconds of the last change
    deferrals: int | None = None

    ROW: ClassVar[str] = "rate"

    def keys(self) -> RowKeys:
        return self.key(self.scope)

    @classmethod
    def key(cls, scope: str) -> RowKeys:
        return scope, cls.ROW


@dataclass
class WarmupRow(Row):
    """A Warmup row: one (tenant, sending domain)'s place on its daily ramp (``providers/warmup.py``).

    ``first_day`` is the UTC date it first sent under warm-up (day 1 of the schedule); ``sent`` the
    hand-overs admitted on ``day`` (leased in blocks by hosts, so a host's unspent block counts);
    ``allowance`` that day's cap. Written only with ETags.
    """

    scope: str = partition_key_field()  # {tenant}|{sending domain}
    first_day: str = ""
    day: str = ""
    sent: int = 0
    allowance: int = 0

    ROW: ClassVar[str] = "ramp"

    def keys(self) -> RowKeys:
        return self.key(self.scope)

    @classmethod
    def key(cls, scope: str) -> RowKeys:
        return scope, cls.ROW
