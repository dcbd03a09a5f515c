"""Dry runs: ``POST /campaigns/{id}/schedule {"dry_run": true}`` runs the whole pipeline and delivers nothing.

The job expands, suppresses, renders and routes like a real run; SendGrid (the simulator)
validates each message in sandbox mode and records no delivery. The job and its deliveries say
``dry_run``; the counts use the normal vocabulary (``sent``: SendGrid would have accepted it).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from core.models import TENANT_PARTITION, Tenant
from core.status import CampaignStatus, JobStatus
from core.storage import JOBS, PROVIDER_HEALTH, RATE_LIMITS, SUPPRESSIONS, TENANTS
from devhost.sendgrid_sim import SendGridSimulator
from providers.factory import build_sender
from providers.sendgrid import SendGridProvider
from tests.integration.conftest import random_email
from tests.pipeline import InProcessHost, add_contacts
from tests.sim_fixtures import running_sendgrid_simulator

V1 = "/api/v1"


@pytest.fixture
def sim() -> Iterator[tuple[SendGridSimulator, str]]:
    with running_sendgrid_simulator() as running:
        yield running


@pytest.fixture
def host(storage, settings, sim) -> InProcessHost:
    sized = settings.model_copy(update={"task_size": 5})
    return InProcessHost(storage, sized, SendGridProvider("SG.test", sim[1]))


def make_campaign(
    client, tenant, campaign_body, contacts: list[dict[str, Any]], storage=None
) -> dict[str, Any]:
    """Contacts through the API, or (``storage``: addresses the import would refuse) written directly."""
    if storage is not None:
        row = storage.table(TENANTS).get(TENANT_PARTITION, tenant.id)
        add_contacts(storage, Tenant.from_entity(row), contacts)
    else:
        imported = client.post(f"{V1}/contacts", json=contacts, headers=tenant.headers).json()
        assert imported["rejected"] == [], imported
    created = client.post(f"{V1}/campaigns", json=campaign_body(), headers=tenant.headers)
    assert created.status_code == 201, created.text
    return created.json()


def schedule(client, tenant, campaign_id: str, **body: Any) -> dict[str, Any]:
    answer = client.post(f"{V1}/campaigns/{campaign_id}/schedule", json=body, headers=tenant.headers)
    assert answer.status_code == 200, answer.text
    return answer.json()


def run_job(storage, host: InProcessHost, tenant_id: str, job_id: str) -> None:
    def closed() -> bool:
        row = storage.table(JOBS).find(tenant_id, job_id)
        return row is not None and JobStatus(row["status"]).is_final

    host.run_until(closed, 60)


def dry_run(client, tenant, storage, host, campaign_id: str) -> dict[str, Any]:
    job_id = schedule(client, tenant, campaign_id, dry_run=True)["dry_run_job_id"]
    run_job(storage, host, tenant.id, job_id)
    return client.get(f"{V1}/jobs/{job_id}", headers=tenant.headers).json()


def deliveries(client, tenant, job_id: str) -> list[dict[str, Any]]:
    return client.get(f"{V1}/jobs/{job_id}/deliveries?limit=1000", headers=tenant.headers).json()["items"]


def people(n: int, tag: str = "p") -> list[dict[str, Any]]:
    return [{"email": random_email(f"{tag}{i}"), "name": f"P{i}"} for i in range(n)]


def test_a_dry_run_hands_nothing_to_the_provider_for_delivery(
    client, tenant, campaign_body, storage, host, sim
):
    simulator, _ = sim
    campaign = make_campaign(client, tenant, campaign_body, people(12))

    job = dry_run(client, tenant, storage, host, campaign["id"])

    assert job["dry_run"] is True and job["status"] == "completed"
    assert job["counts"]["sent"] == 12 and job["roster_size"] == 12
    assert simulator.messages() == []  # the simulator's record: nothing delivered
    # Sent batched (one sandboxed request per send group): every request was validated, none delivered.
    assert job["send_mode"] == "batched"
    stats = simulator.stats()
    assert stats["sandboxed"] == stats["requests"] >= 1 and stats["accepted"] == 0


def test_a_dry_runs_delivery_log_has_every_recipient_with_the_outcome_a_real_run_would_have(
    client, tenant, campaign_body, storage, host
):
    roster = people(6)
    suppressed, unsendable = roster[0]["email"], "nodot@localhost"
    roster.append({"email": unsendable, "name": "No dot"})
    campaign = make_campaign(client, tenant, campaign_body, roster, storage)
    client.post(f"{V1}/suppressions", json={"email": suppressed, "reason": "unsubscribe"},
                headers=tenant.headers)

    job = dry_run(client, tenant, storage, host, campaign["id"])

    rows = {row["email"]: row for row in deliveries(client, tenant, job["id"])}
    assert set(rows) == {r["email"] for r in roster}
    assert all(row["dry_run"] for row in rows.values())
    assert rows[suppressed]["status"] == "suppressed"
    assert rows[unsendable]["status"] == "skipped" and rows[unsendable]["reason"] == "invalid address"
    assert {rows[r["email"]]["status"] for r in roster[1:6]} == {"sent"}
    assert {rows[r["email"]]["provider"] for r in roster[1:6]} == {"sendgrid"}
    csv = client.get(f"{V1}/jobs/{job['id']}/deliveries.csv", headers=tenant.headers).text
    assert len(csv.strip().splitlines()) == 1 + len(roster)


def test_a_sendgrid_400_in_a_dry_run_lands_on_that_recipient_only(
    client, tenant, campaign_body, storage, host, sim
):
    simulator, _ = sim
    roster = people(5)
    refused = "under_score@exa_mple.com"  # passes our loose check, SendGrid's validation refuses it
    roster.append({"email": refused, "name": "Refused"})
    campaign = make_campaign(client, tenant, campaign_body, roster, storage)

    job = dry_run(client, tenant, storage, host, campaign["id"])

    rows = {row["email"]: row for row in deliveries(client, tenant, job["id"])}
    assert rows[refused]["status"] == "failed"
    assert "Does not contain a valid address" in rows[refused]["reason"]
    assert [e for e, row in rows.items() if row["status"] != "sent"] == [refused]
    assert job["counts"]["failed"] == 1 and job["counts"]["sent"] == 5
    assert simulator.messages() == []


def test_a_later_real_run_of_the_same_campaign_is_unaffected(
    client, tenant, campaign_body, storage, host, sim
):
    simulator, _ = sim
    campaign = make_campaign(client, tenant, campaign_body, people(7))
    at = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()  # the same instant for both runs
    dry_id = schedule(client, tenant, campaign["id"], dry_run=True, send_at=at)["dry_run_job_id"]
    run_job(storage, host, tenant.id, dry_id)
    after_dry = client.get(f"{V1}/campaigns/{campaign['id']}", headers=tenant.headers).json()
    assert after_dry["status"] == "draft" and after_dry["current_job_id"] is None
    assert sum(after_dry["counts"].values()) == 0

    real = schedule(client, tenant, campaign["id"], send_at=at)
    host.run_until(lambda: client.get(f"{V1}/campaigns/{campaign['id']}", headers=tenant.headers)
                   .json()["status"] == CampaignStatus.COMPLETED, 60)

    final = client.get(f"{V1}/campaigns/{campaign['id']}", headers=tenant.headers).json()
    assert real["status"] == "scheduled" and final["current_job_id"] not in (None, dry_id)
    real_job = client.get(f"{V1}/jobs/{final['current_job_id']}", headers=tenant.headers).json()
    assert real_job["dry_run"] is False and real_job["counts"]["sent"] == 7
    assert final["counts"]["sent"] == 7
    assert len(simulator.messages()) == 7
    assert {j["id"]: j["dry_run"] for j in final["jobs"]} == {dry_id: True, real_job["id"]: False}


def test_a_dry_run_touches_no_suppression_rate_limit_budget_or_provider_health(
    client, new_tenant, campaign_body, storage, settings, sim
):
    simulator, url = sim
    tenant = new_tenant(rate_limit_per_minute=60)
    roster = people(6)
    roster.append({"email": "bounce-x@exa_mple.com", "name": "Refused"})
    campaign = make_campaign(client, tenant, campaign_body, roster, storage)
    configured = settings.model_copy(update={
        "task_size": 5, "sendgrid_api_url": url, "sendgrid_api_key": "SG.test", "email_provider": "sendgrid",
        "provider_rate_limits": "sendgrid=1", "health_sync_seconds": 0.01,
    })
    host = InProcessHost(storage, configured, build_sender(configured, storage))

    job = dry_run(client, tenant, storage, host, campaign["id"])

    assert job["counts"]["sent"] == 6 and job["counts"]["failed"] == 1
    assert list(storage.table(RATE_LIMITS).query("PartitionKey ne ''")) == []
    assert list(storage.table(PROVIDER_HEALTH).query("PartitionKey ne ''")) == []
    assert list(storage.table(SUPPRESSIONS).query("PartitionKey ne ''")) == []
    assert simulator.messages() == []
