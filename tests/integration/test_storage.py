"""The storage layer against Azurite: what the Functions host will read, batching, ETags, paging."""

from __future__ import annotations

import base64

import pytest
from azure.storage.queue import QueueClient

from core.errors import AlreadyExists, Conflict
from core.storage import JOB_QUEUE, TASKS, Storage


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
