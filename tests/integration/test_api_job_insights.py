"""A job at a glance over the API: send rate over time, failures by reason, compliance figures."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from core.suppressions import add_suppression
from tests.integration.conftest import bearer
from tests.integration.delivery_helpers import (
    apply_events,
    drain_events_queue,
    events_of,
    people,
    run_campaign,
)
from tests.pipeline import add_contacts, make_tenant, sendgrid_host
from tests.sim_fixtures import running_sendgrid_simulator

ACCEPTED = ("sent", "delivered", "bounced", "dropped", "complained", "deferred")


@pytest.fixture
def finished(storage, settings, client, admin) -> Iterator[tuple[object, object, list[dict], dict]]:
    """A closed job of seven: two fine, a bounce, a complaint, one the provider refuses (400),
    one already suppressed; its provider events applied."""
    with running_sendgrid_simulator() as (sim, url):
        records: list[dict] = []
        sim.listeners.append(records.extend)
        tenant = make_tenant(storage)
        rows = people("ok1", "ok2", "bounce-a", "complain-b", "refused-c", "gone-d")
        add_contacts(storage, tenant, rows)
        add_suppression(storage, tenant.id, rows[5]["email"], reason="unsubscribed", source="api")
        sim.set_faults({"fail_addresses": {rows[4]["email"]: 400}})
        job = run_campaign(storage, sendgrid_host(storage, settings, url, task_size=3, task_window=2), tenant)
        apply_events(storage, settings, events_of(records))
        drain_events_queue(storage, settings)
    made = client.post(f"/api/v1/tenants/{tenant.id}/keys", json={"role": "tenant"}, headers=admin)
    yield tenant, job, rows, bearer(made.json()["key"])


def test_the_timeline_accounts_for_every_recipient_in_minute_buckets(client, finished):
    _, job, rows, auth = finished
    timeline = client.get(f"/api/v1/jobs/{job.id}/timeline", headers=auth).json()
    counts = client.get(f"/api/v1/jobs/{job.id}", headers=auth).json()["counts"]
    points = timeline["points"]
    assert timeline["bucket_seconds"] == 60 and timeline["complete"] and timeline["rows_read"] == len(rows)
    assert sum(p["sent"] for p in points) == sum(counts[s] for s in ACCEPTED) == 4
    assert sum(p["failed"] for p in points) == counts["failed"] == 1
    assert sum(p["other"] for p in points) == counts["suppressed"] == 1
    assert all(p["at"].endswith(":00.000Z") for p in points)


def test_failures_are_grouped_by_status_and_reason_largest_first(client, finished):
    _, job, _, auth = finished
    failures = client.get(f"/api/v1/jobs/{job.id}/failures", headers=auth).json()
    statuses = sorted(g["status"] for g in failures["groups"])
    assert statuses == ["bounced", "complained", "failed"] and failures["total"] == 3
    failed = next(g for g in failures["groups"] if g["status"] == "failed")
    assert failed["count"] == 1 and failed["reason"]


def test_compliance_shows_the_jobs_bounces_complaints_and_its_campaigns_unsubscribes(
    storage, client, finished
):
    tenant, job, rows, auth = finished
    add_suppression(storage, tenant.id, rows[0]["email"], reason="unsubscribed", source="one_click",
                    campaign_id=job.campaign_id)
    add_suppression(storage, tenant.id, rows[1]["email"], reason="unsubscribed", source="one_click",
                    campaign_id="another-campaign")
    compliance = client.get(f"/api/v1/jobs/{job.id}/compliance", headers=auth).json()
    assert (compliance["bounces"], compliance["complaints"], compliance["unsubscribes"],
            compliance["suppressed"]) == (1, 1, 1, 1)


def test_another_tenants_job_insights_are_not_found(client, finished, tenant):
    _, job, _, _ = finished
    for view in ("timeline", "failures", "compliance"):
        response = client.get(f"/api/v1/jobs/{job.id}/{view}", headers=tenant.headers)
        assert response.status_code == 404, view


def test_a_bucket_outside_ten_seconds_to_an_hour_is_422(client, finished):
    _, job, _, auth = finished
    response = client.get(f"/api/v1/jobs/{job.id}/timeline", headers=auth, params={"bucket": 5})
    assert response.status_code == 422
    assert response.json()["error"]["details"][0]["field"] == "bucket"
