"""Entity-group transactions ($batch) and string-column queries straight onto HTTP, without the SDK.

Why: ``azure-data-tables`` runs its whole policy pipeline for every sub-request of a batch
and builds the multipart body through generic HTTP objects; measured on 2 cores that is
~0.64 ms of Python CPU per entity, which made Python CPU, not storage, the bound of a
chunked pipeline (DESIGN §9). This module writes the same request the SDK writes (same
multipart/mixed changeset, same JSON with the same ``@odata.type`` annotations, same
Shared Key signature) at a small fraction of that CPU.

It covers exactly what ``core.storage.Table`` batches: insert, merge-upsert and
replace-upsert, with values of the types our models store (str, bool, int32, float,
bytes, datetime, None). Anything else raises ``UnsupportedEntity`` and the caller uses
the SDK for that batch. Errors map onto ``core.errors`` like the SDK path does.

Queries (``query_strings``) are for the one hot read, the roster scan: it selects string
columns only, so the service's ``odata=nometadata`` JSON is already the entity and the SDK's
per-entity deserialization (a third of the expansion's CPU in the bench profile) is skipped.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import math
import secrets
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from email.utils import formatdate
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import urllib3

from core.errors import AlreadyExists, StorageError
from core.storage_refusals import error_code_in, storage_failure

API_VERSION = "2019-02-02"
INSERT, MERGE, REPLACE = "insert", "merge", "replace"
_METHOD = {MERGE: "PATCH", REPLACE: "PUT"}
_INT32 = 2**31
_RETRYABLE_STATUS = (500, 502, 503, 504)


class UnsupportedEntity(TypeError):
    """A value this path does not encode; the caller falls back to the SDK."""


def encode_entity(entity: dict[str, Any]) -> str:
    """The JSON body the SDK would send for ``entity`` (same ``@odata.type`` annotations)."""
    out: dict[str, Any] = {}
    for name, value in entity.items():
        if value is None:
            continue
        kind = type(value)
        if kind is str or isinstance(value, str):
            out[name], out[name + "@odata.type"] = str(value), "Edm.String"
        elif kind is bool:
            out[name] = value
        elif kind is int:
            if not -_INT32 <= value < _INT32:
                raise UnsupportedEntity(f"{name}: integer outside Int32")
            out[name] = value
        elif kind is float:
            out[name] = _double(value)
            out[name + "@odata.type"] = "Edm.Double"
        elif kind is bytes:
            out[name], out[name + "@odata.type"] = base64.b64encode(value).decode(), "Edm.Binary"
        elif kind is datetime:
            out[name], out[name + "@odata.type"] = _edm_datetime(value), "Edm.DateTime"
        else:
            raise UnsupportedEntity(f"{name}: {kind.__name__} is left to the SDK")
    return json.dumps(out)


def _double(value: float) -> float | str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return value


def _edm_datetime(value: datetime) -> str:
    # As the SDK does: to UTC (a naive value is taken as local time), microseconds always.
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _key(value: str) -> str:
    return quote(value.replace("'", "''"), safe="")


class LeanBatchClient:
    """Sends $batch requests for one storage account, signed with its Shared Key."""

    def __init__(
        self,
        service_url: str,
        account_name: str,
        account_key: str,
        on_request: Callable[[str], None] | None = None,
        timeout: float = 30.0,
    ) -> None:
        self._service_url = service_url.rstrip("/")
        self._account = account_name
        self._key = base64.b64decode(account_key)
        self._batch_url = self._service_url + "/$batch"
        self._resource = "/" + account_name + urlsplit(self._batch_url).path
        self._on_request = on_request
        retries = urllib3.Retry(total=3, connect=3, read=0, status=0, other=0, backoff_factor=0.2)
        self._pool = urllib3.PoolManager(maxsize=16, retries=retries, timeout=timeout)
        # Multipart boundaries: unique per request and unguessable by what goes in a body, without
        # two ``uuid4`` calls (an ``os.urandom`` each) per batch.
        self._boundary = secrets.token_hex(16)
        self._batches = itertools.count()

    def submit(self, table: str, kind: str, entities: list[dict[str, Any]]) -> None:
        """One transaction of ``kind`` over ``entities`` (one partition, ≤100, checked by the caller)."""
        bodies = [encode_entity(entity) for entity in entities]
        now = formatdate(usegmt=True)
        n = next(self._batches)
        changeset, batch = f"changeset_{self._boundary}_{n}", f"batch_{self._boundary}_{n}"
        parts = [f"--{batch}\r\nContent-Type: multipart/mixed; boundary={changeset}\r\n\r\n"]
        for index, (entity, body) in enumerate(zip(entities, bodies, strict=True)):
            parts.append(self._part(table, kind, entity, body, changeset, index, now))
        parts.append(f"--{changeset}--\r\n\r\n--{batch}--\r\n")
        payload = "".join(parts).encode("utf-8")
        content_type = f"multipart/mixed; boundary={batch}"
        headers = self._headers("POST", self._resource, now, "application/json", content_type)
        # An upsert is idempotent, so a server error or a dropped connection may be retried (a
        # task's outcome rows must not be lost to a reset: its recipients would end ``unknown``);
        # an insert is not.
        attempts = 3 if kind != INSERT else 1
        for attempt in range(1, attempts + 1):
            if self._on_request is not None:
                self._on_request("table.batch")
            try:
                response = self._pool.request("POST", self._batch_url, body=payload, headers=headers)
            except urllib3.exceptions.HTTPError as err:
                if attempt < attempts:
                    time.sleep(0.2 * attempt)
                    continue
                raise StorageError(f"storage request failed: {type(err).__name__}") from err
            if response.status in _RETRYABLE_STATUS and attempt < attempts:
                time.sleep(0.2 * attempt)
                continue
            _raise_for_batch(response.status, response.data)
            return

    def _part(
        self, table: str, kind: str, entity: dict[str, Any], body: str, changeset: str, index: int, now: str
    ) -> str:
        if kind == INSERT:
            line = f"POST {self._service_url}/{table} HTTP/1.1"
            accept = "application/json;odata=minimalmetadata"
        else:
            keys = f"PartitionKey='{_key(entity['PartitionKey'])}',RowKey='{_key(entity['RowKey'])}'"
            line = f"{_METHOD[kind]} {self._service_url}/{table}({keys}) HTTP/1.1"
            accept = "application/json"
        length = len(body.encode("utf-8"))
        return (
            f"--{changeset}\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n"
            f"Content-ID: {index}\r\n\r\n{line}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\nx-ms-version: {API_VERSION}\r\nDataServiceVersion: 3.0\r\n"
            f"Accept: {accept}\r\nx-ms-date: {now}\r\nDate: {now}\r\n\r\n{body}\r\n"
        )

    def query_strings(
        self, table: str, odata_filter: str, select: list[str], page_size: int = 1000
    ) -> Iterator[dict[str, str]]:
        """Every entity matching ``odata_filter``, page by page, with the ``select`` columns.

        Only for columns that hold strings: without metadata the service sends values
        untyped, which for a string is the value itself.
        """
        url = f"{self._service_url}/{table}()"
        resource = "/" + self._account + urlsplit(url).path
        params = {"$filter": odata_filter, "$select": ",".join(select), "$top": str(page_size)}
        while True:
            now = formatdate(usegmt=True)
            headers = self._headers("GET", resource, now, "application/json;odata=nometadata")
            if self._on_request is not None:
                self._on_request("table.query")
            try:
                response = self._pool.request("GET", f"{url}?{urlencode(params, quote_via=quote)}",
                                              headers=headers)
            except urllib3.exceptions.HTTPError as err:
                raise StorageError(f"storage request failed: {type(err).__name__}") from err
            if response.status != 200:
                raise StorageError(f"storage query failed with status {response.status}")
            for entity in json.loads(response.data)["value"]:
                yield {name: value for name, value in entity.items() if value is not None}
            next_partition = response.headers.get("x-ms-continuation-NextPartitionKey")
            if not next_partition:
                return
            params["NextPartitionKey"] = next_partition
            next_row = response.headers.get("x-ms-continuation-NextRowKey")
            if next_row:
                params["NextRowKey"] = next_row
            else:
                params.pop("NextRowKey", None)

    def _headers(
        self, verb: str, resource: str, now: str, accept: str, content_type: str = ""
    ) -> dict[str, str]:
        """The headers of a request the Table service accepts, signed with the account key."""
        headers = {
            "x-ms-version": API_VERSION,
            "x-ms-date": now,
            "Date": now,
            "DataServiceVersion": "3.0",
            "MaxDataServiceVersion": "3.0;NetFx",
            "Accept": accept,
            "Authorization": self._sign(verb, content_type, now, resource),
        }
        if content_type:
            headers["Content-Type"] = content_type
        return headers

    def _sign(self, verb: str, content_type: str, now: str, resource: str) -> str:
        """Shared Key for the Table service: verb, MD5, type, date, canonical resource."""
        text = f"{verb}\n\n{content_type}\n{now}\n{resource}"
        digest = hmac.new(self._key, text.encode("utf-8"), hashlib.sha256).digest()
        return f"SharedKey {self._account}:{base64.b64encode(digest).decode()}"

    def close(self) -> None:
        self._pool.clear()


def _raise_for_batch(status: int, data: bytes) -> None:
    """A $batch answers 202 with one response per operation, or the first failure alone.

    Final refusals (a property or entity too large) are ``StorageRefused``, decided by
    ``core.storage_refusals`` exactly as for the SDK path.
    """
    text = data.decode("utf-8", errors="replace")
    if status != 202:
        raise storage_failure(status, error_code_in(text), "storage batch")
    for line in text.splitlines():
        if not line.startswith("HTTP/1.1 "):
            continue
        code = int(line.split(" ", 2)[1])
        if 200 <= code < 300:
            continue
        if code == 409 and "EntityAlreadyExists" in text:
            raise AlreadyExists("an entity of the batch already exists")
        raise storage_failure(code, error_code_in(text), "storage batch operation")
