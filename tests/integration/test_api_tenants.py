"""Operator routes: tenants, keys, and how each kind of key is scoped."""

from __future__ import annotations

import secrets

from tests.integration.conftest import bearer

V1 = "/api/v1"


def operator_support_key(client, admin) -> str:
    made = client.post(f"{V1}/keys", json={"role": "support"}, headers=admin)
    assert made.status_code == 201, made.text
    return made.json()["key"]


def test_admin_creates_a_tenant_with_its_limits(client, admin):
    name = f"Uni {secrets.token_hex(3)}"
    response = client.post(f"{V1}/tenants", json={"name": name, "rate_limit_per_minute": 600,
                                                  "max_roster": 5000}, headers=admin)
    assert response.status_code == 201
    body = response.json()
    assert body["name"] == name and body["rate_limit_per_minute"] == 600 and body["max_roster"] == 5000
    assert body["id"] and body["state"] == "active"


def test_tenant_responses_never_expose_the_contact_salt(client, admin, tenant):
    body = client.get(f"{V1}/tenants/{tenant.id}", headers=admin).json()
    assert "contact_salt" not in body


def test_creating_a_tenant_refuses_server_owned_fields(client, admin):
    response = client.post(f"{V1}/tenants", json={"name": "x", "id": "mine"}, headers=admin)
    assert response.status_code == 422
    assert response.json()["error"]["details"][0]["field"] == "id"


def test_admin_lists_tenants_page_by_page(client, admin, new_tenant):
    made = {new_tenant().id for _ in range(3)}
    seen: list[str] = []
    continuation = None
    while True:
        params = {"limit": 2} | ({"continuation": continuation} if continuation else {})
        page = client.get(f"{V1}/tenants", params=params, headers=admin).json()
        assert len(page["items"]) <= 2
        seen += [t["id"] for t in page["items"]]
        continuation = page["continuation"]
        if not continuation:
            break
    assert made <= set(seen) and len(seen) == len(set(seen))


def test_tenant_key_cannot_create_tenants(client, tenant):
    response = client.post(f"{V1}/tenants", json={"name": "x"}, headers=tenant.headers)
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "forbidden"


def test_new_key_is_shown_once_and_authenticates(client, admin, tenant):
    made = client.post(f"{V1}/tenants/{tenant.id}/keys", json={"role": "tenant"}, headers=admin)
    assert made.status_code == 201
    body = made.json()
    assert set(body) >= {"key", "role", "id"} and body["role"] == "tenant"
    assert client.get(f"{V1}/campaigns", headers=bearer(body["key"])).status_code == 200


def test_key_role_other_than_tenant_or_support_is_422(client, admin, tenant):
    response = client.post(f"{V1}/tenants/{tenant.id}/keys", json={"role": "admin"}, headers=admin)
    assert response.status_code == 422
    assert response.json()["error"]["details"][0]["field"] == "role"


def test_operator_wide_keys_must_be_support_keys(client, admin):
    response = client.post(f"{V1}/keys", json={"role": "tenant"}, headers=admin)
    assert response.status_code == 422


def test_key_for_an_unknown_tenant_is_404(client, admin):
    response = client.post(f"{V1}/tenants/{secrets.token_hex(8)}/keys", json={"role": "tenant"},
                           headers=admin)
    assert response.status_code == 404


def test_revoked_key_stops_working_at_once(client, admin, tenant):
    made = client.post(f"{V1}/tenants/{tenant.id}/keys", json={"role": "tenant"}, headers=admin).json()
    assert client.get(f"{V1}/campaigns", headers=bearer(made["key"])).status_code == 200
    assert client.delete(f"{V1}/keys/{made['id']}", headers=admin).status_code == 204
    response = client.get(f"{V1}/campaigns", headers=bearer(made["key"]))
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"


def test_revoking_an_unknown_key_is_404(client, admin):
    assert client.delete(f"{V1}/keys/{secrets.token_hex(6)}", headers=admin).status_code == 404


def test_operator_support_key_reads_the_tenant_named_in_the_header(client, admin, tenant):
    key = operator_support_key(client, admin)
    response = client.get(f"{V1}/campaigns", headers=bearer(key) | {"X-Mailroom-Tenant": tenant.id})
    assert response.status_code == 200


def test_operator_support_key_without_tenant_header_is_422(client, admin):
    key = operator_support_key(client, admin)
    response = client.get(f"{V1}/campaigns", headers=bearer(key))
    assert response.status_code == 422
    assert response.json()["error"]["details"][0]["field"] == "X-Mailroom-Tenant"


def test_operator_support_key_naming_an_unknown_tenant_is_404(client, admin):
    key = operator_support_key(client, admin)
    response = client.get(f"{V1}/campaigns", headers=bearer(key) | {"X-Mailroom-Tenant": "nope"})
    assert response.status_code == 404


def test_operator_support_key_reads_tenants(client, admin, tenant):
    key = operator_support_key(client, admin)
    assert client.get(f"{V1}/tenants/{tenant.id}", headers=bearer(key)).status_code == 200


def test_tenant_support_key_reads_only_its_own_tenant(client, support, tenant, new_tenant):
    other = new_tenant()
    assert client.get(f"{V1}/tenants/{tenant.id}", headers=support).status_code == 200
    assert client.get(f"{V1}/tenants/{other.id}", headers=support).status_code == 404
    listed = client.get(f"{V1}/tenants", headers=support).json()["items"]
    assert [t["id"] for t in listed] == [tenant.id]


def test_admin_acts_on_a_tenant_named_in_the_header(client, admin, tenant, campaign_body):
    created = client.post(f"{V1}/campaigns", json=campaign_body(),
                          headers=admin | {"X-Mailroom-Tenant": tenant.id})
    assert created.status_code == 201
    assert client.get(f"{V1}/campaigns/{created.json()['id']}", headers=tenant.headers).status_code == 200


def test_tenant_key_naming_another_tenant_in_the_header_is_404(client, tenant, new_tenant):
    other = new_tenant()
    response = client.get(f"{V1}/campaigns", headers=tenant.headers | {"X-Mailroom-Tenant": other.id})
    assert response.status_code == 404
