"""Contacts at scale: import and the roster scan cost the same per contact at any table size.

Azurite filters the whole table for every query and sorts every match after the continuation
point, and on Azure an OR of RowKeys is a partition scan: a hot path that queries that way gets
slower as the tenant grows (issue 15: import 3,600 → 260 contacts/s at 60k, expansion of 1M at
75/s). These tests hold the shape of the requests, not wall time: an import runs no query at all,
no roster query asks the service to order more than about two pages of rows, and contacts are
spread over the sixteen contact tables (``core.contact_tables``) so no table holds them all.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from core.contact_tables import CONTACT_TABLES, ContactTables, table_digit
from core.criteria import parse_criteria
from core.ids import contact_id_for, normalize_email
from core.request_count import RequestCounter
from core.settings import Settings
from core.storage import Storage
from job_manager.manager import stream_roster
from job_manager.roster_ranges import PAGE, scan_contacts, scan_partition_in_ranges
from tests.conftest import ADMIN_KEY
from tests.pipeline import add_contacts, make_tenant

ROSTER = 20_000
PER_REQUEST = 5_000


@pytest.fixture
def counter() -> RequestCounter:
    return RequestCounter()


@pytest.fixture
def counted(settings: Settings, storage: Storage, counter: RequestCounter) -> Storage:
    """The test's tables, through a storage that counts every request by operation."""
    return Storage(settings.connection_string, namespace=storage.namespace, request_counter=counter)


@pytest.fixture
def api(settings: Settings, counted: Storage) -> Iterator[TestClient]:
    with TestClient(create_app(settings, counted)) as client:
        yield client


def _tenant_headers(api: TestClient) -> tuple[str, dict[str, str]]:
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    tenant_id = api.post("/api/v1/tenants", json={"name": "Big roster"}, headers=admin).json()["id"]
    key = api.post(f"/api/v1/tenants/{tenant_id}/keys", json={"role": "tenant"}, headers=admin).json()["key"]
    return tenant_id, {"Authorization": f"Bearer {key}"}


def _contacts(start: int, stop: int) -> list[dict[str, Any]]:
    return [{"email": f"student{i}@uni.example", "name": f"Student {i}", "attributes": {"year": i % 4}}
            for i in range(start, stop)]


def test_importing_20k_contacts_through_the_api_runs_no_query_and_about_one_request_per_100(
    api: TestClient, counter: RequestCounter
):
    _, headers = _tenant_headers(api)
    before = counter.snapshot()
    for start in range(0, ROSTER, PER_REQUEST):
        answer = api.post("/api/v1/contacts", json=_contacts(start, start + PER_REQUEST), headers=headers)
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"created": PER_REQUEST, "updated": 0, "rejected": []}
    spent = {op: n - before.get(op, 0) for op, n in counter.snapshot().items() if n != before.get(op, 0)}

    assert "table.query" not in spent
    table_requests = sum(n for op, n in spent.items() if op.startswith("table."))
    # Batches of 100, cut per contact table (at most one short batch per table and request),
    # plus the key and tenant lookups.
    assert table_requests <= ROSTER / 100 + len(CONTACT_TABLES) * ROSTER / PER_REQUEST + 20


def test_an_import_that_mixes_new_and_existing_contacts_counts_each_without_a_query(
    api: TestClient, counter: RequestCounter
):
    _, headers = _tenant_headers(api)
    assert api.post("/api/v1/contacts", json=_contacts(0, 1_000), headers=headers).status_code == 200
    before = counter.snapshot().get("table.query", 0)

    answer = api.post("/api/v1/contacts", json=_contacts(500, 1_500), headers=headers)

    assert answer.json() == {"created": 500, "updated": 500, "rejected": []}
    assert counter.snapshot().get("table.query", 0) == before


def _rows_within(filter: str, params: dict[str, str], keys: list[str]) -> int:
    """How many of ``keys`` the query's RowKey bounds admit (what the service must order)."""
    tests = []
    for op, name in re.findall(r"RowKey (gt|ge|lt) @(\w+)", filter):
        bound = params[name]
        tests.append({"gt": lambda k, b=bound: k > b, "ge": lambda k, b=bound: k >= b,
                      "lt": lambda k, b=bound: k < b}[op])
    return sum(1 for key in keys if all(test(key) for test in tests))


