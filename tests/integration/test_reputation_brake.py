"""The reputation brake: a tenant whose hard bounces cross the threshold stops; its neighbour does not.

Real sends through the SendGrid simulator, its real feedback events through the event
processor, on Azurite; the operator resumes through the API.
"""

from __future__ import annotations

import json

import pytest

from core.models import Job
from core.settings import Settings, load_settings
from core.storage import JOBS, SUPPORT_AUDIT
from status_manager.reputation import BRAKE_REASON_PREFIX, brake_state
from tests.conftest import ADMIN_KEY
from tests.integration.conftest import bearer
from tests.integration.delivery_helpers import apply_events, events_of, people, run_campaign
from tests.pipeline import InProcessHost, add_contacts, job_of, make_tenant, schedule_campaign, sendgrid_host

V1 = "/api/v1"


@pytest.fixture
def settings(azurite: object) -> Settings:
    return load_settings(
        AzureWebJobsStorage=azurite.connection_string,  # type: ignore[attr-defined]
        MAILROOM_ADMIN_KEY=ADMIN_KEY, MAILROOM_SIGNING_KEY="test-signing-key",
        REPUTATION_MIN_SAMPLE=10,
    )



@pytest.fixture
def host(storage, settings, simulator) -> InProcessHost:
    _, url, _ = simulator
    return sendgrid_host(storage, settings, url, task_size=2, task_window=1)


def job_now(storage, job: Job) -> Job:
    return Job.from_entity(storage.table(JOBS).get(job.tenant_id, job.id))


def started_job(storage, host: InProcessHost, tenant, count: int) -> Job:
    """A campaign of ``count`` ok recipients, expanded and one task sent: running, far from done."""
    add_contacts(storage, tenant, people(*[f"ok{n}" for n in range(count)]))
    campaign = schedule_campaign(storage, tenant)
    host.run_round()
    job = job_of(storage, campaign)
    assert job is not None and job.status == "sending"
    return job


def test_a_tenant_whose_hard_bounces_cross_the_threshold_is_paused_while_another_tenants_job_finishes(
    storage, host, simulator, client
):
    _, _, records = simulator
    noisy, quiet = make_tenant(storage), make_tenant(storage)
    add_contacts(storage, noisy, people("bounce-a", "bounce-b", "bounce-c", *[f"ok{n}" for n in range(9)]))
    first = run_campaign(storage, host, noisy)  # 3 hard bounces in 12: 25 %, threshold 5 %
    first_records = list(records)
    quiet_old = run_campaign(storage, host, quiet,
                             criteria={"field": "email", "op": "eq", "value": "nobody@example.com"})
    assert quiet_old.roster_size == 0
    noisy_job = started_job(storage, host, noisy, 10)
    quiet_job = started_job(storage, host, quiet, 10)
    records.clear()

    apply_events(storage, host.settings, events_of(first_records))

    paused = job_now(storage, noisy_job)
    assert paused.status == "paused"
    assert paused.failure_reason.startswith(BRAKE_REASON_PREFIX)
    assert "hard bounces 25.0% (threshold 5.0%) over 12 messages" in paused.failure_reason
    audit = list(storage.table(SUPPORT_AUDIT).partition(noisy.id))
    assert [(a["resource"], json.loads(a["resource_ids"])["jobs"]) for a in audit] == [
        ("reputation_brake", [noisy_job.id])]
    assert job_now(storage, first).status == "completed"
    assert brake_state(storage, quiet.id) is None

    host.run_until(lambda: job_now(storage, quiet_job).status == "completed")
    later = job_now(storage, noisy_job)
    assert later.status == "paused"
    assert later.counts["pending"] == paused.counts["pending"] > 0  # nothing more sent while paused
    print(f"\nbrake: noisy tenant paused with {later.counts['pending']} of {later.roster_size} unsent; "
          f"quiet tenant completed {job_now(storage, quiet_job).counts['sent']} of 10")


def test_only_the_operator_resumes_a_job_the_brake_paused_and_it_then_finishes(
    storage, host, simulator, client
):
    _, _, records = simulator
    tenant = make_tenant(storage)
    add_contacts(storage, tenant, people(*[f"bounce-{n}" for n in range(4)], *[f"ok{n}" for n in range(8)]))
    run_campaign(storage, host, tenant)
    first_records = list(records)
    job = started_job(storage, host, tenant, 10)
    apply_events(storage, host.settings, events_of(first_records))
    assert job_now(storage, job).status == "paused"
    key = client.post(f"{V1}/tenants/{tenant.id}/keys", json={"role": "tenant"}, headers=bearer(ADMIN_KEY))
    tenant_headers = bearer(key.json()["key"])

    refused = client.post(f"{V1}/jobs/{job.id}/resume", headers=tenant_headers)
    assert refused.status_code == 403, refused.text
    campaign_refused = client.post(f"{V1}/campaigns/{job.campaign_id}/resume", headers=tenant_headers)
    assert campaign_refused.status_code == 403, campaign_refused.text
    resumed = client.post(f"{V1}/jobs/{job.id}/resume",
                          headers=bearer(ADMIN_KEY) | {"X-Mailroom-Tenant": tenant.id})
    assert resumed.status_code == 200, resumed.text
    assert resumed.json()["status"] == "sending" and resumed.json()["failure_reason"] is None

    records.clear()
    host.run_until(lambda: job_now(storage, job).status == "completed")
    apply_events(storage, host.settings, events_of(records))  # all delivered: no second trip
    done = job_now(storage, job)
    assert done.status == "completed"
    assert done.counts["pending"] == 0 and done.counts["delivered"] >= 10
    assert len(list(storage.table(SUPPORT_AUDIT).partition(tenant.id))) == 1
