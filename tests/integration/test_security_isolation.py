"""Tenants are walls (issue 6, item 2): every operation of the OpenAPI document, tried across tenants.

The operations come from the app's own ``/api/openapi.json``, so a route added later is covered
without touching this file. Tenant A owns one of everything; tenant B's key (and support keys)
then call every operation with A's ids. For each: an operator path answers 401/403, a path
naming one of A's resources answers 404, a list answers with none of A's data, a support
key's write is 403, and afterwards every row of A's in every table is exactly as it was.
"""

from __future__ import annotations

import json
import secrets
from datetime import UTC, datetime
from typing import Any

import pytest

from core.clock import iso
from core.ids import new_id
from core.models import Job, Recipient, Task, delivery_entity
from core.status import DeliveryStatus
from core.storage import ALL_TABLES, API_KEYS, DELIVERIES, JOBS, SUPPORT_AUDIT, TENANTS
from tests.integration.conftest import bearer

V1 = "/api/v1"
# Routes that authenticate by something other than an API key (a signature, a signed token)
# or not at all. A new unauthenticated route must be added here on purpose.
PUBLIC_PREFIXES = (f"{V1}/health", f"{V1}/webhooks/", f"{V1}/unsubscribe/")
READS = frozenset({"get", "head", "options"})
# Tables that record *who called* (not tenant data) and may legitimately grow during the run.
BOOKKEEPING_TABLES = frozenset({SUPPORT_AUDIT, "RateLimits"})
# Bodies that would succeed on the caller's own resource, so a 404 proves tenancy, not validation.
BODIES: dict[tuple[str, str], Any] = {
    ("post", f"{V1}/tenants"): {"name": "intruder"},
    ("post", f"{V1}/tenants/{{tenant_id}}/keys"): {"role": "tenant"},
    ("post", f"{V1}/keys"): {"role": "support"},
    ("patch", f"{V1}/campaigns/{{campaign_id}}"): {"name": "hijacked"},
    ("post", f"{V1}/campaigns/{{campaign_id}}/schedule"): {},
    ("post", f"{V1}/campaigns/{{campaign_id}}/preview"): {},
    ("post", f"{V1}/campaigns/{{campaign_id}}/test"): {"to": ["intruder@example.net"]},
    ("post", f"{V1}/suppressions"): {"email": "intruder@example.net"},
}


def _operations(client) -> list[tuple[str, str, dict[str, Any]]]:
    doc = client.get("/api/openapi.json").json()
    return [(method, path, op) for path, ops in doc["paths"].items() for method, op in ops.items()
            if method in ("get", "post", "put", "patch", "delete")]


def _is_public(op: dict[str, Any]) -> bool:
    return not op.get("security")


def _is_operator(op: dict[str, Any]) -> bool:
    return "operator" in op.get("tags", [])


def _path_params(path: str) -> list[str]:
    return [part[1:-1] for part in path.split("/") if part.startswith("{") and part.endswith("}")]


def _sample(schema: dict[str, Any], doc: dict[str, Any]) -> Any:
    """A minimal valid-looking instance of ``schema`` (required fields only)."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[1]
        return _sample(doc["components"]["schemas"][name], doc)
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            return _sample(schema[key][0], doc)
    kind = schema.get("type")
    if kind == "object":
        props = schema.get("properties", {})
        return {name: _sample(props[name], doc) for name in schema.get("required", []) if name in props}
    if kind == "array":
        return [_sample(schema.get("items", {}), doc)] if schema.get("minItems") else []
    if kind == "integer" or kind == "number":
        return schema.get("minimum", 1)
    if kind == "boolean":
        return False
    if "enum" in schema:
        return schema["enum"][0]
    if schema.get("format") == "email":
        return "intruder@example.net"
    if schema.get("format") == "date-time":
        return iso(datetime.now(UTC))
    return "intruder"


def _body(method: str, path: str, op: dict[str, Any], doc: dict[str, Any]) -> Any:
    if (method, path) in BODIES:
        return BODIES[(method, path)]
    content = op.get("requestBody", {}).get("content", {})
    schema = content.get("application/json", {}).get("schema")
    if schema is None:
        return None
    return _sample(schema, doc)


def _snapshot(storage, tenant_id: str, job_ids: list[str]) -> dict[str, list[str]]:
    """Every row of the tenant's in every table, as sorted JSON (no service timestamps)."""
    owned: dict[str, list[str]] = {}
    for table in ALL_TABLES:
        if table in BOOKKEEPING_TABLES:
            continue
        rows = []
        for entity in storage.table(table).query("PartitionKey ne ''", {}):
            pk, rk = entity["PartitionKey"], entity["RowKey"]
            mine = (pk == tenant_id or entity.get("tenant_id") == tenant_id
                    or (table == TENANTS and rk == tenant_id) or f"|{tenant_id}|" in rk
                    or any(pk.startswith(f"{job}-") or pk == job for job in job_ids))
            if mine:
                rows.append(json.dumps(dict(entity), sort_keys=True, default=str))
        owned[table] = sorted(rows)
    return owned


