"""Delivery logs support staff read: timelines, the CSV export, contact history, unsubscribe, erasure."""

from __future__ import annotations

import csv
import io
import json
from datetime import timedelta
from urllib.parse import urlparse

import pytest

from core.blobs import delivery_logs
from core.clock import utcnow
from core.messages import TaskTicket
from core.storage import DELIVERIES, DELIVERY_EVENTS, JOBS, TASK_QUEUE
from core.unsubscribe import UnsubscribeClaim, unsubscribe_url
from privacy.retention import purge_expired_delivery_logs
from status_manager.delivery_logs import log_blob_name, summary_blob_name
from tests.integration.conftest import bearer
from tests.integration.delivery_helpers import (
    addresses_everywhere,
    apply_events,
    delivery_rows,
    drain_events_queue,
    events_of,
    people,
    run_campaign,
)
from tests.pipeline import InProcessHost, add_contacts, job_of, make_tenant, schedule_campaign, sendgrid_host

MIXED = ("ok1", "ok2", "bounce-a", "complain-b", "slow-c")



@pytest.fixture
def host(storage, settings, simulator) -> InProcessHost:
    _, url, _ = simulator
    return sendgrid_host(storage, settings, url, task_size=2, task_window=1)


@pytest.fixture
def tracked(storage, host, simulator, client, admin):
    """A finished campaign of MIXED contacts, its events applied and its delivery log written."""
    _, _, records = simulator
    tenant = make_tenant(storage)
    rows = people(*MIXED)
    add_contacts(storage, tenant, rows)
    job = run_campaign(storage, host, tenant)
    apply_events(storage, host.settings, events_of(records))
    drain_events_queue(storage, host.settings)
    made = client.post(f"/api/v1/tenants/{tenant.id}/keys", json={"role": "tenant"}, headers=admin)
    key = made.json()["key"]
    return tenant, job, rows, bearer(key)


def test_every_delivery_has_a_timeline_of_its_outcome_and_provider_events(client, tracked):
    _, job, rows, auth = tracked
    page = client.get(f"/api/v1/jobs/{job.id}/deliveries", headers=auth, params={"limit": 3}).json()
    items = page["items"]
    page2 = client.get(f"/api/v1/jobs/{job.id}/deliveries", headers=auth,
                       params={"continuation": page["continuation"]}).json()
    items += page2["items"]
    assert len(items) == len(rows)
    for item in items:
        types = [e["type"] for e in item["events"]]
        assert types[:2] == ["queued", "sent"] and "processed" in types, types
    bounced = next(i for i in items if i["email"].startswith("bounce-"))
    last = bounced["events"][-1]
    assert (bounced["status"], last["type"], last["reason_code"], last["source"]) == (
        "bounced", "bounced", "5.1.1", "sendgrid")
    assert "@" not in last["provider_response"]


def test_one_delivery_answers_what_happened_to_this_persons_email(client, tracked):
    _, job, _, auth = tracked
    row = next(r for r in delivery_rows_of(client, job.id, auth) if r["email"].startswith("slow-"))
    one = client.get(f"/api/v1/jobs/{job.id}/deliveries/{row['contact_id']}", headers=auth)
    assert one.status_code == 200
    types = [e["type"] for e in one.json()["events"]]
    assert types == ["queued", "sent", "processed", "deferred", "delivered"]
    assert client.get(f"/api/v1/jobs/{job.id}/deliveries/nobody", headers=auth).status_code == 404


def delivery_rows_of(client, job_id, auth):
    return client.get(f"/api/v1/jobs/{job_id}/deliveries", headers=auth).json()["items"]


def test_a_closed_job_writes_its_csv_and_summary_to_blob_storage(storage, tracked):
    tenant, job, rows, _ = tracked
    blobs = delivery_logs(storage)
    lines = list(csv.DictReader(io.StringIO(blobs.read(log_blob_name(tenant.id, job.id)).decode())))
    assert sorted(line["email"] for line in lines) == sorted(r["email"] for r in rows)
    assert all(line["events"] for line in lines)
    summary = json.loads(blobs.read(summary_blob_name(tenant.id, job.id)))
    assert summary["recipients"] == len(rows) and sum(summary["counts"].values()) == len(rows)
    assert summary["counts"]["bounced"] == 1


def test_a_contacts_history_spans_campaigns_without_scanning_jobs(storage, host, client, tracked):
    tenant, job, rows, auth = tracked
    second = run_campaign(storage, host, tenant)
    drain_events_queue(storage, host.settings)
    contact_id = next(r["contact_id"] for r in delivery_rows_of(client, job.id, auth)
                      if r["email"] == rows[2]["email"])
    history = client.get(f"/api/v1/contacts/{contact_id}/deliveries", headers=auth).json()["items"]
    assert {(h["job_id"], h["status"]) for h in history} == {(job.id, "bounced"), (second.id, "suppressed")}


def test_get_unsubscribe_shows_a_page_and_changes_nothing(client, storage, tracked, simulator):
    tenant, _, rows, auth = tracked
    path = unsubscribe_path(simulator, rows[0]["email"])
    page = client.get(path)
    assert page.status_code == 200 and "Unsubscribe" in page.text and "<form" in page.text
    assert rows[0]["email"] not in suppressed(client, auth)


