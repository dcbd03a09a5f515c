"""Contacts: JSON and CSV imports, per-row rejections, listing, erasure."""

from __future__ import annotations

import secrets

from fastapi.testclient import TestClient

from api.app import create_app
from core.ids import contact_id_for, normalize_email
from core.models import Job, Recipient, Task, Tenant, delivery_entity
from core.storage import DELIVERIES, JOBS, TENANTS
from tests.integration.conftest import random_email

V1 = "/api/v1"


def people(n: int, **extra) -> list[dict]:
    return [{"email": random_email(f"p{i}"), "name": f"Person {i}", **extra} for i in range(n)]


def walk(client, headers, params: dict) -> list[dict]:
    """Every item of a paged list, following continuations."""
    items: list[dict] = []
    continuation = None
    while True:
        query = params | ({"continuation": continuation} if continuation else {})
        page = client.get(f"{V1}/contacts", params=query, headers=headers)
        assert page.status_code == 200, page.text
        items += page.json()["items"]
        continuation = page.json()["continuation"]
        if not continuation:
            return items


def test_json_import_counts_created_then_updated(client, tenant):
    rows = people(5)
    first = client.post(f"{V1}/contacts", json=rows, headers=tenant.headers)
    assert first.status_code == 200
    assert first.json() == {"created": 5, "updated": 0, "rejected": []}
    again = client.post(f"{V1}/contacts", json=rows, headers=tenant.headers).json()
    assert again == {"created": 0, "updated": 5, "rejected": []}


def test_existence_check_spans_many_filter_chunks(client, tenant):
    rows = people(40)
    client.post(f"{V1}/contacts", json=rows[:25], headers=tenant.headers)
    result = client.post(f"{V1}/contacts", json=rows, headers=tenant.headers).json()
    assert (result["created"], result["updated"]) == (15, 25)


def test_import_upserts_by_normalized_email(client, tenant):
    email = random_email()
    client.post(f"{V1}/contacts", json=[{"email": f"  {email.upper()} "}], headers=tenant.headers)
    result = client.post(f"{V1}/contacts", json=[{"email": email, "name": "Ada"}], headers=tenant.headers)
    assert result.json()["updated"] == 1
    found = client.get(f"{V1}/contacts", params={"email": email.upper()}, headers=tenant.headers).json()
    assert [(c["email"], c["name"]) for c in found["items"]] == [(email, "Ada")]


def test_bad_rows_are_rejected_and_good_rows_still_land(client, tenant):
    good = people(2)
    rows = [good[0], {"email": "not-an-address"}, good[1]]
    result = client.post(f"{V1}/contacts", json=rows, headers=tenant.headers).json()
    assert result["created"] == 2
    assert result["rejected"] == [{"index": 1, "field": "email", "message": result["rejected"][0]["message"]}]


def test_rejection_names_the_attribute_path(client, tenant):
    rows = [{"email": random_email(), "attributes": {"age": {"years": 3}}}]
    rejected = client.post(f"{V1}/contacts", json=rows, headers=tenant.headers).json()["rejected"]
    assert [(r["index"], r["field"]) for r in rejected] == [(0, "attributes.age")]


def test_unknown_row_field_is_rejected(client, tenant):
    rows = [{"email": random_email(), "id": "mine"}]
    rejected = client.post(f"{V1}/contacts", json=rows, headers=tenant.headers).json()["rejected"]
    assert [r["field"] for r in rejected] == ["id"]


def test_too_long_name_and_too_many_lists_are_rejected(client, tenant):
    rows = [{"email": random_email(), "name": "x" * 201},
            {"email": random_email(), "lists": [f"l{i}" for i in range(21)]}]
    rejected = client.post(f"{V1}/contacts", json=rows, headers=tenant.headers).json()["rejected"]
    assert [(r["index"], r["field"]) for r in rejected] == [(0, "name"), (1, "lists")]


def test_duplicate_addresses_in_one_import_last_row_wins(client, tenant):
    email = random_email()
    rows = [{"email": email, "name": "First"}, {"email": email.upper(), "name": "Last"}]
    result = client.post(f"{V1}/contacts", json=rows, headers=tenant.headers).json()
    assert (result["created"], result["updated"]) == (1, 0)
    found = client.get(f"{V1}/contacts", params={"email": email}, headers=tenant.headers).json()["items"]
    assert found[0]["name"] == "Last"


def test_reimport_without_a_field_keeps_its_stored_value(client, tenant):
    email = random_email()
    client.post(f"{V1}/contacts", json=[{"email": email, "name": "Ada", "lists": ["vip"]}],
                headers=tenant.headers)
    client.post(f"{V1}/contacts", json=[{"email": email, "attributes": {"n": 1}}], headers=tenant.headers)
    contact = client.get(f"{V1}/contacts", params={"email": email}, headers=tenant.headers).json()["items"][0]
    assert (contact["name"], contact["lists"], contact["attributes"]) == ("Ada", ["vip"], {"n": 1})