@pytest.fixture
def world(client, admin, new_tenant, storage, campaign_body):
    """Tenant A with a contact, a suppression, a campaign, a job with deliveries; tenant B; support keys."""
    a, b = new_tenant(), new_tenant()
    emails = [f"a-{secrets.token_hex(4)}@example.com" for _ in range(2)]
    imported = client.post(f"{V1}/contacts", json=[{"email": e, "name": "A Person"} for e in emails],
                           headers=a.headers)
    assert imported.status_code == 200, imported.text
    contact = client.get(f"{V1}/contacts", headers=a.headers).json()["items"][0]
    suppressed = f"a-suppressed-{secrets.token_hex(4)}@example.com"
    assert client.post(f"{V1}/suppressions", json={"email": suppressed}, headers=a.headers).status_code == 201
    campaign = client.post(f"{V1}/campaigns", json=campaign_body(), headers=a.headers).json()
    job = Job(id=new_id(), tenant_id=a.id, campaign_id=campaign["id"], campaign_name=campaign["name"],
              template={}, criteria={}, status="sending")
    storage.table(JOBS).insert(job.to_entity())
    task = Task(job_id=job.id, index=0, tenant_id=a.id, size=1)
    storage.table(DELIVERIES).upsert(delivery_entity(
        task, Recipient(contact["id"], contact["email"], "A Person", {}), DeliveryStatus.FAILED,
        iso(datetime.now(UTC)), provider="sendgrid", message_id="m1", attempts=1))
    key_row = next(iter(storage.table(API_KEYS).query("tenant_id eq @t", {"t": a.id})))
    operator_support = client.post(f"{V1}/keys", json={"role": "support"}, headers=admin).json()["key"]
    b_support = client.post(f"{V1}/tenants/{b.id}/keys", json={"role": "support"},
                            headers=admin).json()["key"]
    ids = {
        "tenant_id": a.id, "campaign_id": campaign["id"], "job_id": job.id, "contact_id": contact["id"],
        "key_id": key_row["key_id"], "email": suppressed,
    }
    secrets_of_a = [*ids.values(), *emails]
    return {"a": a, "b": b, "ids": ids, "job_ids": [job.id], "secrets": secrets_of_a,
            "operator_support": bearer(operator_support), "b_support": bearer(b_support)}


def _url(path: str, ids: dict[str, str]) -> str:
    for name in _path_params(path):
        path = path.replace(f"{{{name}}}", ids.get(name, ids["campaign_id"]))
    return path


def _call(client, method: str, path: str, op: dict[str, Any], doc: dict[str, Any], ids, headers):
    body = _body(method, path, op, doc)
    return client.request(method.upper(), _url(path, ids), headers=headers,
                          **({"json": body} if body is not None else {}))


