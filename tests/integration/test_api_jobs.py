"""Jobs and delivery logs, with Job and Delivery rows written the way the managers write them."""

from __future__ import annotations

import csv
import io
import secrets
from datetime import UTC, datetime, timedelta

import pytest

from core.clock import iso, parse_iso
from core.ids import new_id
from core.models import Job, Recipient, Task, delivery_entity
from core.status import DeliveryStatus, zero_counts
from core.storage import DELIVERIES, JOBS
from tests.integration.conftest import random_email

V1 = "/api/v1"
TASK_SIZE = 100


def write_job(storage, tenant_id: str, campaign_id: str = "", **fields) -> Job:
    job = Job(id=new_id(), tenant_id=tenant_id, campaign_id=campaign_id or new_id(), campaign_name="n",
              template={}, criteria={}, **fields)
    storage.table(JOBS).insert(job.to_entity())
    return job


def write_deliveries(storage, job: Job, n: int, status=DeliveryStatus.SENT) -> list[Recipient]:
    """``n`` recipients spread over tasks of ``TASK_SIZE``, as the Task Manager records them."""
    recipients = [Recipient(f"c{secrets.token_hex(8)}", random_email(), "", {}) for _ in range(n)]
    rows = []
    for i, recipient in enumerate(recipients):
        task = Task(job_id=job.id, index=i // TASK_SIZE, tenant_id=job.tenant_id, size=TASK_SIZE)
        rows.append(delivery_entity(task, recipient, status, iso(datetime.now(UTC)), provider="sendgrid",
                                    message_id=secrets.token_hex(6), attempts=1))
    storage.table(DELIVERIES).batch_upsert(rows)
    return recipients


@pytest.fixture
def campaign_id(client, tenant, campaign_body) -> str:
    return client.post(f"{V1}/campaigns", json=campaign_body(), headers=tenant.headers).json()["id"]


def test_job_shows_all_fourteen_counts_and_progress(client, tenant, storage):
    counts = zero_counts() | {"sent": 30, "delivered": 10, "pending": 60}
    job = write_job(storage, tenant.id, status="sending", roster_size=100, counts=counts,
                    started_at=iso(datetime.now(UTC) - timedelta(minutes=5)))
    body = client.get(f"{V1}/jobs/{job.id}", headers=tenant.headers).json()
    assert body["counts"] == counts and len(body["counts"]) == 14
    assert body["progress"] == pytest.approx(0.4)
    assert (body["roster_size"], body["campaign_id"], body["status"]) == (100, job.campaign_id, "sending")


def test_running_job_eta_extrapolates_the_average_rate(client, tenant, storage):
    started = datetime.now(UTC) - timedelta(minutes=10)
    job = write_job(storage, tenant.id, status="sending", roster_size=200,
                    counts=zero_counts() | {"sent": 100, "pending": 100}, started_at=iso(started))
    eta = parse_iso(client.get(f"{V1}/jobs/{job.id}", headers=tenant.headers).json()["eta"])
    expected = datetime.now(UTC) + timedelta(minutes=10)
    assert abs((eta - expected).total_seconds()) < 30


def test_completed_job_has_progress_one_and_no_eta(client, tenant, storage):
    job = write_job(storage, tenant.id, status="completed", roster_size=3,
                    counts=zero_counts() | {"delivered": 3}, completed_at=iso(datetime.now(UTC)))
    body = client.get(f"{V1}/jobs/{job.id}", headers=tenant.headers).json()
    assert (body["progress"], body["eta"]) == (1.0, None)
    assert body["completed_at"] is not None


def test_job_not_yet_expanded_has_zero_progress_and_null_timestamps(client, tenant, storage):
    job = write_job(storage, tenant.id)
    body = client.get(f"{V1}/jobs/{job.id}", headers=tenant.headers).json()
    assert body["progress"] == 0.0
    assert (body["started_at"], body["completed_at"], body["eta"]) == (None, None, None)


def test_failed_job_shows_its_reason(client, tenant, storage):
    job = write_job(storage, tenant.id, status="failed", failure_reason="provider rejected credentials")
    assert client.get(f"{V1}/jobs/{job.id}", headers=tenant.headers).json()["failure_reason"] == (
        "provider rejected credentials"
    )


def test_another_tenants_job_is_404(client, tenant, new_tenant, storage):
    job = write_job(storage, new_tenant().id)
    assert client.get(f"{V1}/jobs/{job.id}", headers=tenant.headers).status_code == 404
    assert client.get(f"{V1}/jobs/{job.id}/deliveries", headers=tenant.headers).status_code == 404
    assert client.get(f"{V1}/jobs/{job.id}/deliveries.csv", headers=tenant.headers).status_code == 404


def test_campaign_jobs_lists_only_that_campaigns_jobs(client, tenant, storage, campaign_id):
    mine = {write_job(storage, tenant.id, campaign_id).id for _ in range(3)}
    write_job(storage, tenant.id)
    page = client.get(f"{V1}/campaigns/{campaign_id}/jobs", headers=tenant.headers).json()
    assert {j["id"] for j in page["items"]} == mine


def test_walking_deliveries_fifty_at_a_time_visits_each_recipient_once(client, tenant, storage):
    job = write_job(storage, tenant.id, status="completed", roster_size=230)
    recipients = write_deliveries(storage, job, 230)
    write_deliveries(storage, write_job(storage, tenant.id), 20)  # a neighbouring job's log
    seen: list[str] = []
    continuation = None
    while True:
        params = {"limit": 50} | ({"continuation": continuation} if continuation else {})
        page = client.get(f"{V1}/jobs/{job.id}/deliveries", params=params, headers=tenant.headers).json()
        assert len(page["items"]) <= 50
        seen += [d["contact_id"] for d in page["items"]]
        continuation = page["continuation"]
        if not continuation:
            break
    assert sorted(seen) == sorted(r.contact_id for r in recipients)


def test_delivery_items_carry_the_documented_fields(client, tenant, storage):
    job = write_job(storage, tenant.id)
    [recipient] = write_deliveries(storage, job, 1)
    [item] = client.get(f"{V1}/jobs/{job.id}/deliveries", headers=tenant.headers).json()["items"]
    assert set(item) >= {"contact_id", "email", "status", "reason", "provider", "provider_message_id",
                         "attempts", "events", "updated_at"}
    assert (item["contact_id"], item["email"]) == (recipient.contact_id, recipient.email)
    assert item["status"] == "sent" and [e["type"] for e in item["events"]][-1:] == ["sent"]  # the timeline


def test_deliveries_filter_by_status(client, tenant, storage):
    job = write_job(storage, tenant.id)
    write_deliveries(storage, job, 5, DeliveryStatus.SENT)
    bounced = write_deliveries(storage, job, 3, DeliveryStatus.BOUNCED)
    page = client.get(f"{V1}/jobs/{job.id}/deliveries", params={"status": "bounced"},
                      headers=tenant.headers).json()
    assert sorted(d["contact_id"] for d in page["items"]) == sorted(r.contact_id for r in bounced)


def test_deliveries_filter_by_normalized_email(client, tenant, storage):
    job = write_job(storage, tenant.id)
    recipients = write_deliveries(storage, job, 4)
    page = client.get(f"{V1}/jobs/{job.id}/deliveries", params={"email": f" {recipients[2].email.upper()}"},
                      headers=tenant.headers).json()
    assert [d["contact_id"] for d in page["items"]] == [recipients[2].contact_id]


def test_unknown_delivery_status_filter_is_422(client, tenant, storage):
    job = write_job(storage, tenant.id)
    response = client.get(f"{V1}/jobs/{job.id}/deliveries", params={"status": "opened"},
                          headers=tenant.headers)
    assert response.status_code == 422
    assert response.json()["error"]["details"][0]["field"] == "status"


def test_deliveries_csv_has_a_header_and_one_row_per_recipient(client, tenant, storage):
    job = write_job(storage, tenant.id)
    recipients = write_deliveries(storage, job, 230)
    response = client.get(f"{V1}/jobs/{job.id}/deliveries.csv", headers=tenant.headers)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert {"email", "status", "contact_id"} <= set(rows[0])
    assert sorted((r["contact_id"], r["email"]) for r in rows) == sorted(
        (r.contact_id, r.email) for r in recipients
    )
