"""Before you press send: the audience estimate, the operator's volume forecast, and who did what."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from campaign_manager import start_due_campaigns
from core.clock import iso
from core.models import TENANT_PARTITION, Tenant
from core.storage import CAMPAIGNS, JOBS, TENANTS
from devhost.sendgrid_sim import SendGridSimulator
from providers.sendgrid import SendGridProvider
from tests.integration.conftest import bearer, random_email
from tests.pipeline import InProcessHost, add_contacts
from tests.sim_fixtures import running_sendgrid_simulator

V1 = "/api/v1"
SPRING = {"field": "attributes.term", "op": "eq", "value": "Spring"}


@pytest.fixture
def sim() -> Iterator[tuple[SendGridSimulator, str]]:
    with running_sendgrid_simulator() as running:
        yield running


def stored_tenant(storage, tenant_id: str) -> Tenant:
    return Tenant.from_entity(storage.table(TENANTS).get(TENANT_PARTITION, tenant_id))


def create_campaign(client, headers, campaign_body, **fields: Any) -> dict[str, Any]:
    created = client.post(f"{V1}/campaigns", json=campaign_body(**fields), headers=headers)
    assert created.status_code == 201, created.text
    return created.json()


def test_the_estimate_matches_the_roster_a_real_job_then_expands(
    client, tenant, campaign_body, storage, settings, sim
):
    spring = [{"email": random_email("s"), "attributes": {"term": "Spring"}} for _ in range(9)]
    autumn = [{"email": random_email("a"), "attributes": {"term": "Autumn"}} for _ in range(5)]
    unsendable = {"email": "nodot@localhost", "attributes": {"term": "Spring"}}
    add_contacts(storage, stored_tenant(storage, tenant.id), [*spring, *autumn, unsendable])
    for email, reason in ((spring[0]["email"], "unsubscribe"), (spring[1]["email"], "bounce"),
                          (spring[2]["email"], "bounce"), (autumn[0]["email"], "complaint")):
        client.post(f"{V1}/suppressions", json={"email": email, "reason": reason}, headers=tenant.headers)
    campaign = create_campaign(client, tenant.headers, campaign_body, criteria={"all": [SPRING]})

    answer = client.post(f"{V1}/campaigns/{campaign['id']}/estimate", headers=tenant.headers)

    assert answer.status_code == 200, answer.text
    estimate = answer.json()
    assert estimate["exact"] is True and estimate["over_limit"] == 0
    assert estimate["matching"] == 10 and estimate["suppressed"] == {"unsubscribe": 1, "bounce": 2}
    assert estimate["invalid"] == 1 and estimate["recipients"] == 6
    client.post(f"{V1}/campaigns/{campaign['id']}/schedule", json={}, headers=tenant.headers)
    host = InProcessHost(storage, settings, SendGridProvider("SG.test", sim[1]))
    host.run_until(lambda: client.get(f"{V1}/campaigns/{campaign['id']}", headers=tenant.headers)
                   .json()["status"] == "completed", 60)
    job_id = client.get(f"{V1}/campaigns/{campaign['id']}", headers=tenant.headers).json()["current_job_id"]
    job = client.get(f"{V1}/jobs/{job_id}", headers=tenant.headers).json()
    assert job["roster_size"] == estimate["matching"]
    assert job["counts"]["suppressed"] == sum(estimate["suppressed"].values())
    assert job["counts"]["skipped"] == estimate["invalid"] and job["counts"]["sent"] == estimate["recipients"]
    roster = {d["contact_id"] for d in client.get(f"{V1}/jobs/{job_id}/deliveries?limit=100",
                                                  headers=tenant.headers).json()["items"]}
    assert set(estimate["sample"]) <= roster and len(estimate["sample"]) == 10


def test_an_estimate_of_an_unsaved_campaign_needs_no_campaign(client, tenant, storage):
    terms = ("Spring", "Spring", "Autumn")
    add_contacts(storage, stored_tenant(storage, tenant.id),
                 [{"email": random_email(), "attributes": {"term": t}} for t in terms])

    answer = client.post(f"{V1}/campaigns/estimate", json={"criteria": {"all": [SPRING]}},
                         headers=tenant.headers)

    assert answer.status_code == 200 and answer.json()["matching"] == 2
    assert client.post(f"{V1}/campaigns/estimate", json={"criteria": {"all": [{"op": "eq"}]}},
                       headers=tenant.headers).status_code == 422


def test_an_estimate_past_the_exact_limit_is_marked_and_its_bounds_hold_the_true_count(
    settings, storage, admin
):
    limited = settings.model_copy(update={"estimate_exact_limit": 60})
    with TestClient(create_app(limited, storage)) as client:
        tenant_id = client.post(f"{V1}/tenants", json={"name": "Big"}, headers=admin).json()["id"]
        made = client.post(f"{V1}/tenants/{tenant_id}/keys", json={"role": "tenant"}, headers=admin)
        key = made.json()["key"]
        tenant = stored_tenant(storage, tenant_id)
        tenant.contact_salt = "fixed-salt-for-a-deterministic-id-order"  # the same ids on every run
        add_contacts(storage, tenant, [{"email": f"p{i}@example.com"} for i in range(600)])

        estimate = client.post(f"{V1}/campaigns/estimate", json={}, headers=bearer(key)).json()

    assert estimate["exact"] is False and estimate["scanned"] == 60
    assert estimate["bounds"]["low"] <= 600 <= estimate["bounds"]["high"]
    assert estimate["bounds"]["low"] <= estimate["matching"] <= estimate["bounds"]["high"]


def test_the_send_time_forecast_names_the_binding_limit(client, new_tenant, campaign_body, storage):
    tenant = new_tenant(rate_limit_per_minute=60)  # 1 email/s: slower than the nominal rate
    add_contacts(storage, stored_tenant(storage, tenant.id), [{"email": random_email()} for _ in range(30)])
    campaign = create_campaign(client, tenant.headers, campaign_body)

    answer = client.post(f"{V1}/campaigns/{campaign['id']}/estimate", headers=tenant.headers)

    forecast = answer.json()["forecast"]

    assert forecast["bound"] == "tenant_rate_limit" and forecast["emails_per_second"] == 1.0
    assert forecast["seconds"] == 30.0 and forecast["limits"] == {"tenant_rate_limit": 1.0}


@pytest.fixture
def operator_client(settings, storage) -> Iterator[TestClient]:
    two_providers = settings.model_copy(update={"email_providers": "sendgrid,acs"})
    with TestClient(create_app(two_providers, storage)) as test_client:
        yield test_client


def scheduled(client, admin, campaign_body, storage, n: int, send_at: datetime, providers: list[str]) -> str:
    """A tenant sending through ``providers`` with ``n`` contacts and a campaign scheduled at ``send_at``."""
    tenant_id = client.post(f"{V1}/tenants", json={"name": "T"}, headers=admin).json()["id"]
    client.patch(f"{V1}/tenants/{tenant_id}", json={"providers": providers}, headers=admin)
    add_contacts(storage, stored_tenant(storage, tenant_id), [{"email": random_email()} for _ in range(n)])
    headers = {**admin, "X-Mailroom-Tenant": tenant_id}
    campaign = create_campaign(client, headers, campaign_body, send_at=send_at.isoformat())
    return campaign["id"]


def test_the_forecast_sums_scheduled_campaigns_per_hour_and_per_provider(
    operator_client, admin, campaign_body, storage
):
    client = operator_client
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    first, later = hour + timedelta(hours=1, minutes=10), hour + timedelta(hours=3, minutes=5)
    scheduled(client, admin, campaign_body, storage, 30, first, ["sendgrid"])
    scheduled(client, admin, campaign_body, storage, 20, first + timedelta(minutes=5), ["acs"])
    campaign_id = scheduled(client, admin, campaign_body, storage, 10, later, ["sendgrid"])
    tenant_id = storage.table(CAMPAIGNS).query("RowKey eq @c", {"c": campaign_id}).__next__()["PartitionKey"]
    dry_run = {"dry_run": True, "send_at": first.isoformat()}  # a dry run is no volume
    as_tenant = {**admin, "X-Mailroom-Tenant": tenant_id}
    client.post(f"{V1}/campaigns/{campaign_id}/schedule", json=dry_run, headers=as_tenant)

    answer = client.get(f"{V1}/forecast", headers=admin)

    assert answer.status_code == 200, answer.text
    forecast = answer.json()
    hours = {h["hour"]: h for h in forecast["hours"]}
    assert len(hours) == 7 * 24
    assert hours[iso(hour + timedelta(hours=1))]["emails"] == 50
    assert hours[iso(hour + timedelta(hours=1))]["providers"] == {"sendgrid": 30, "acs": 20}
    assert hours[iso(hour + timedelta(hours=3))] == {"hour": iso(hour + timedelta(hours=3)), "emails": 10,
                                                    "providers": {"sendgrid": 10}}
    assert forecast["emails"] == 60 and forecast["providers"] == {"sendgrid": 40, "acs": 20}
    cached = json.loads(storage.table(CAMPAIGNS).get(tenant_id, campaign_id)["estimate"])
    assert cached["recipients"] == 10  # the estimate it made is kept on the campaign


def test_the_forecast_is_for_the_operator_and_support_only(client, tenant, support):
    assert client.get(f"{V1}/forecast", headers=tenant.headers).status_code == 403
    assert client.get(f"{V1}/forecast", headers=support).status_code == 200


def test_campaigns_and_jobs_record_which_key_created_scheduled_paused_resumed_and_cancelled_them(
    client, admin, tenant, campaign_body, storage
):
    made = client.post(f"{V1}/tenants/{tenant.id}/keys", json={"role": "tenant"}, headers=admin).json()
    other = bearer(made["key"])
    campaign = create_campaign(client, tenant.headers, campaign_body)
    client.post(f"{V1}/campaigns/{campaign['id']}/schedule", json={}, headers=other)
    start_due_campaigns(storage)
    client.post(f"{V1}/campaigns/{campaign['id']}/pause", headers=tenant.headers)
    client.post(f"{V1}/campaigns/{campaign['id']}/resume", headers=other)
    client.post(f"{V1}/campaigns/{campaign['id']}/cancel", headers=tenant.headers)

    first_key_id = storage.table(CAMPAIGNS).get(tenant.id, campaign["id"])["created_by"]
    view = client.get(f"{V1}/campaigns/{campaign['id']}", headers=tenant.headers).json()
    job = client.get(f"{V1}/jobs/{view['current_job_id']}", headers=tenant.headers).json()
    assert first_key_id != made["id"] and first_key_id.startswith("mr_") is False
    assert (view["created_by"], view["scheduled_by"]) == (first_key_id, made["id"])
    assert (view["paused_by"], view["resumed_by"], view["cancelled_by"]) == (
        first_key_id, made["id"], first_key_id)
    assert (job["created_by"], job["paused_by"], job["resumed_by"], job["cancelled_by"]) == (
        made["id"], first_key_id, made["id"], first_key_id)
    row = json.dumps(storage.table(JOBS).get(tenant.id, job["id"])) + json.dumps(view)
    assert made["key"] not in row and tenant.key not in row  # key ids, never the keys