def test_csv_import_types_attribute_values_and_splits_lists(client, tenant):
    email = random_email()
    body = f"email,name,age,score,member,zip,lists\n{email},Ada,42,4.5,true,02139,a; b\n"
    result = client.post(f"{V1}/contacts", content=body,
                         headers=tenant.headers | {"Content-Type": "text/csv"})
    assert result.json() == {"created": 1, "updated": 0, "rejected": []}
    contact = client.get(f"{V1}/contacts", params={"email": email}, headers=tenant.headers).json()["items"][0]
    assert contact["attributes"] == {"age": 42, "score": 4.5, "member": True, "zip": "02139"}
    assert contact["lists"] == ["a", "b"]


def test_csv_rejection_index_is_the_data_row_number(client, tenant):
    body = f"email,name\n{random_email()},A\nbroken,B\n{random_email()},C\n"
    result = client.post(f"{V1}/contacts", content=body,
                         headers=tenant.headers | {"Content-Type": "text/csv; charset=utf-8"}).json()
    assert result["created"] == 2
    assert [(r["index"], r["field"]) for r in result["rejected"]] == [(1, "email")]


def test_csv_without_an_email_column_is_422(client, tenant):
    response = client.post(f"{V1}/contacts", content="name\nAda\n",
                           headers=tenant.headers | {"Content-Type": "text/csv"})
    assert response.status_code == 422
    assert response.json()["error"]["details"][0]["field"] == "email"


def test_import_body_that_is_not_an_array_is_422(client, tenant):
    response = client.post(f"{V1}/contacts", json={"email": random_email()}, headers=tenant.headers)
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_fields"


def test_import_with_an_unsupported_media_type_is_415(client, tenant):
    response = client.post(f"{V1}/contacts", content="<x/>",
                           headers=tenant.headers | {"Content-Type": "application/xml"})
    assert response.status_code == 415


def test_import_over_the_row_limit_is_413(settings, storage):
    small = settings.model_copy(update={"max_contacts_per_import": 3})
    with TestClient(create_app(small, storage)) as client:
        admin = {"Authorization": f"Bearer {settings.admin_key}"}
        tenant_id = client.post(f"{V1}/tenants", json={"name": "t"}, headers=admin).json()["id"]
        response = client.post(f"{V1}/contacts", json=people(4),
                               headers=admin | {"X-Mailroom-Tenant": tenant_id})
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "too_large"


def test_contacts_list_pages_visit_each_contact_once(client, tenant):
    rows = people(7)
    client.post(f"{V1}/contacts", json=rows, headers=tenant.headers)
    items = walk(client, tenant.headers, {"limit": 3})
    assert sorted(c["email"] for c in items) == sorted(r["email"] for r in rows)


def test_list_filter_pages_hold_only_members_and_miss_none(client, tenant):
    rows = [{"email": random_email(), "lists": ["vip"] if i % 3 == 0 else ["other"]} for i in range(20)]
    client.post(f"{V1}/contacts", json=rows, headers=tenant.headers)
    items = walk(client, tenant.headers, {"list": "vip", "limit": 2})
    expected = sorted(r["email"] for r in rows if "vip" in r["lists"])
    assert sorted(c["email"] for c in items) == expected


def test_contact_is_read_by_id(client, tenant, storage):
    email = random_email()
    client.post(f"{V1}/contacts", json=[{"email": email, "name": "Ada"}], headers=tenant.headers)
    salt = Tenant.from_entity(storage.table(TENANTS).get("tenant", tenant.id)).contact_salt
    contact_id = contact_id_for(salt, normalize_email(email))
    contact = client.get(f"{V1}/contacts/{contact_id}", headers=tenant.headers).json()
    assert (contact["id"], contact["email"], contact["state"]) == (contact_id, email, "active")


def test_unknown_contact_is_404(client, tenant):
    assert client.get(f"{V1}/contacts/c{secrets.token_hex(12)}", headers=tenant.headers).status_code == 404


def test_deleting_a_contact_erases_it_and_redacts_its_deliveries(client, tenant, storage):
    email = random_email()
    client.post(f"{V1}/contacts", json=[{"email": email}], headers=tenant.headers)
    found = client.get(f"{V1}/contacts", params={"email": email}, headers=tenant.headers).json()
    contact_id = found["items"][0]["id"]
    job = Job(id=secrets.token_hex(8), tenant_id=tenant.id, campaign_id="c", campaign_name="n",
              template={}, criteria={})
    storage.table(JOBS).insert(job.to_entity())
    task = Task(job_id=job.id, index=0, tenant_id=tenant.id, size=1)
    storage.table(DELIVERIES).upsert(delivery_entity(task, Recipient(contact_id, email, "", {}), "sent", "t"))
    assert client.delete(f"{V1}/contacts/{contact_id}", headers=tenant.headers).status_code == 204
    assert client.get(f"{V1}/contacts/{contact_id}", headers=tenant.headers).status_code == 404
    assert storage.table(DELIVERIES).get(task.delivery_partition, contact_id)["email"] != email


def test_deleting_an_unknown_contact_is_404(client, tenant):
    assert client.delete(f"{V1}/contacts/c{secrets.token_hex(12)}", headers=tenant.headers).status_code == 404


def test_csv_blank_lines_import_nothing_but_keep_row_numbers(client, tenant):
    body = f"email,name\n{random_email()},A\n\nbroken,C\n"
    result = client.post(f"{V1}/contacts", content=body,
                         headers=tenant.headers | {"Content-Type": "text/csv"}).json()
    assert result["created"] == 1
    assert [(r["index"], r["field"]) for r in result["rejected"]] == [(2, "email")]
