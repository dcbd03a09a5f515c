"""Table records: every row is built by its record in core/models, under the columns it always had."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from core.models import (
    ActiveJob,
    ApiKey,
    Contact,
    ContactHistory,
    Delivery,
    DeliveryEvent,
    Erasure,
    IdempotencyKey,
    Job,
    MessageIndexEntry,
    ProviderHealthRow,
    RateLimitWindow,
    Recipient,
    Recount,
    RetentionMarker,
    Row,
    ScheduleEntry,
    SupportAuditEntry,
    Suppression,
    Task,
    delivery_entity,
    message_index_partition,
)

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = (
    "functions",
    "api",
    "campaign_manager",
    "job_manager",
    "task_manager",
    "status_manager",
    "privacy",
    "providers",
    "core",
)

# Each record, and the keys and columns its rows had before the records existed (support staff
# read these names in the portal, and rows already stored hold them).
ROWS: list[tuple[Row, tuple[str, str], set[str]]] = [
    (ActiveJob("t1", "j1", since="2026-01-01"), ("active", "t1|j1"), {"tenant_id", "job_id", "since"}),
    (
        Recount("t1", "j1", "00001", marked_at="m"),
        ("due", "t1|j1|00001"),
        {"tenant_id", "job_id", "task_id", "marked_at"},
    ),
    (
        ScheduleEntry("t1", "c1", "2026-01-01T00:00:00Z", traceparent="tp"),
        ("due", "2026-01-01T00:00:00Z|t1|c1"),
        {"tenant_id", "campaign_id", "send_at", "traceparent"},
    ),
    (
        Suppression(
            *Suppression.key("t1", " A@X.org "),
            email="a@x.org",
            reason="manual",
            source="api",
            campaign_id="",
            at="a",
            updated_at="a",
        ),
        ("t1", "4bb5e4e6bee7c1a6a5e8d2a4bbd1e8fb6c7c0d8e8c0c6d2f7f9e7b0c5f2a1d3e"),
        {"email", "reason", "source", "campaign_id", "active", "at", "updated_at"},
    ),
    (
        ContactHistory(
            "t1",
            "k1",
            job_id="j1",
            task_id="00001",
            campaign_id="c1",
            campaign_name="n",
            status="sent",
            reason="",
            provider="sendgrid",
            provider_message_id="m1",
            updated_at="u",
            job_completed_at="d",
        ),
        ("t1", "k1|j1"),
        {
            "job_id",
            "task_id",
            "campaign_id",
            "campaign_name",
            "status",
            "reason",
            "provider",
            "provider_message_id",
            "updated_at",
            "job_completed_at",
        },
    ),
    (RetentionMarker(last_run="r"), ("~housekeeping", "retention"), {"last_run"}),
    (
        MessageIndexEntry("m1", tenant_id="t1", job_id="j1", task_id="00001", contact_id="k1"),
        (message_index_partition("m1"), "m1"),
        {"tenant_id", "job_id", "task_id", "contact_id"},
    ),
    (
        DeliveryEvent(
            "j1-00001",
            DeliveryEvent.row_key_for("k1", "e1"),
            tenant_id="t1",
            job_id="j1",
            contact_id="k1",
            type="delivered",
            at="a",
            source="sendgrid",
            reason_code="",
            detail="",
            provider_response="",
            provider_message_id="m1",
        ),
        ("j1-00001", "k1|e1"),
        {
            "tenant_id",
            "job_id",
            "contact_id",
            "type",
            "at",
            "source",
            "reason_code",
            "detail",
            "provider_response",
            "provider_message_id",
        },
    ),
    (
        DeliveryEvent(
            DeliveryEvent.orphan_partition("2026-01-01"),
            "e1",
            type="bounce",
            at="a",
            source="sendgrid",
            provider_message_id="m1",
            tenant_id="",
            job_id="",
            task_id="",
            contact_id="",
            detail="",
            email_hash="h",
        ),
        ("orphans-2026-01-01", "e1"),
        {
            "type",
            "at",
            "source",
            "provider_message_id",
            "tenant_id",
            "job_id",
            "task_id",
            "contact_id",
            "detail",
            "email_hash",
        },
    ),
    (
        Erasure("t1", "k1", "2026-01-01T00:00:00Z"),
        ("t1", "2026-01-01T00:00:00Z|k1"),
        {"contact_id", "erased_at"},
    ),
    (
        RateLimitWindow("tenant:t1", window=5, taken=2, rate_per_second=10.0),
        ("tenant:t1", "window"),
        {"window", "taken", "rate_per_second"},
    ),
    (
        ProviderHealthRow(
            "sendgrid",
            state="open",
            until="u",
            until_epoch=1.0,
            window="{}",
            probe_owner="",
            probe_until="",
            probe_until_epoch=0.0,
            updated_at="u",
        ),
        ("sendgrid", "health"),
        {
            "state",
            "until",
            "until_epoch",
            "window",
            "probe_owner",
            "probe_until",
            "probe_until_epoch",
            "updated_at",
        },
    ),
    (
        IdempotencyKey(*IdempotencyKey.key("t1", "order-1"), email_id="e1", created_at="c"),
        ("t1", "3d2a4f0e2ffb1d1e4d6e7d6f0b1a8c3b5e5f9d2c7a1b0e4f6d8c2a9b7e3f1d5c"),
        {"email_id", "created_at"},
    ),
    (
        SupportAuditEntry(
            "t1",
            "01HX",
            key_id="k",
            method="GET",
            resource="/jobs/{job_id}",
            resource_ids='{"job_id":"j1"}',
            at="a",
        ),
        ("t1", "01HX"),
        {"key_id", "tenant_id", "method", "resource", "resource_ids", "at"},
    ),
    (
        ApiKey("hash", key_id="k1", tenant_id="t1", role="tenant", created_at="c"),
        ("key", "hash"),
        {"key_id", "tenant_id", "role", "created_at", "revoked"},
    ),
    (
        Contact(
            "k1",
            "t1",
            "a@x.org",
            name="A",
            attributes={"year": 2},
            lists=["l"],
            created_at="c",
            updated_at="u",
        ),
        ("t1", "k1"),
        {"email", "name", "attributes", "lists", "state", "created_at", "updated_at"},
    ),
]
HASHED = {"Suppression", "IdempotencyKey"}  # RowKey a sha256: checked for its shape, not spelled out


def _id(case: Any) -> str:
    return type(case[0]).__name__ + ("-orphan" if case[1][0].startswith("orphans") else "")


@pytest.mark.parametrize("record,keys,columns", ROWS, ids=[_id(case) for case in ROWS])
def test_every_record_writes_the_keys_and_columns_its_table_always_had(record, keys, columns):
    entity = record.to_entity()
    if type(record).__name__ in HASHED:
        assert entity["PartitionKey"] == keys[0] and re.fullmatch(r"[0-9a-f]{64}", entity["RowKey"])
    else:
        assert (entity["PartitionKey"], entity["RowKey"]) == keys
    assert set(entity) - {"PartitionKey", "RowKey"} == columns


@pytest.mark.parametrize("record,keys,columns", ROWS, ids=[_id(case) for case in ROWS])
def test_a_stored_row_reads_back_as_the_same_record(record, keys, columns):
    assert type(record).from_entity(record.to_entity()) == record


def test_a_suppression_keyed_by_an_address_is_keyed_by_its_normalized_form():
    assert Suppression.key("t1", " A@X.org ") == Suppression.key("t1", "a@x.org")


def test_a_row_written_before_a_column_existed_reads_with_the_columns_default():
    old = {"PartitionKey": "t1", "RowKey": "h", "email": "a@x.org", "reason": "soft_bounce", "active": False}
    suppression = Suppression.from_entity(old)
    assert (suppression.soft_bounces, suppression.campaign_id, suppression.updated_at) == (None, None, "")
    assert Contact.from_entity({"PartitionKey": "t1", "RowKey": "k1"}).attributes == {}


def test_a_change_names_only_the_keys_and_the_changed_columns():
    row = {"PartitionKey": "j1-00001", "RowKey": "k1", "email": "a@x.org", "status": "sent"}
    assert Delivery.changes(row, email="", redacted=True) == {
        "PartitionKey": "j1-00001",
        "RowKey": "k1",
        "email": "",
        "redacted": True,
    }
    assert Job.changes(("t1", "j1"), last_error="x") == {
        "PartitionKey": "t1",
        "RowKey": "j1",
        "last_error": "x",
    }
    assert Contact.changes(("t1", "k1"), lists=["a"])["lists"] == '["a"]'  # JSON as the column holds it


def test_a_change_to_a_column_the_record_does_not_have_is_refused():
    with pytest.raises(ValueError, match="revokd"):
        ApiKey.changes(("key", "hash"), revokd=True)


def test_the_task_managers_delivery_rows_are_delivery_records():
    task = Task(job_id="j1", index=1, tenant_id="t1", size=1)
    entity = delivery_entity(
        task,
        Recipient("k1", "a@x.org", "", {}),
        "sent",
        "u",
        provider="sendgrid",
        message_id="m1",
        attempts=1,
    )
    delivery = Delivery.from_entity(entity)
    assert (delivery.partition, delivery.contact_id) == (task.delivery_partition, "k1")
    assert delivery.to_entity() == entity


def test_no_table_row_is_built_outside_the_records_module():
    builders = []
    for package in PRODUCT:
        for path in (ROOT / package).rglob("*.py"):
            relative = path.relative_to(ROOT).as_posix()
            if relative in ("core/models.py", "core/storage.py"):  # the records; storage's delete batches
                continue
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if '"PartitionKey":' in line:
                    builders.append(f"{relative}:{number}")
    assert builders == []