def test_one_click_post_unsubscribes_without_login_or_redirect(client, tracked, simulator):
    _, _, rows, auth = tracked
    path = unsubscribe_path(simulator, rows[0]["email"])
    response = client.post(path, data={"List-Unsubscribe": "One-Click"}, follow_redirects=False)
    assert response.status_code == 200 and "location" not in response.headers
    assert rows[0]["email"] in suppressed(client, auth)
    assert client.post(path, data={"List-Unsubscribe": "One-Click"}).status_code == 200  # repeatable


def test_an_altered_unsubscribe_token_is_refused(client, tracked, simulator):
    _, _, rows, auth = tracked
    path = unsubscribe_path(simulator, rows[0]["email"])
    forged = path[:-2] + ("AA" if not path.endswith("AA") else "BB")
    assert client.post(forged, data={"List-Unsubscribe": "One-Click"}).status_code == 404
    assert rows[0]["email"] not in suppressed(client, auth)


def unsubscribe_path(simulator, email: str) -> str:
    sim, _, _ = simulator
    message = sim.messages(to=email)[0]
    assert message["headers"]["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    return urlparse(message["headers"]["List-Unsubscribe"].strip("<>")).path


def suppressed(client, auth) -> set[str]:
    return {s["email"] for s in client.get("/api/v1/suppressions", headers=auth).json()["items"]}


def test_after_delete_contact_no_table_or_blob_holds_the_address(storage, client, tracked):
    _, job, rows, auth = tracked
    email = rows[2]["email"]  # bounced: it has events, a suppression, a CSV row and a task entry
    contact_id = next(r["contact_id"] for r in delivery_rows_of(client, job.id, auth) if r["email"] == email)
    before = addresses_everywhere(storage, email)
    assert {"Deliveries", "Suppressions", "Tasks", "Contacts", "blob"} <= before

    assert client.delete(f"/api/v1/contacts/{contact_id}", headers=auth).status_code == 204

    assert addresses_everywhere(storage, email) == set()
    counts = client.get(f"/api/v1/jobs/{job.id}", headers=auth).json()["counts"]
    assert sum(counts.values()) == len(rows) and counts["bounced"] == 1  # counts stay
    assert email not in suppressed(client, auth)
    history = client.get(f"/api/v1/contacts/{contact_id}/deliveries", headers=auth).json()["items"]
    assert [h["status"] for h in history] == ["bounced"]


def test_a_one_click_unsubscribe_during_a_running_job_stops_later_tasks(storage, host, simulator, client):
    sim, _, _ = simulator
    tenant = make_tenant(storage)
    rows = people("a1", "a2", "a3", "a4", "a5", "a6")
    ids = add_contacts(storage, tenant, rows)
    campaign = schedule_campaign(storage, tenant)
    host.expand_round()
    first = storage.queue(TASK_QUEUE).receive(1, visibility_timeout=60)[0]
    host.send(TaskTicket.model_validate_json(first.content))
    storage.queue(TASK_QUEUE).delete(first)
    sent_so_far = {m["to"] for m in sim.messages()}
    later = next(i for i, r in enumerate(rows) if r["email"] not in sent_so_far)
    url = unsubscribe_url(host.settings.public_url, host.settings.signing_key,
                          UnsubscribeClaim(tenant.id, ids[later], campaign.id))

    assert client.post(urlparse(url).path, data={"List-Unsubscribe": "One-Click"}).status_code == 200
    job = run_campaign_to_close(storage, host, campaign)

    assert sim.messages(to=rows[later]["email"]) == []
    row = next(r for r in delivery_rows(storage, job.id) if r["RowKey"] == ids[later])
    assert row["status"] == "suppressed"


def run_campaign_to_close(storage, host, campaign):
    host.run_until(lambda: job_of(storage, campaign).status == "completed")
    return job_of(storage, campaign)


def test_delivery_logs_past_retention_are_purged_once_an_hour(storage, settings, tracked):
    tenant, job, rows, _ = tracked
    blobs = delivery_logs(storage)
    assert blobs.exists(log_blob_name(tenant.id, job.id))
    future = utcnow() + timedelta(days=settings.delivery_log_retention_days + 1)

    purged = purge_expired_delivery_logs(storage, settings, clock=lambda: future)

    assert purged == [job.id]
    assert delivery_rows(storage, job.id) == []
    assert list(storage.table(DELIVERIES).query(  # the tasks' in-flight rows went with them
        "PartitionKey ge @lo and PartitionKey lt @hi", {"lo": f"{job.id}-", "hi": f"{job.id}."})) == []
    assert list(storage.table(DELIVERY_EVENTS).query(
        "PartitionKey ge @lo and PartitionKey lt @hi", {"lo": f"{job.id}-", "hi": f"{job.id}."})) == []
    assert not blobs.exists(log_blob_name(tenant.id, job.id))
    kept = storage.table(JOBS).get(tenant.id, job.id)
    assert kept["logs_purged_at"]
    assert sum(kept[f"count_{s}"] for s in ("delivered", "bounced", "complained")) == 5
    assert purge_expired_delivery_logs(storage, settings, clock=lambda: future + timedelta(minutes=5)) == []
