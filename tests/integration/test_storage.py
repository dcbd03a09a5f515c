"""The storage layer against Azurite: what the Functions host will read, batching, ETags, paging."""

from __future__ import annotations

import base64
import secrets

import pytest
from azure.storage.queue import QueueClient

from core.errors import AlreadyExists, Conflict, StorageError, StorageRefused
from core.storage import JOB_QUEUE, TASKS, Storage, etag_of
from tests.sim_fixtures import free_port


def test_queue_messages_are_base64_on_the_wire_as_the_functions_host_expects(storage: Storage):
    storage.queue(JOB_QUEUE).send('{"job_id": "j1"}')
    raw = QueueClient.from_connection_string(storage.connection_string, storage.queue_name(JOB_QUEUE))
    content = raw.peek_messages()[0].content
    assert base64.b64decode(content).decode() == '{"job_id": "j1"}'


def test_an_update_with_a_stale_etag_is_a_conflict(storage: Storage):
    table = storage.table(TASKS)
    etag = table.insert({"PartitionKey": "p", "RowKey": "r", "v": 1})
    table.update({"PartitionKey": "p", "RowKey": "r", "v": 2}, etag=etag)
    with pytest.raises(Conflict):
        table.update({"PartitionKey": "p", "RowKey": "r", "v": 3}, etag=etag)


def test_inserting_an_existing_key_is_already_exists(storage: Storage):
    table = storage.table(TASKS)
    table.insert({"PartitionKey": "p", "RowKey": "r"})
    with pytest.raises(AlreadyExists):
        table.insert({"PartitionKey": "p", "RowKey": "r"})


def test_batches_split_by_partition_and_size_and_paging_visits_each_row_once(storage: Storage):
    table = storage.table(TASKS)
    rows = [{"PartitionKey": f"p{i % 3}", "RowKey": f"{i:04d}", "v": i} for i in range(450)]
    assert table.batch_upsert(rows) == 450
    seen, token = [], None
    while True:
        page = table.query_page("PartitionKey ge @lo", {"lo": "p"}, limit=70, continuation=token)
        assert len(page.items) <= 70
        seen += [(r["PartitionKey"], r["RowKey"]) for r in page.items]
        token = page.continuation
        if not token:
            break
    assert sorted(seen) == sorted((r["PartitionKey"], r["RowKey"]) for r in rows)


def _write(storage: Storage, how: str, entity: dict) -> None:
    table = storage.table(TASKS)
    if how == "insert":
        table.insert(entity)
    elif how == "upsert":
        table.upsert(entity)
    elif how == "update":
        table.insert({"PartitionKey": entity["PartitionKey"], "RowKey": entity["RowKey"]})
        table.update(entity)
    elif how == "lean batch":
        table.batch_upsert([entity])
    else:
        sdk_only = Storage(storage.connection_string, storage.namespace, lean_batches=False)
        sdk_only.table(TASKS).batch_upsert([entity])


@pytest.mark.parametrize("how", ["insert", "upsert", "update", "lean batch", "sdk batch"])
def test_a_property_over_64_kib_is_refused_for_good_naming_its_column_not_an_outage(storage: Storage, how):
    entity = {"PartitionKey": "p", "RowKey": secrets.token_hex(4), "small": "ok", "html": "é" * 40_000}
    with pytest.raises(StorageRefused) as refused:
        _write(storage, how, entity)
    assert refused.value.too_large and refused.value.column == "html"
    assert refused.value.code == "PropertyValueTooLarge"


def test_an_outage_is_not_a_refusal():
    down = Storage("DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;"
                   f"TableEndpoint=http://127.0.0.1:{free_port()}/devstoreaccount1;"
                   f"QueueEndpoint=http://127.0.0.1:{free_port()}/devstoreaccount1;")
    with pytest.raises(StorageError) as failed:
        down.table(TASKS).insert({"PartitionKey": "p", "RowKey": "r"})
    assert not isinstance(failed.value, StorageRefused)


def test_modify_inserts_a_missing_entity_and_changes_an_existing_one_under_its_etag(storage: Storage):
    table = storage.table(TASKS)

    def count(entity):
        return {"PartitionKey": "p", "RowKey": "r", "n": (entity or {}).get("n", 0) + 1}

    table.modify("p", "r", count)
    written = table.modify("p", "r", count)
    assert written is not None and written["n"] == 2 == table.get("p", "r")["n"]
    assert etag_of(written) == etag_of(table.get("p", "r"))


def test_modify_reads_and_changes_again_when_someone_wrote_meanwhile(storage: Storage):
    table = storage.table(TASKS)
    table.insert({"PartitionKey": "p", "RowKey": "r", "seen": ""})
    seen = []

    def append(entity):
        seen.append(entity["seen"])
        if len(seen) == 1:  # another writer lands between our read and our write
            table.update({"PartitionKey": "p", "RowKey": "r", "seen": "theirs"})
        return {"PartitionKey": "p", "RowKey": "r", "seen": entity["seen"] + "+ours"}

    table.modify("p", "r", append)
    assert seen == ["", "theirs"] and table.get("p", "r")["seen"] == "theirs+ours"


def test_modify_writes_nothing_when_the_change_has_nothing_to_write(storage: Storage):
    table = storage.table(TASKS)
    assert table.modify("p", "r", lambda entity: None) is None
    assert table.find("p", "r") is None


def test_modify_gives_up_with_a_conflict_when_the_entity_keeps_changing(storage: Storage):
    table = storage.table(TASKS)
    table.insert({"PartitionKey": "p", "RowKey": "r", "v": 0})

    def always_raced(entity):
        table.update({"PartitionKey": "p", "RowKey": "r", "v": entity["v"] + 1})
        return {"PartitionKey": "p", "RowKey": "r", "v": -1}

    with pytest.raises(Conflict):
        table.modify("p", "r", always_raced, tries=3)
    assert table.get("p", "r")["v"] == 3
