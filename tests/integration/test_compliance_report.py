"""GET /jobs/{id} reports the job's compliance with the Gmail/Yahoo bulk-sender rules."""

from __future__ import annotations

import time

import pytest

from tests.conftest import ADMIN_KEY
from tests.integration.conftest import bearer
from tests.integration.delivery_helpers import apply_events, events_of, people, run_campaign
from tests.pipeline import InProcessHost, add_contacts, make_tenant, sendgrid_host

V1 = "/api/v1"



@pytest.fixture
def host(storage, settings, simulator) -> InProcessHost:
    _, url, _ = simulator
    return sendgrid_host(storage, settings, url, task_size=5, task_window=2)


def tenant_headers(client, tenant_id: str) -> dict[str, str]:
    key = client.post(f"{V1}/tenants/{tenant_id}/keys", json={"role": "tenant"}, headers=bearer(ADMIN_KEY))
    return bearer(key.json()["key"])


def unsubscribe_event(record: dict, at: int) -> dict:
    return {"email": record["to"], "event": "unsubscribe", "timestamp": at, "sg_event_id": f"u-{at}",
            "sg_message_id": f"{record['message_id']}.filter0001.1.0",
            **{k: str(v) for k, v in record["custom_args"].items()}}


def test_a_jobs_compliance_report_measures_unsubscribe_lag_and_complaint_rate(
    storage, host, simulator, client
):
    _, _, records = simulator
    tenant = make_tenant(storage)
    add_contacts(storage, tenant, people("complain-a", *[f"ok{n}" for n in range(9)]))
    job = run_campaign(storage, host, tenant)
    an_hour_ago = int(time.time()) - 3600
    apply_events(storage, host.settings, [*events_of(records), unsubscribe_event(records[0], an_hour_ago)])

    response = client.get(f"{V1}/jobs/{job.id}", headers=tenant_headers(client, tenant.id))

    assert response.status_code == 200, response.text
    report = response.json()["compliance"]
    assert report["one_click_unsubscribe"] is True
    assert report["unsubscribes"] == 1
    assert 3590 <= report["unsubscribe_max_seconds"] <= 3700
    assert report["unsubscribes_within_48h"] is True
    assert (report["complaints"], report["complaint_rate"]) == (1, 0.1)
    assert report["complaint_rate_within_limit"] is False


def test_an_unsubscribe_suppressed_more_than_48_hours_after_its_event_is_reported_late(
    storage, host, simulator, client
):
    _, _, records = simulator
    tenant = make_tenant(storage)
    add_contacts(storage, tenant, people("ok1", "ok2"))
    job = run_campaign(storage, host, tenant)
    three_days_ago = int(time.time()) - 3 * 86400
    apply_events(storage, host.settings, [unsubscribe_event(records[0], three_days_ago)])

    report = client.get(f"{V1}/jobs/{job.id}", headers=tenant_headers(client, tenant.id)).json()["compliance"]

    assert report["unsubscribes"] == 1 and report["unsubscribes_within_48h"] is False
    assert (report["complaints"], report["complaint_rate_within_limit"]) == (0, True)


def test_every_message_of_a_job_carries_one_click_unsubscribe_headers(storage, host, simulator):
    _, _, records = simulator
    tenant = make_tenant(storage)
    add_contacts(storage, tenant, people(*[f"ok{n}" for n in range(7)]))
    job = run_campaign(storage, host, tenant)

    assert len(records) == job.roster_size == 7
    for record in records:
        headers = record["headers"]
        assert headers["List-Unsubscribe"].startswith("<http")
        assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
