"""The lean $batch path writes exactly what the SDK writes, and storage requests are counted."""

from __future__ import annotations

import base64
import secrets
import socket
import struct
import threading
import uuid
from datetime import UTC, datetime

import pytest

from core.errors import AlreadyExists
from core.request_count import RequestCounter
from core.settings import Settings
from core.storage import DELIVERIES, JOB_QUEUE, Storage
from core.table_batches import MERGE, LeanBatchClient
from tests.sim_fixtures import read_http_request

WHEN = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)


def _row(partition: str, row: str) -> dict[str, object]:
    return {
        "PartitionKey": partition,
        "RowKey": row,
        "email": "zoë.o'neil@example.com",
        "empty": "",
        "attempts": 3,
        "negative": -(2**31),
        "flag": True,
        "off": False,
        "ratio": 0.25,
        "raw": b"\x00\xffbytes",
        "at": WHEN,
        "missing": None,
    }


def _typed(entity: dict[str, object]) -> dict[str, tuple[type, object]]:
    return {k: (type(v), v) for k, v in entity.items() if k not in ("PartitionKey", "RowKey")}


@pytest.fixture
def sdk_storage(settings: Settings, storage: Storage) -> Storage:
    """The same tables, written through the SDK's batch path."""
    return Storage(settings.connection_string, namespace=storage.namespace, lean_batches=False)


def test_lean_and_sdk_batches_store_identical_values_and_types(storage: Storage, sdk_storage: Storage):
    partition = "job-'1'-000001"
    storage.table(DELIVERIES).batch_upsert([_row(partition, f"lean{i:03d}") for i in range(150)])
    sdk_storage.table(DELIVERIES).batch_upsert([_row(partition, f"sdk{i:03d}") for i in range(150)])

    lean = storage.table(DELIVERIES).get(partition, "lean042")
    sdk = storage.table(DELIVERIES).get(partition, "sdk042")

    assert _typed(lean) == _typed(sdk)
    assert "missing" not in lean
    assert lean["raw"] == b"\x00\xffbytes" and lean["at"] == WHEN and lean["flag"] is True


def test_a_merge_upsert_keeps_other_columns_and_a_replace_drops_them(storage: Storage):
    table = storage.table(DELIVERIES)
    table.batch_upsert([{"PartitionKey": "p", "RowKey": "r", "email": "a@example.com", "status": "pending"}])
    table.batch_upsert([{"PartitionKey": "p", "RowKey": "r", "status": "sent"}])
    assert table.get("p", "r")["email"] == "a@example.com"
    table.batch_upsert([{"PartitionKey": "p", "RowKey": "r", "status": "failed"}], replace=True)
    assert "email" not in table.get("p", "r")


def test_a_lean_insert_batch_with_an_existing_key_is_already_exists_and_writes_nothing(storage: Storage):
    table = storage.table(DELIVERIES)
    table.batch_insert([{"PartitionKey": "p", "RowKey": "taken"}])
    with pytest.raises(AlreadyExists):
        table.batch_insert([{"PartitionKey": "p", "RowKey": "new"}, {"PartitionKey": "p", "RowKey": "taken"}])
    assert table.find("p", "new") is None


def test_a_value_the_lean_path_does_not_encode_goes_through_the_sdk(storage: Storage):
    table = storage.table(DELIVERIES)
    guid = uuid.uuid4()
    table.batch_upsert([{"PartitionKey": "p", "RowKey": "g", "guid": guid}])
    assert str(table.get("p", "g")["guid"]) == str(guid)


def test_requests_are_counted_by_operation_type(settings: Settings):
    counter = RequestCounter()
    store = Storage(settings.connection_string, namespace="t" + secrets.token_hex(5), request_counter=counter)
    store.ensure_resources()
    before = counter.snapshot()
    store.table(DELIVERIES).batch_upsert([{"PartitionKey": "p", "RowKey": f"{i:03d}"} for i in range(250)])
    store.table(DELIVERIES).get("p", "001")
    list(store.table(DELIVERIES).partition("p"))
    store.queue(JOB_QUEUE).send("{}")
    for message in store.queue(JOB_QUEUE).receive(1):
        store.queue(JOB_QUEUE).delete(message)
    after = counter.snapshot()
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) != before.get(k, 0)}
    assert delta == {
        "table.batch": 3,
        "table.get": 1,
        "table.query": 1,
        "queue.send": 1,
        "queue.receive": 1,
        "queue.delete": 1,
    }


def _strings(partition: str, n: int) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = [
        {"PartitionKey": partition, "RowKey": f"r{i:03d}", "email": f"zoë.o'neil+{i}@example.com",
         "name": "" if i % 3 else f"Zoë \"{i}\" O'Neil", "attributes": '{"plan": "pro"}'}
        for i in range(n)
    ]
    rows[4].pop("name")  # a contact without a name column at all
    return rows


def test_a_lean_string_query_pages_through_and_returns_what_the_sdk_returns(
    storage: Storage, sdk_storage: Storage
):
    partition = f"tenant-'{secrets.token_hex(2)}'"
    storage.table(DELIVERIES).batch_upsert(_strings(partition, 25))
    select = ["RowKey", "email", "name", "attributes"]
    query, params = "PartitionKey eq @p and RowKey gt @after", {"p": partition, "after": "r002"}

    lean = list(storage.table(DELIVERIES).query(query, params, select=select, page_size=4, strings_only=True))
    sdk = list(sdk_storage.table(DELIVERIES).query(query, params, select=select, page_size=4))

    assert [e["RowKey"] for e in lean] == [f"r{i:03d}" for i in range(3, 25)]
    assert [dict(e) for e in lean] == [{k: v for k, v in e.items() if v is not None} for e in sdk]
    assert "name" not in lean[1] and lean[0]["name"] == 'Zoë "3" O\'Neil'


def test_a_lean_query_is_counted_as_a_query_per_page(settings: Settings, storage: Storage):
    counter = RequestCounter()
    counted = Storage(settings.connection_string, namespace=storage.namespace, request_counter=counter)
    partition = secrets.token_hex(4)
    storage.table(DELIVERIES).batch_upsert(_strings(partition, 10))
    rows = list(counted.table(DELIVERIES).query("PartitionKey eq @p", {"p": partition}, select=["RowKey"],
                                                page_size=4, strings_only=True))
    assert len(rows) == 10
    assert counter.snapshot().get("table.query") == 3


class _DropsFirstConnection:
    """A raw HTTP server: the first request's connection is reset, the next ones answer 202."""

    def __init__(self) -> None:
        self.requests = 0
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen()
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}/devstoreaccount1"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with conn:
                read_http_request(conn)
                self.requests += 1
                if self.requests == 1:  # reset: RST instead of an answer
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    continue
                answer = b"--batchresponse\r\nHTTP/1.1 204 No Content\r\n\r\n--batchresponse--\r\n"
                conn.sendall(b"HTTP/1.1 202 Accepted\r\nContent-Length: %d\r\n\r\n%s" % (len(answer), answer))

    def close(self) -> None:
        self._listener.close()


def test_an_upsert_batch_whose_connection_is_dropped_is_sent_again_not_lost():
    server = _DropsFirstConnection()
    client = LeanBatchClient(server.url, "devstoreaccount1", base64.b64encode(b"key").decode())
    try:
        client.submit("Deliveries", MERGE, [{"PartitionKey": "p", "RowKey": "r", "status": "sent"}])
    finally:
        server.close()
    assert server.requests == 2
