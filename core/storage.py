"""The one storage-access layer: tables, queues and blobs.

Everything that talks to Azure Storage goes through here, so batching (≤100 entities,
one partition, <4 MiB a batch), ETags (``If-Match``), continuation tokens and the
mapping of SDK exceptions onto ``core.errors`` live in one place.

Queue messages are base64 text (``TextBase64EncodePolicy``): that is what the Functions
host's queue trigger decodes by default.

``namespace`` prefixes every table and queue name. Tests and the bench use it to run
isolated pipelines on one storage account; production leaves it empty.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import requests
from azure.core import MatchConditions
from azure.core.exceptions import (
    AzureError,
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.core.pipeline.transport import RequestsTransport
from azure.data.tables import (
    TableEntity,
    TableServiceClient,
    TableTransactionError,
    TransactionOperation,
    UpdateMode,
)
from azure.storage.queue import (
    QueueServiceClient,
    TextBase64DecodePolicy,
    TextBase64EncodePolicy,
)

from core.errors import (
    AlreadyExists,
    Conflict,
    FieldProblem,
    InvalidContinuation,
    NotFound,
    StorageError,
    StorageRefused,
)
from core.request_count import RequestCounter
from core.storage_refusals import error_code_in, oversized_column, storage_failure
from core.table_batches import INSERT, MERGE, REPLACE, LeanBatchClient, UnsupportedEntity

# Tables (PascalCase, read by people in the portal's Storage browser).
TENANTS = "Tenants"
API_KEYS = "ApiKeys"
# Contacts are spread over sixteen tables by the first hex digit of their id (core/contact_tables.py).
CONTACT_TABLES = tuple(f"Contacts{digit}" for digit in "0123456789ABCDEF")
SUPPRESSIONS = "Suppressions"
CAMPAIGNS = "Campaigns"
SCHEDULE = "Schedule"
JOBS = "Jobs"
ACTIVE_JOBS = "ActiveJobs"
TASKS = "Tasks"
DELIVERIES = "Deliveries"
DELIVERY_EVENTS = "DeliveryEvents"
PROVIDER_HEALTH = "ProviderHealth"
CONTACT_HISTORY = "ContactHistory"
MESSAGE_INDEX = "MessageIndex"
RATE_LIMITS = "RateLimits"
IDEMPOTENCY_KEYS = "IdempotencyKeys"
SUPPORT_AUDIT = "SupportAudit"
RECOUNTS = "Recounts"
RECONCILES = "Reconciles"
ERASURES = "Erasures"
REPUTATION = "Reputation"
COMPLIANCE = "Compliance"
PACING = "Pacing"
WARMUP = "Warmup"
ALL_TABLES = (
    TENANTS,
    API_KEYS,
    *CONTACT_TABLES,
    SUPPRESSIONS,
    CAMPAIGNS,
    SCHEDULE,
    JOBS,
    ACTIVE_JOBS,
    TASKS,
    DELIVERIES,
    DELIVERY_EVENTS,
    PROVIDER_HEALTH,
    CONTACT_HISTORY,
    MESSAGE_INDEX,
    RATE_LIMITS,
    IDEMPOTENCY_KEYS,
    SUPPORT_AUDIT,
    RECOUNTS,
    RECONCILES,
    ERASURES,
    REPUTATION,
    COMPLIANCE,
    PACING,
    WARMUP,
)

# Queues (kebab-case), each with a -poison twin.
JOB_QUEUE = "job-queue"
TASK_QUEUE = "task-queue"
EVENTS_QUEUE = "events-queue"
ALL_QUEUES = (JOB_QUEUE, TASK_QUEUE, EVENTS_QUEUE)
POISON_SUFFIX = "-poison"

MAX_BATCH_ENTITIES = 100
MAX_BATCH_BYTES = 3_500_000  # the service's limit is 4 MiB; keep headroom for envelope
MAX_PAGE = 1000

Entity = dict[str, Any]

_NAMESPACE_RE = re.compile(r"^[a-z][a-z0-9]{0,15}$")


def _translate(err: AzureError, entities: Iterable[Mapping[str, Any]] = ()) -> StorageError:
    """Map an SDK exception onto our error tree (the caller chains it).

    A 400-class refusal becomes ``StorageRefused`` naming the oversized column of
    ``entities`` when there is one (``core.storage_refusals`` decides what is final).
    """
    if isinstance(err, ResourceNotFoundError):
        return NotFound(str(err).splitlines()[0])
    if isinstance(err, ResourceExistsError):
        return AlreadyExists(str(err).splitlines()[0])
    if isinstance(err, ResourceModifiedError):
        return Conflict("the entity changed since it was read")
    if isinstance(err, HttpResponseError) and err.status_code == 412:
        return Conflict("the entity changed since it was read")
    if isinstance(err, TableTransactionError):
        if getattr(err, "error_code", None) == "EntityAlreadyExists" or "AlreadyExists" in str(err):
            return AlreadyExists("an entity of the batch already exists")
    if isinstance(err, HttpResponseError):
        code = getattr(err, "error_code", None) or error_code_in(str(err))
        failure = storage_failure(err.status_code, code, "storage request")
        if isinstance(failure, StorageRefused):
            failure.column = oversized_column(entities) if failure.too_large else ""
            return failure
    return StorageError(f"storage request failed: {type(err).__name__}")


def etag_of(entity: Mapping[str, Any]) -> str:
    """The ETag the service returned with an entity (``''`` for a hand-built dict)."""
    metadata = getattr(entity, "metadata", None) or {}
    return metadata.get("etag", "")


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode((text + "=" * (-len(text) % 4)).encode())


def _token_mac(signing_key: str, scope: str, payload: str) -> str:
    message = f"continuation\n{scope}\n{payload}".encode()
    return _b64(hmac.new(signing_key.encode(), message, hashlib.sha256).digest()[:18])


def encode_continuation(position: Mapping[str, Any] | None, signing_key: str, scope: str) -> str | None:
    """Seal a page position (the SDK's continuation dict) into an opaque, signed URL-safe token.

    ``scope`` names the list it belongs to (tenant, route, resource ids): the HMAC covers it,
    so a token is only ever accepted back on the list and for the tenant it was issued to.
    """
    if not position:
        return None
    payload = _b64(json.dumps(dict(position), separators=(",", ":")).encode())
    return f"{payload}.{_token_mac(signing_key, scope, payload)}"


def decode_continuation(
    token: str | None, signing_key: str, scope: str, field: str = "continuation"
) -> dict[str, Any] | None:
    """The position sealed by ``encode_continuation`` for this ``scope``.

    Anything else (forged, altered, another list's or another tenant's token) is an
    ``InvalidContinuation`` naming ``field``, never an empty page.
    """
    if not token:
        return None
    refused = InvalidContinuation(
        "invalid continuation token", [FieldProblem(field, "not a token this API issued for this list")]
    )
    payload, _, mac = token.partition(".")
    if not mac or not hmac.compare_digest(mac, _token_mac(signing_key, scope, payload)):
        raise refused
    try:
        value = json.loads(_unb64(payload))
    except (ValueError, binascii.Error) as err:
        raise refused from err
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise refused
    return value


def odata_quote(value: str) -> str:
    """Quote a string literal for an OData filter."""
    return "'" + value.replace("'", "''") + "'"


def _substitute(filter: str, parameters: Mapping[str, str]) -> str:
    """``@name`` words replaced by their quoted string values, as the SDK does."""
    return " ".join(
        odata_quote(parameters[word[1:]]) if word.startswith("@") else word for word in filter.split(" ")
    )


@dataclass
class Page:
    """One page of a query: the entities and where the next page starts (``None``: no more).

    The position is the service's own; the API seals it into a signed token
    (``encode_continuation``) before a client sees it.
    """

    items: list[Entity]
    continuation: dict[str, Any] | None


class Table:
    """One table: point reads, ETag-guarded writes, batches and paged queries.

    With a ``lean`` client, insert and upsert batches go through ``core.table_batches``
    (same request, a fraction of the SDK's CPU); without one, or for a value it does not
    encode, through the SDK.
    """

    def __init__(self, client: Any, name: str, lean: LeanBatchClient | None = None) -> None:
        self._client = client
        self.name = name
        self._lean = lean

    # -- point operations -------------------------------------------------------------
    def get(self, partition: str, row: str, select: list[str] | None = None) -> Entity:
        """Read one entity or raise ``NotFound``."""
        try:
            return self._client.get_entity(partition, row, select=select)
        except AzureError as err:
            raise _translate(err) from err

    def find(self, partition: str, row: str, select: list[str] | None = None) -> Entity | None:
        """Read one entity, or ``None`` when it does not exist."""
        try:
            return self.get(partition, row, select=select)
        except NotFound:
            return None

    def insert(self, entity: Entity) -> str:
        """Create an entity; ``AlreadyExists`` if its keys are taken. Returns the ETag."""
        try:
            return self._client.create_entity(entity).get("etag", "")
        except AzureError as err:
            raise _translate(err, [entity]) from err

    def upsert(self, entity: Entity, replace: bool = False) -> str:
        """Insert or merge (or replace) an entity. Returns the new ETag."""
        mode = UpdateMode.REPLACE if replace else UpdateMode.MERGE
        try:
            return self._client.upsert_entity(entity, mode=mode).get("etag", "")
        except AzureError as err:
            raise _translate(err, [entity]) from err

    def update(self, entity: Entity, etag: str | None = None, replace: bool = False) -> str:
        """Update an existing entity; with ``etag`` only if unchanged (else ``Conflict``)."""
        mode = UpdateMode.REPLACE if replace else UpdateMode.MERGE
        kwargs: dict[str, Any] = {"mode": mode}
        if etag:
            kwargs.update(etag=etag, match_condition=MatchConditions.IfNotModified)
        try:
            return self._client.update_entity(entity, **kwargs).get("etag", "")
        except AzureError as err:
            raise _translate(err, [entity]) from err

    def delete(self, partition: str, row: str, etag: str | None = None) -> None:
        """Delete an entity; deleting a missing one is not an error."""
        kwargs: dict[str, Any] = {}
        if etag:
            kwargs.update(etag=etag, match_condition=MatchConditions.IfNotModified)
        try:
            self._client.delete_entity(partition, row, **kwargs)
        except ResourceNotFoundError:
            return
        except AzureError as err:
            raise _translate(err) from err

    def modify(
        self,
        partition: str,
        row: str,
        change: Callable[[Entity | None], Entity | None],
        tries: int = 5,
        replace: bool = False,
        current: Entity | None = None,
    ) -> Entity | None:
        """Read, change, write only if nobody wrote meanwhile; on a lost race read and change again.

        ``change`` gets the entity as stored (``None``: there is none) and returns what to write
        (the whole row with ``replace``, else the keys and the changed columns), or ``None`` for
        nothing to write. An existing entity is written under its ETag (``If-Match``), a missing
        one is inserted, so of two writers racing from the same read one wins and the other sees
        its write. ``current``: the entity as the caller just read it (saves the first read).
        Returns what was written, with its new ETag (``None``: nothing was). Raises ``Conflict``
        when the entity kept changing ``tries`` times.
        """
        entity = current if current is not None else self.find(partition, row)
        for attempt in range(tries):
            if attempt:
                entity = self.find(partition, row)
            wanted = change(entity)
            if wanted is None:
                return None
            try:
                if entity is None:
                    etag = self.insert(wanted)
                else:
                    etag = self.update(wanted, etag=etag_of(entity) or None, replace=replace)
            except (Conflict, AlreadyExists):
                continue
            written = TableEntity(wanted)
            written._metadata = {"etag": etag, "timestamp": None}  # where the SDK keeps it (``etag_of``)
            return written
        raise Conflict(f"{self.name} {partition}/{row} kept changing while it was being updated")

    # -- batches ----------------------------------------------------------------------
    def _batches(self, entities: Iterable[Entity]) -> Iterator[list[Entity]]:
        """Group entities into service-legal batches: one partition, ≤100, <4 MiB."""
        by_partition: dict[str, list[Entity]] = {}
        for entity in entities:
            by_partition.setdefault(entity["PartitionKey"], []).append(entity)
        for group in by_partition.values():
            batch: list[Entity] = []
            size = 0
            for entity in group:
                weight = _approx_size(entity)
                if batch and (len(batch) >= MAX_BATCH_ENTITIES or size + weight > MAX_BATCH_BYTES):
                    yield batch
                    batch, size = [], 0
                batch.append(entity)
                size += weight
            if batch:
                yield batch

    def legal_batches(self, entities: Iterable[Entity]) -> Iterator[list[Entity]]:
        """The batches ``batch_insert``/``batch_upsert`` would send, for callers that act per batch
        (an import inserts a batch first and decides created/updated only when it is refused)."""
        return self._batches(entities)

    def batch_upsert(self, entities: Iterable[Entity], replace: bool = False) -> int:
        """Upsert many entities with as few requests as the service allows."""
        op = TransactionOperation.UPSERT
        mode = UpdateMode.REPLACE if replace else UpdateMode.MERGE
        count = 0
        for batch in self._batches(entities):
            if not self._submit_lean(REPLACE if replace else MERGE, batch):
                self._submit([(op, entity, {"mode": mode}) for entity in batch])
            count += len(batch)
        return count

    def batch_insert(self, entities: Iterable[Entity]) -> int:
        """Create many entities; a batch containing an existing key raises ``AlreadyExists``."""
        count = 0
        for batch in self._batches(entities):
            if not self._submit_lean(INSERT, batch):
                self._submit([(TransactionOperation.CREATE, entity) for entity in batch])
            count += len(batch)
        return count

    def batch_delete(self, keys: Iterable[tuple[str, str]]) -> int:
        """Delete many entities by (PartitionKey, RowKey)."""
        entities = [{"PartitionKey": pk, "RowKey": rk} for pk, rk in keys]
        count = 0
        for batch in self._batches(entities):
            self._submit([(TransactionOperation.DELETE, entity) for entity in batch])
            count += len(batch)
        return count

    def _submit_lean(self, kind: str, batch: list[Entity]) -> bool:
        """Send one batch the lean way; ``False`` leaves it to the SDK."""
        if self._lean is None:
            return False
        try:
            self._lean.submit(self.name, kind, batch)
        except UnsupportedEntity:
            return False
        except StorageRefused as err:
            err.column = oversized_column(batch) if err.too_large else ""
            raise
        return True

    def _submit(self, operations: list[Any]) -> None:
        try:
            self._client.submit_transaction(operations)
        except AzureError as err:
            raise _translate(err, [operation[1] for operation in operations]) from err

    # -- queries ----------------------------------------------------------------------
    def query(
        self,
        filter: str,
        parameters: Mapping[str, Any] | None = None,
        select: list[str] | None = None,
        page_size: int = MAX_PAGE,
        strings_only: bool = False,
    ) -> Iterator[Entity]:
        """Stream every entity matching ``filter``, page by page (never all in memory).

        ``strings_only``: every ``select`` column holds a string and every parameter is one,
        so with a lean client the pages skip the SDK's per-entity deserialization (the
        roster scan); the entities are then plain dicts without ETag metadata.
        """
        params = dict(parameters or {})
        all_strings = all(isinstance(value, str) for value in params.values())
        if strings_only and self._lean is not None and select and all_strings:
            return self._lean.query_strings(self.name, _substitute(filter, params), select, page_size)
        return self._query_sdk(filter, params, select, page_size)

    def _query_sdk(
        self, filter: str, parameters: dict[str, Any], select: list[str] | None, page_size: int
    ) -> Iterator[Entity]:
        try:
            pages = self._client.query_entities(
                filter, parameters=dict(parameters or {}), select=select, results_per_page=page_size
            ).by_page()
            for page in pages:
                yield from page
        except AzureError as err:
            raise _translate(err) from err

    def query_page(
        self,
        filter: str,
        parameters: Mapping[str, Any] | None = None,
        select: list[str] | None = None,
        limit: int = 100,
        continuation: Mapping[str, Any] | None = None,
    ) -> Page:
        """One page of at most ``limit`` entities and the position of the next one.

        The service may return a short (even empty) page with a token: we keep reading
        until the page is full or the results end, so callers see full pages.
        """
        token = dict(continuation) if continuation else None
        items: list[Entity] = []
        try:
            while True:
                pager = self._client.query_entities(
                    filter,
                    parameters=dict(parameters or {}),
                    select=select,
                    results_per_page=limit - len(items),
                ).by_page(continuation_token=token)
                page = next(pager, None)
                items.extend(page or [])
                token = pager.continuation_token
                if not token or len(items) >= limit:
                    break
        except AzureError as err:
            raise _translate(err) from err
        return Page(items=items, continuation=token or None)

    def partition(self, partition: str, select: list[str] | None = None) -> Iterator[Entity]:
        """Every entity of one partition."""
        return self.query("PartitionKey eq @pk", {"pk": partition}, select=select)


def _approx_size(entity: Mapping[str, Any]) -> int:
    size = 64
    for key, value in entity.items():
        size += len(key) * 2 + (len(value) * 2 if isinstance(value, (str, bytes)) else 16)
    return size


class Queue:
    """One queue of small JSON messages, base64-encoded as the Functions host expects."""

    def __init__(self, client: Any, name: str) -> None:
        self._client = client
        self.name = name

    def send(self, body: str, visibility_timeout: int | None = None) -> None:
        """Enqueue one message (already serialized JSON text)."""
        try:
            self._client.send_message(body, visibility_timeout=visibility_timeout or None)
        except AzureError as err:
            raise _translate(err) from err

    def receive(self, max_messages: int = 32, visibility_timeout: int = 60) -> list[Any]:
        """Receive up to ``max_messages`` (≤32) messages, hidden for ``visibility_timeout`` s."""
        try:
            pager = self._client.receive_messages(
                messages_per_page=min(max_messages, 32),
                visibility_timeout=visibility_timeout,
                max_messages=max_messages,
            )
            return list(pager)
        except AzureError as err:
            raise _translate(err) from err

    def delete(self, message: Any) -> None:
        try:
            self._client.delete_message(message)
        except ResourceNotFoundError:
            return
        except AzureError as err:
            raise _translate(err) from err

    def depth(self) -> int:
        """Approximate number of messages (the service's own estimate)."""
        try:
            return int(self._client.get_queue_properties().approximate_message_count or 0)
        except AzureError as err:
            raise _translate(err) from err

    def peek(self, max_messages: int = 32) -> list[str]:
        """Peek message texts without dequeuing them (tests and support tooling)."""
        try:
            return [m.content for m in self._client.peek_messages(max_messages=min(max_messages, 32))]
        except AzureError as err:
            raise _translate(err) from err

    def peek_messages(self, max_messages: int = 32) -> list[Any]:
        """Peek up to 32 visible messages with their id, ``inserted_on`` and ``dequeue_count``."""
        try:
            return list(self._client.peek_messages(max_messages=min(max_messages, 32)))
        except AzureError as err:
            raise _translate(err) from err

    def release(self, message: Any) -> None:
        """Make a received message visible again now (its receiver gives it back untouched)."""
        try:
            self._client.update_message(message, visibility_timeout=0)
        except ResourceNotFoundError:
            return
        except AzureError as err:
            raise _translate(err) from err

    def clear(self) -> None:
        try:
            self._client.clear_messages()
        except AzureError as err:
            raise _translate(err) from err


_ENVIRONMENT_SETTINGS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "NETRC")
# CA bundles as ``requests`` reads them with ``trust_env`` (the first one set wins).
_CA_BUNDLE_SETTINGS = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")


def sdk_transport() -> RequestsTransport:
    """The SDK clients' HTTP transport: a ``requests`` session that reads proxies and ``.netrc``
    from the environment only when one of those is set. Otherwise it would look for ``~/.netrc``
    on the disk before every storage request (a few % of a host's CPU). A CA bundle named in the
    environment is still honoured: it becomes the session's ``verify``, as ``requests`` would
    have made it (many images set one, which used to switch the whole environment lookup on)."""
    session = requests.Session()
    session.trust_env = any(os.environ.get(name) or os.environ.get(name.lower())
                            for name in _ENVIRONMENT_SETTINGS)
    if not session.trust_env:
        bundle = next((os.environ[name] for name in _CA_BUNDLE_SETTINGS if os.environ.get(name)), None)
        if bundle:
            session.verify = bundle
    return RequestsTransport(session=session, session_owner=True)


class Storage:
    """Entry point: hands out ``Table`` and ``Queue`` objects for one storage account."""

    def __init__(
        self,
        connection_string: str,
        namespace: str = "",
        request_counter: RequestCounter | None = None,
        lean_batches: bool = True,
    ) -> None:
        """``request_counter`` tallies every request by operation (the bench reads it);
        ``lean_batches`` sends insert/upsert batches without the SDK (``STORAGE_LEAN_BATCHES``)."""
        if namespace and not _NAMESPACE_RE.match(namespace):
            raise ValueError("namespace must be lower-case letters and digits, ≤16 characters")
        self.connection_string = connection_string
        self.namespace = namespace
        self.request_counter = request_counter
        table_kwargs: dict[str, Any] = {}
        queue_kwargs: dict[str, Any] = {}
        if request_counter is not None:
            table_kwargs["raw_request_hook"] = request_counter.hook("table")
            queue_kwargs["raw_request_hook"] = request_counter.hook("queue")
        table_kwargs["transport"], queue_kwargs["transport"] = sdk_transport(), sdk_transport()
        self._table_service = TableServiceClient.from_connection_string(connection_string, **table_kwargs)
        self._queue_service = QueueServiceClient.from_connection_string(connection_string, **queue_kwargs)
        self._lean = self._lean_client() if lean_batches else None
        self._tables: dict[str, Table] = {}
        self._queues: dict[str, Queue] = {}

    def _lean_client(self) -> LeanBatchClient | None:
        """A lean batch client when the account is reached with its key (not SAS or Entra)."""
        credential = getattr(self._table_service, "credential", None)
        named = getattr(credential, "named_key", None)
        if named is None:
            return None
        counter = self.request_counter
        return LeanBatchClient(
            self._table_service.url,
            named.name,
            named.key,
            on_request=counter.add if counter is not None else None,
        )

    def table_name(self, name: str) -> str:
        return f"{self.namespace.capitalize()}{name}" if self.namespace else name

    def queue_name(self, name: str) -> str:
        return f"{self.namespace}-{name}" if self.namespace else name

    def table(self, name: str) -> Table:
        if name not in self._tables:
            full = self.table_name(name)
            self._tables[name] = Table(self._table_service.get_table_client(full), full, self._lean)
        return self._tables[name]

    def queue(self, name: str) -> Queue:
        if name not in self._queues:
            full = self.queue_name(name)
            # The service client does not hand its policies down: set them per queue.
            client = self._queue_service.get_queue_client(
                full,
                message_encode_policy=TextBase64EncodePolicy(),
                message_decode_policy=TextBase64DecodePolicy(),
            )
            self._queues[name] = Queue(client, full)
        return self._queues[name]

    def poison(self, name: str) -> Queue:
        return self.queue(name + POISON_SUFFIX)

    def ensure_resources(self) -> None:
        """Create every table and queue (and poison twin) if missing. Idempotent."""
        try:
            for name in ALL_TABLES:
                self._table_service.create_table_if_not_exists(self.table_name(name))
            for name in ALL_QUEUES:
                for full in (self.queue_name(name), self.queue_name(name + POISON_SUFFIX)):
                    try:
                        self._queue_service.create_queue(full)
                    except ResourceExistsError:
                        pass
        except AzureError as err:
            raise _translate(err) from err

    def ping(self) -> None:
        """Cheap round trip to both services; raises ``StorageError`` when down."""
        try:
            next(iter(self._table_service.list_tables(results_per_page=1)), None)
            next(iter(self._queue_service.list_queues(results_per_page=1)), None)
        except AzureError as err:
            raise _translate(err) from err