def test_every_operation_walls_off_another_tenants_data(client, storage, world):
    doc = client.get("/api/openapi.json").json()
    a, b, ids = world["a"], world["b"], world["ids"]
    before = _snapshot(storage, a.id, world["job_ids"])
    problems: list[str] = []
    tried = 0
    for method, path, op in _operations(client):
        if _is_public(op):
            if not path.startswith(PUBLIC_PREFIXES):
                problems.append(f"{method.upper()} {path} has no auth and is not a known public route")
            continue
        tried += 1
        reply = _call(client, method, path, op, doc, ids, b.headers)
        label = f"{method.upper()} {path} → {reply.status_code}"
        if _is_operator(op):
            if reply.status_code not in (401, 403):
                problems.append(f"{label}: a tenant key on an operator path must get 401/403")
        elif _path_params(path):
            if reply.status_code != 404:
                problems.append(f"{label}: another tenant's id must answer 404 ({reply.text[:200]})")
        elif reply.status_code >= 500:
            problems.append(f"{label}: server error")
        if reply.status_code < 300 and any(secret in reply.text for secret in world["secrets"]):
            problems.append(f"{label}: the answer shows tenant A's data")
    assert tried >= 20, f"only {tried} authenticated operations found in the OpenAPI document"
    assert not problems, "\n".join(problems)
    assert _snapshot(storage, a.id, world["job_ids"]) == before


@pytest.mark.parametrize("who", ["operator_support", "b_support"])
def test_support_keys_never_write(client, storage, world, who):
    doc = client.get("/api/openapi.json").json()
    a, ids = world["a"], world["ids"]
    headers = {**world[who], "X-Mailroom-Tenant": a.id} if who == "operator_support" else world[who]
    before = _snapshot(storage, a.id, world["job_ids"])
    problems = []
    for method, path, op in _operations(client):
        if _is_public(op) or method in READS:
            continue
        reply = _call(client, method, path, op, doc, ids, headers)
        if reply.status_code != 403:
            problems.append(f"{method.upper()} {path} → {reply.status_code}: a support write must be 403")
    assert not problems, "\n".join(problems)
    assert _snapshot(storage, a.id, world["job_ids"]) == before


def test_a_support_key_for_another_tenant_reads_none_of_its_resources(client, world):
    doc = client.get("/api/openapi.json").json()
    ids, headers = world["ids"], world["b_support"]
    problems = []
    for method, path, op in _operations(client):
        if _is_public(op) or method not in READS or not _path_params(path):
            continue
        reply = _call(client, method, path, op, doc, ids, headers)
        # An operator-wide view (a queue) refuses one tenant's keys whatever the path names: 403
        # says nothing about A's ids. Everything else must not tell A's ids from missing ones.
        allowed = (403, 404) if _is_operator(op) and "tenant_id" not in _path_params(path) else (404,)
        if reply.status_code not in allowed:
            problems.append(f"GET {path} → {reply.status_code}: B's support key must get 404 for A's ids")
    assert not problems, "\n".join(problems)


def test_an_operator_wide_support_key_reads_the_named_tenant(client, world):
    headers = {**world["operator_support"], "X-Mailroom-Tenant": world["a"].id}
    ids = world["ids"]
    for path in (f"{V1}/campaigns/{ids['campaign_id']}", f"{V1}/jobs/{ids['job_id']}",
                 f"{V1}/contacts/{ids['contact_id']}", f"{V1}/jobs/{ids['job_id']}/deliveries"):
        assert client.get(path, headers=headers).status_code == 200, path


def test_every_read_a_support_key_makes_is_audited(client, storage, world):
    doc = client.get("/api/openapi.json").json()
    a, ids = world["a"], world["ids"]
    headers = {**world["operator_support"], "X-Mailroom-Tenant": a.id}
    expected = []
    for method, path, op in _operations(client):
        if _is_public(op) or method not in READS:
            continue
        reply = _call(client, method, path, op, doc, ids, headers)
        assert reply.status_code < 500, f"GET {path} → {reply.status_code}"
        expected.append(path.removeprefix(V1))
    rows = [*storage.table(SUPPORT_AUDIT).query("PartitionKey eq @t", {"t": a.id}),
            *storage.table(SUPPORT_AUDIT).query("PartitionKey eq '*'", {})]
    assert sorted(r["resource"].removeprefix(V1) for r in rows) == sorted(expected)
