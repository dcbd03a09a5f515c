"""Keys and roles (issue 6, item 1): revocation across hosts, the support audit trail, per-key rate limits."""

from __future__ import annotations

import json

from azure.data.tables import TableServiceClient
from fastapi.testclient import TestClient

from api.app import create_app
from api.auth import CACHE_SECONDS
from api.rate_limit import KeyRateLimiter
from core.settings import load_settings
from core.storage import API_KEYS, SUPPORT_AUDIT
from devhost.stack import wait_for
from tests.conftest import ADMIN_KEY
from tests.integration.conftest import bearer


def _audit_rows(storage, tenant_id):
    return list(storage.table(SUPPORT_AUDIT).query("PartitionKey eq @t", {"t": tenant_id}))


def _operator_support_key(client, admin):
    made = client.post("/api/v1/keys", json={"role": "support"}, headers=admin)
    assert made.status_code == 201, made.text
    return bearer(made.json()["key"]), made.json()["id"]


# -- revocation --------------------------------------------------------------------------------


def test_revoked_key_stops_working_on_every_host_within_seconds(settings, storage, admin, tenant, client):
    other_host = TestClient(create_app(settings, storage))  # a second process with its own key cache
    assert other_host.get("/api/v1/contacts", headers=tenant.headers).status_code == 200  # now cached there
    key = next(iter(storage.table(API_KEYS).query("tenant_id eq @t and role eq 'tenant'", {"t": tenant.id})))
    assert client.delete(f"/api/v1/keys/{key['key_id']}", headers=admin).status_code == 204

    assert client.get("/api/v1/contacts", headers=tenant.headers).status_code == 401  # revoking host: at once
    wait_for(lambda: other_host.get("/api/v1/contacts", headers=tenant.headers).status_code == 401,
             timeout=CACHE_SECONDS + 5, what="the other host to refuse the revoked key")


def test_keys_are_stored_only_as_hashes(storage, tenant):
    rows = list(storage.table(API_KEYS).query("tenant_id eq @t", {"t": tenant.id}))
    assert rows
    for row in rows:
        assert tenant.key not in json.dumps(row, default=str)
        assert len(row["RowKey"]) == 64  # sha256 hex


# -- the support audit trail -----------------------------------------------------------------


def test_every_support_read_is_recorded_with_key_tenant_resource_and_time(
    client, storage, support, tenant, campaign_body
):
    campaign = client.post("/api/v1/campaigns", json=campaign_body(), headers=tenant.headers).json()
    assert client.get(f"/api/v1/campaigns/{campaign['id']}", headers=support).status_code == 200
    assert client.get("/api/v1/contacts", headers=support).status_code == 200

    rows = sorted(_audit_rows(storage, tenant.id), key=lambda r: r["RowKey"])
    assert [r["resource"] for r in rows] == ["/campaigns/{campaign_id}", "/contacts"]
    assert json.loads(rows[0]["resource_ids"]) == {"campaign_id": campaign["id"]}
    assert all(r["key_id"] and r["tenant_id"] == tenant.id and r["at"].endswith("Z") for r in rows)
    assert {r["method"] for r in rows} == {"GET"}


def test_operator_wide_support_reads_are_recorded_under_the_tenant_read(client, storage, admin, tenant):
    headers, key_id = _operator_support_key(client, admin)
    reply = client.get("/api/v1/campaigns", headers={**headers, "X-Mailroom-Tenant": tenant.id})
    assert reply.status_code == 200
    assert client.get(f"/api/v1/tenants/{tenant.id}", headers=headers).status_code == 200

    rows = _audit_rows(storage, tenant.id)
    assert {r["resource"] for r in rows} == {"/campaigns", "/tenants/{tenant_id}"}
    assert {r["key_id"] for r in rows} == {key_id}


def test_tenant_and_admin_reads_are_not_audited(client, storage, admin, tenant):
    client.get("/api/v1/contacts", headers=tenant.headers)
    client.get("/api/v1/contacts", headers={**admin, "X-Mailroom-Tenant": tenant.id})
    assert _audit_rows(storage, tenant.id) == []


def test_audit_rows_never_hold_an_address_from_the_query(client, storage, support, tenant):
    address = "private.person@example.com"
    client.get("/api/v1/contacts", params={"email": address}, headers=support)
    rows = _audit_rows(storage, tenant.id)
    assert len(rows) == 1
    assert address not in json.dumps(rows, default=str)


def test_support_read_is_refused_when_its_audit_row_cannot_be_written(settings, client, storage, support):
    service = TableServiceClient.from_connection_string(settings.connection_string)
    service.delete_table(storage.table_name(SUPPORT_AUDIT))
    reply = client.get("/api/v1/contacts", headers=support)
    assert reply.status_code == 503
    assert reply.json()["error"]["code"] == "storage_unavailable"
    assert reply.headers["Retry-After"]


# -- per-key rate limit ---------------------------------------------------------------------


def test_a_key_past_its_rate_gets_429_with_retry_after(azurite, storage):
    limited = load_settings(AzureWebJobsStorage=azurite.connection_string, MAILROOM_ADMIN_KEY=ADMIN_KEY,
                            API_RATE_LIMIT_PER_MINUTE=3)
    with TestClient(create_app(limited, storage)) as client:
        admin = bearer(ADMIN_KEY)
        tenant = client.post("/api/v1/tenants", json={"name": "busy"}, headers=admin).json()
        key = client.post(f"/api/v1/tenants/{tenant['id']}/keys", json={"role": "tenant"}, headers=admin)
        headers = bearer(key.json()["key"])
        assert [client.get("/api/v1/contacts", headers=headers).status_code for _ in range(3)] == [200] * 3
        refused = client.get("/api/v1/contacts", headers=headers)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limited"
    assert int(refused.headers["Retry-After"]) >= 1


def test_one_keys_rate_does_not_limit_another_key():
    limiter = KeyRateLimiter(per_minute=2, clock=lambda: 100.0)
    assert [limiter.retry_after("a") for _ in range(3)] == [0, 0, 30]
    assert limiter.retry_after("b") == 0


def test_a_limited_key_passes_again_once_its_bucket_refills():
    now = [0.0]
    limiter = KeyRateLimiter(per_minute=60, clock=lambda: now[0])
    for _ in range(60):
        assert limiter.retry_after("k") == 0
    assert limiter.retry_after("k") == 1
    now[0] += 1.0
    assert limiter.retry_after("k") == 0


def test_a_zero_rate_limit_turns_the_limit_off():
    limiter = KeyRateLimiter(per_minute=0)
    assert all(limiter.retry_after("k") == 0 for _ in range(1000))
