"""Campaigns: create, validate, read with counts and jobs, edit, schedule, preview."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta

import api.routers.campaigns as campaigns_router
from api.campaign_records import load_campaign
from core.clock import iso, parse_iso
from core.models import SCHEDULE_PARTITION, Job
from core.status import zero_counts
from core.storage import CAMPAIGNS, JOBS, SCHEDULE
from tests.integration.conftest import random_email

V1 = "/api/v1"


def later(days: int = 3) -> datetime:
    return (datetime.now(UTC) + timedelta(days=days)).replace(microsecond=0)


def create(client, tenant, body) -> dict:
    response = client.post(f"{V1}/campaigns", json=body, headers=tenant.headers)
    assert response.status_code == 201, response.text
    return response.json()


def schedule_rows(storage, campaign_id: str) -> list[dict]:
    rows = storage.table(SCHEDULE).partition(SCHEDULE_PARTITION)
    return [r for r in rows if r["campaign_id"] == campaign_id]


def set_status(storage, tenant, campaign_id: str, status: str) -> None:
    storage.table(CAMPAIGNS).update({"PartitionKey": tenant.id, "RowKey": campaign_id, "status": status})


def test_new_campaign_is_a_draft_with_every_count_at_zero(client, tenant, campaign_body):
    campaign = create(client, tenant, campaign_body())
    assert campaign["status"] == "draft"
    assert campaign["counts"] == zero_counts() and len(campaign["counts"]) == 14
    assert campaign["jobs"] == [] and campaign["send_at"] is None


def test_campaign_with_send_at_is_scheduled_and_indexed(client, tenant, campaign_body, storage):
    send_at = later()
    campaign = create(client, tenant, campaign_body(send_at=send_at.isoformat()))
    assert campaign["status"] == "scheduled"
    assert parse_iso(campaign["send_at"]) == send_at
    rows = schedule_rows(storage, campaign["id"])
    assert [(r["tenant_id"], parse_iso(r["send_at"])) for r in rows] == [(tenant.id, send_at)]
    stored = load_campaign(storage, tenant.id, campaign["id"])
    assert stored.schedule_key == rows[0]["RowKey"]


def test_criteria_are_stored_normalized(client, tenant, campaign_body):
    criteria = {"all": [{"field": "email", "op": "eq", "value": "A@Example.COM"}]}
    campaign = create(client, tenant, campaign_body(criteria=criteria))
    assert campaign["criteria"]["all"][0]["value"] == "a@example.com"


def test_server_owned_fields_are_refused(client, tenant, campaign_body):
    response = client.post(f"{V1}/campaigns", json=campaign_body(status="running"), headers=tenant.headers)
    assert response.status_code == 422
    assert response.json()["error"]["details"][0]["field"] == "status"


def test_template_and_criteria_problems_are_reported_together(client, tenant, campaign_body, template):
    body = campaign_body(template=template | {"html": "{{ contact.name "},
                         criteria={"any": [{"field": "name", "op": "like", "value": "x"}]})
    response = client.post(f"{V1}/campaigns", json=body, headers=tenant.headers)
    assert response.status_code == 422
    fields = {d["field"] for d in response.json()["error"]["details"]}
    assert fields == {"template.html", "criteria.any.0.op"}


def test_header_injection_in_the_subject_is_refused(client, tenant, campaign_body, template):
    body = campaign_body(template=template | {"subject": "Hi\r\nBcc: x@example.com"})
    response = client.post(f"{V1}/campaigns", json=body, headers=tenant.headers)
    assert response.status_code == 422
    assert response.json()["error"]["details"][0]["field"] == "template.subject"


def test_campaign_shows_its_jobs(client, tenant, campaign_body, storage):
    campaign = create(client, tenant, campaign_body())
    job = Job(id=secrets.token_hex(8), tenant_id=tenant.id, campaign_id=campaign["id"], campaign_name="n",
              template={}, criteria={}, status="sending")
    storage.table(JOBS).insert(job.to_entity())
    storage.table(CAMPAIGNS).update({"PartitionKey": tenant.id, "RowKey": campaign["id"], "status": "running",
                                     "current_job_id": job.id, "job_count": 1})
    shown = client.get(f"{V1}/campaigns/{campaign['id']}", headers=tenant.headers).json()
    assert [(j["id"], j["status"]) for j in shown["jobs"]] == [(job.id, "sending")]
    assert (shown["current_job_id"], shown["status"]) == (job.id, "running")
    listed = client.get(f"{V1}/campaigns", headers=tenant.headers).json()["items"]
    assert [(j["id"], j["status"]) for j in listed[0]["jobs"]] == [(job.id, "sending")]


def test_campaigns_list_pages_visit_each_once(client, tenant, campaign_body):
    made = {create(client, tenant, campaign_body())["id"] for _ in range(5)}
    seen: list[str] = []
    continuation = None
    while True:
        params = {"limit": 2} | ({"continuation": continuation} if continuation else {})
        page = client.get(f"{V1}/campaigns", params=params, headers=tenant.headers).json()
        seen += [c["id"] for c in page["items"]]
        continuation = page["continuation"]
        if not continuation:
            break
    assert sorted(seen) == sorted(made)


def test_patch_changes_only_the_given_fields(client, tenant, campaign_body):
    campaign = create(client, tenant, campaign_body())
    response = client.patch(f"{V1}/campaigns/{campaign['id']}", json={"name": "Renamed"},
                            headers=tenant.headers)
    assert response.status_code == 200
    assert response.json()["name"] == "Renamed"
    assert response.json()["template"] == campaign["template"]


def test_patch_send_at_moves_the_schedule_row(client, tenant, campaign_body, storage):
    campaign = create(client, tenant, campaign_body(send_at=later(3).isoformat()))
    new_time = later(5)
    response = client.patch(f"{V1}/campaigns/{campaign['id']}", json={"send_at": new_time.isoformat()},
                            headers=tenant.headers)
    assert response.status_code == 200
    rows = schedule_rows(storage, campaign["id"])
    assert [parse_iso(r["send_at"]) for r in rows] == [new_time]
    assert load_campaign(storage, tenant.id, campaign["id"]).schedule_key == rows[0]["RowKey"]


def test_patch_send_at_null_unschedules(client, tenant, campaign_body, storage):
    campaign = create(client, tenant, campaign_body(send_at=later().isoformat()))
    response = client.patch(f"{V1}/campaigns/{campaign['id']}", json={"send_at": None},
                            headers=tenant.headers)
    assert response.json()["status"] == "draft"
    assert schedule_rows(storage, campaign["id"]) == []


def test_patch_with_an_invalid_template_names_the_field(client, tenant, campaign_body, template):
    campaign = create(client, tenant, campaign_body())
    response = client.patch(f"{V1}/campaigns/{campaign['id']}",
                            json={"template": template | {"text": "{% include 'x' %}"}},
                            headers=tenant.headers)
    assert response.status_code == 422
    assert response.json()["error"]["details"][0]["field"] == "template.text"


def test_patch_of_a_running_campaign_is_409(client, tenant, campaign_body, storage):
    campaign = create(client, tenant, campaign_body())
    set_status(storage, tenant, campaign["id"], "running")
    response = client.patch(f"{V1}/campaigns/{campaign['id']}", json={"name": "x"}, headers=tenant.headers)
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "state_conflict"


def test_patch_that_loses_a_race_is_409(client, tenant, campaign_body, storage, monkeypatch):
    campaign = create(client, tenant, campaign_body())
    stale = load_campaign(storage, tenant.id, campaign["id"])
    storage.table(CAMPAIGNS).update({"PartitionKey": tenant.id, "RowKey": campaign["id"], "name": "other"})
    monkeypatch.setattr(campaigns_router, "load_campaign", lambda *_: stale)
    response = client.patch(f"{V1}/campaigns/{campaign['id']}", json={"name": "mine"}, headers=tenant.headers)
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "conflict"


def test_schedule_with_an_empty_body_means_now(client, tenant, campaign_body, storage):
    campaign = create(client, tenant, campaign_body())
    before = datetime.now(UTC) - timedelta(seconds=1)
    response = client.post(f"{V1}/campaigns/{campaign['id']}/schedule", json={}, headers=tenant.headers)
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "scheduled"
    assert before <= parse_iso(body["send_at"]) <= datetime.now(UTC) + timedelta(seconds=1)
    assert len(schedule_rows(storage, campaign["id"])) == 1


def test_schedule_without_a_body_means_now(client, tenant, campaign_body):
    campaign = create(client, tenant, campaign_body())
    response = client.post(f"{V1}/campaigns/{campaign['id']}/schedule", headers=tenant.headers)
    assert response.status_code == 200 and response.json()["status"] == "scheduled"


def test_schedule_at_a_given_time(client, tenant, campaign_body):
    campaign = create(client, tenant, campaign_body())
    send_at = later(2)
    body = client.post(f"{V1}/campaigns/{campaign['id']}/schedule", json={"send_at": iso(send_at)},
                       headers=tenant.headers).json()
    assert parse_iso(body["send_at"]) == send_at


def test_scheduling_a_completed_campaign_is_409(client, tenant, campaign_body, storage):
    campaign = create(client, tenant, campaign_body())
    set_status(storage, tenant, campaign["id"], "completed")
    response = client.post(f"{V1}/campaigns/{campaign['id']}/schedule", json={}, headers=tenant.headers)
    assert response.status_code == 409


def test_preview_renders_for_a_contact_with_unsubscribe_headers(client, tenant, campaign_body):
    email = random_email()
    client.post(f"{V1}/contacts", json=[{"email": email, "name": "Ada", "attributes": {"course": "CSE456"}}],
                headers=tenant.headers)
    campaign = create(client, tenant, campaign_body())
    response = client.post(f"{V1}/campaigns/{campaign['id']}/preview", json={"email": email},
                           headers=tenant.headers)
    assert response.status_code == 200
    preview = response.json()
    assert preview["subject"] == "Hello Ada" and "CSE456" in preview["html"]
    url = preview["headers"]["List-Unsubscribe"].strip("<>")
    assert "/api/v1/unsubscribe/" in url and url in preview["html"]
    assert preview["headers"]["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


def test_preview_without_a_contact_uses_a_sample(client, tenant, campaign_body):
    campaign = create(client, tenant, campaign_body())
    response = client.post(f"{V1}/campaigns/{campaign['id']}/preview", json={}, headers=tenant.headers)
    assert response.status_code == 200
    assert response.json()["subject"].startswith("Hello")
    assert "List-Unsubscribe" in response.json()["headers"]


def test_preview_for_an_unknown_contact_is_404(client, tenant, campaign_body):
    campaign = create(client, tenant, campaign_body())
    response = client.post(f"{V1}/campaigns/{campaign['id']}/preview", json={"contact_id": "c-missing"},
                           headers=tenant.headers)
    assert response.status_code == 404


def test_unknown_campaign_is_404(client, tenant):
    assert client.get(f"{V1}/campaigns/{secrets.token_hex(8)}", headers=tenant.headers).status_code == 404