def test_no_roster_query_of_a_20k_tenant_asks_for_more_than_two_pages_of_rows(
    storage: Storage, counted: Storage, counter: RequestCounter
):
    tenant = make_tenant(storage)
    ids = sorted(add_contacts(storage, tenant, _contacts(0, ROSTER)))
    queries: list[tuple[str, dict[str, str], list[str]]] = []
    for digit, name in enumerate(CONTACT_TABLES):
        contacts = counted.table(name)
        in_table = [key for key in ids if table_digit(key) == digit]

        def recorded(
            filter: str, parameters: Any = None, real_query: Any = contacts.query, keys: Any = in_table,
            **kwargs: Any,
        ) -> Iterator[dict[str, Any]]:
            queries.append((filter, dict(parameters or {}), keys))
            return real_query(filter, parameters, **kwargs)

        contacts.query = recorded  # type: ignore[method-assign]
    before = counter.snapshot().get("table.query", 0)
    scanned = [row_key for row_key, _ in stream_roster(counted, tenant.id, parse_criteria({}), "")]
    page_requests = counter.snapshot().get("table.query", 0) - before

    assert scanned == ids  # everyone, once, in key order
    # No query is continued page after page (each continued page makes Azurite sort the rest of
    # the partition again); each reads one page of its own key range.
    assert page_requests == len(queries)
    # No query spans more than about two pages of rows (a table's first query spans that table:
    # its page tells how wide a page of keys is).
    assert all(_rows_within(f, p, keys) <= 2 * PAGE for f, p, keys in queries)
    assert page_requests <= 1.5 * ROSTER / PAGE + 2 * len(CONTACT_TABLES)


def test_a_roster_scan_resumed_from_a_cursor_reads_exactly_the_contacts_after_it(storage: Storage):
    tenant = make_tenant(storage)
    ids = sorted(add_contacts(storage, tenant, _contacts(0, 3_000)))

    resumed = [row_key for row_key, _ in stream_roster(storage, tenant.id, parse_criteria({}), ids[1_234])]

    assert resumed == ids[1_235:]


def test_keys_outside_the_contact_id_space_are_read_once_and_in_order(storage: Storage):
    partition = "p" + secrets.token_hex(4)
    hashed = [contact_id_for("salt", normalize_email(f"x{i}@uni.example")) for i in range(40)]
    odd = ["a1", "c", "c-1", "cZ", "cg", "d", "zz"]
    unsplittable = [f"contact-{i:03d}" for i in range(20)]  # all past the last boundary key
    keys = sorted(hashed + odd + unsplittable)
    contacts = storage.table(CONTACT_TABLES[0])
    contacts.batch_upsert({"PartitionKey": partition, "RowKey": key, "email": ""} for key in keys)

    scanned = [e["RowKey"] for e in scan_partition_in_ranges(contacts, partition, "", ["RowKey"], page=4)]

    assert scanned == keys


def test_keys_of_any_shape_have_one_contact_table_and_a_scan_of_all_tables_reads_them_in_order(
    storage: Storage,
):
    partition = "p" + secrets.token_hex(4)
    hashed = [contact_id_for("salt", normalize_email(f"y{i}@uni.example")) for i in range(80)]
    odd = ["a1", "c", "c-1", "c0", "c1", "cZ", "cf", "cg", "d", "zz"]
    odd += [f"contact-{i:03d}" for i in range(20)]
    keys = sorted(hashed + odd)
    tables = ContactTables(storage)
    tables.batch_upsert({"PartitionKey": partition, "RowKey": key, "email": ""} for key in keys)

    scanned = [e["RowKey"] for e in scan_contacts(tables, partition, "", ["RowKey"], page=4)]
    resumed = [e["RowKey"] for e in scan_contacts(tables, partition, keys[37], ["RowKey"], page=4)]

    assert scanned == keys
    assert resumed == keys[38:]
    assert [table_digit(k) for k in keys] == sorted(table_digit(k) for k in keys)  # tables in key order
    assert tables.find(partition, "cZ") is not None


def test_a_tenants_contacts_are_spread_over_all_sixteen_tables(storage: Storage):
    tenant = make_tenant(storage)
    ids = add_contacts(storage, tenant, _contacts(0, 800))

    per_table = [
        sum(1 for _ in storage.table(name).partition(tenant.id, select=["RowKey"])) for name in CONTACT_TABLES
    ]

    assert sum(per_table) == len(ids)
    assert min(per_table) > 0 and max(per_table) < len(ids) / 8  # even: 50 each on average
