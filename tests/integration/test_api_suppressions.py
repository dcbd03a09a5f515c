"""The tenant's suppression list through the API."""

from __future__ import annotations

from core.suppressions import SuppressionCache
from tests.integration.conftest import random_email

V1 = "/api/v1"


def listed(client, tenant) -> list[dict]:
    return client.get(f"{V1}/suppressions", headers=tenant.headers).json()["items"]


def test_adding_a_suppression_is_201_and_normalizes_the_address(client, tenant):
    email = random_email()
    response = client.post(f"{V1}/suppressions", json={"email": f" {email.upper()}", "reason": "complaint"},
                           headers=tenant.headers)
    assert response.status_code == 201
    body = response.json()
    assert (body["email"], body["reason"]) == (email, "complaint") and body["at"]


def test_added_suppression_is_listed_and_seen_by_senders(client, tenant, storage):
    email = random_email()
    client.post(f"{V1}/suppressions", json={"email": email}, headers=tenant.headers)
    assert [(s["email"], s["reason"]) for s in listed(client, tenant)] == [(email, "manual")]
    assert SuppressionCache(storage).suppressed(tenant.id, [email]) == {email}


def test_removed_suppression_disappears_from_the_list(client, tenant):
    email = random_email()
    client.post(f"{V1}/suppressions", json={"email": email}, headers=tenant.headers)
    assert client.delete(f"{V1}/suppressions/{email}", headers=tenant.headers).status_code == 204
    assert listed(client, tenant) == []


def test_removing_an_address_that_is_not_suppressed_is_404(client, tenant):
    assert client.delete(f"{V1}/suppressions/{random_email()}", headers=tenant.headers).status_code == 404


def test_invalid_address_is_422_naming_email(client, tenant):
    response = client.post(f"{V1}/suppressions", json={"email": "nobody"}, headers=tenant.headers)
    assert response.status_code == 422
    assert response.json()["error"]["details"][0]["field"] == "email"


def test_suppressions_are_per_tenant(client, tenant, new_tenant):
    other = new_tenant()
    client.post(f"{V1}/suppressions", json={"email": random_email()}, headers=other.headers)
    assert listed(client, tenant) == []
