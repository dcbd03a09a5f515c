"""Operator views over the API: who may see them, what they show, and dead letters replayed or discarded."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from core.messages import TaskTicket
from core.storage import SUPPORT_AUDIT, TASK_QUEUE
from providers.health import BreakerConfig, HealthBoard, Permit
from status_manager import close_finished_jobs
from task_manager import record_task_failure
from tests.integration.conftest import bearer
from tests.pipeline import add_contacts, job_of, make_tenant, schedule_campaign, sendgrid_host
from tests.sim_fixtures import running_sendgrid_simulator

VIEWS = ("/operator/tenants", "/operator/providers", "/operator/queues", "/operator/poison/task-queue")


@pytest.fixture
def operator_support(client, admin) -> dict[str, str]:
    made = client.post("/api/v1/keys", json={"role": "support"}, headers=admin)
    assert made.status_code == 201, made.text
    return bearer(made.json()["key"])


@pytest.fixture
def started(storage, settings) -> Iterator[tuple[object, object, object]]:
    """A tenant's job of six in tasks of two, expanded, its task tickets on task-queue, nothing sent."""
    with running_sendgrid_simulator() as (_, url):
        host = sendgrid_host(storage, settings, url, task_size=2, task_window=3)
        tenant = make_tenant(storage)
        add_contacts(storage, tenant, [{"email": f"p{i}@example.com"} for i in range(6)])
        campaign = schedule_campaign(storage, tenant)
        host.expand_round()
        job = job_of(storage, campaign)
        assert job is not None
        yield tenant, job, host


def to_poison(storage, settings, reason: str) -> list[TaskTicket]:
    """What the host does on a task message's last failed attempt: account for it, move it."""
    moved = []
    for message in storage.queue(TASK_QUEUE).receive(32, visibility_timeout=60):
        ticket = TaskTicket.model_validate_json(message.content)
        record_task_failure(storage, ticket, settings, reason)
        storage.poison(TASK_QUEUE).send(message.content)
        storage.queue(TASK_QUEUE).delete(message)
        moved.append(ticket)
    return moved


def audit_rows(storage) -> list[dict]:
    return list(storage.table(SUPPORT_AUDIT).query("RowKey ne @x", {"x": ""}))


def test_tenant_keys_and_one_tenants_support_keys_see_no_operator_view(client, tenant, support):
    for headers in (tenant.headers, support):
        for view in VIEWS:
            response = client.get(f"/api/v1{view}", headers=headers)
            assert response.status_code == 403, (view, response.text)


def test_an_operator_wide_support_key_reads_every_view_and_each_read_is_audited(
    client, storage, operator_support
):
    for view in VIEWS:
        assert client.get(f"/api/v1{view}", headers=operator_support).status_code == 200, view
    resources = sorted(row["resource"] for row in audit_rows(storage) if row["PartitionKey"] == "*")
    assert resources == sorted(v.replace("task-queue", "{queue}") for v in VIEWS)


def test_queues_show_depth_and_the_age_of_the_oldest_message(client, admin, storage):
    storage.queue(TASK_QUEUE).send('{"x": 1}')
    time.sleep(1.1)  # the age is measured from the insertion time: let some pass
    storage.queue(TASK_QUEUE).send('{"x": 2}')
    queues = {q["name"]: q for q in client.get("/api/v1/operator/queues", headers=admin).json()["items"]}
    assert set(queues) == {"job-queue", "task-queue", "events-queue", "job-queue-poison", "task-queue-poison",
                           "events-queue-poison"}
    assert queues["task-queue"]["depth"] == 2 and queues["task-queue"]["oldest_age_seconds"] >= 1.0
    assert queues["job-queue"]["depth"] == 0 and queues["job-queue"]["oldest_age_seconds"] is None


def test_a_poison_list_names_the_job_the_task_and_why(client, admin, storage, settings, started):
    tenant, job, _ = started
    moved = to_poison(storage, settings, "TimeoutError on attempt 5")
    malformed = {"tenant_id": tenant.id, "job_id": job.id, "task_index": "x"}
    storage.poison(TASK_QUEUE).send(json.dumps(malformed))
    items = client.get("/api/v1/operator/poison/task-queue", headers=admin).json()["items"]
    tickets = [i for i in items if i["kind"] == "task ticket"]
    assert sorted(i["task_index"] for i in tickets) == sorted(t.task_index for t in moved) == [0, 1, 2]
    assert all(i["job_id"] == job.id and i["tenant_id"] == tenant.id for i in tickets)
    assert all("TimeoutError on attempt 5" in i["reason"] for i in tickets)
    unreadable = next(i for i in items if i["kind"] == "unreadable")
    assert unreadable["job_id"] == job.id and unreadable["reason"].startswith("malformed message")


def test_an_admin_replay_sends_the_message_back_and_the_audit_names_the_key_and_action(
    client, admin, storage, settings, started
):
    tenant, job, _ = started
    to_poison(storage, settings, "boom")
    first, *others = client.get("/api/v1/operator/poison/task-queue", headers=admin).json()["items"]
    response = client.post(f"/api/v1/operator/poison/task-queue/{first['id']}/replay", headers=admin)
    assert response.status_code == 200, response.text
    assert [json.loads(t)["task_index"] for t in storage.queue(TASK_QUEUE).peek()] == [first["task_index"]]
    left = client.get("/api/v1/operator/poison/task-queue", headers=admin).json()["items"]
    assert [i["id"] for i in left] == [i["id"] for i in others]  # the others are visible again at once
    row = next(r for r in audit_rows(storage) if r.get("action") == "replay")
    assert (row["PartitionKey"], row["key_id"]) == (tenant.id, "admin")
    named = {"queue": "task-queue", "message_id": first["id"], "job_id": job.id}
    assert json.loads(row["resource_ids"]) == named


def test_an_admin_discard_deletes_only_that_message_and_is_audited(client, admin, storage, settings, started):
    to_poison(storage, settings, "boom")
    first, *others = client.get("/api/v1/operator/poison/task-queue", headers=admin).json()["items"]
    path = f"/api/v1/operator/poison/task-queue/{first['id']}"
    assert client.delete(path, headers=admin).status_code == 204
    left = client.get("/api/v1/operator/poison/task-queue", headers=admin).json()["items"]
    assert [i["id"] for i in left] == [i["id"] for i in others]
    assert storage.queue(TASK_QUEUE).peek() == []
    assert [r["action"] for r in audit_rows(storage) if r.get("action")] == ["discard"]


def test_support_keys_may_not_replay_or_discard(client, admin, storage, settings, started, operator_support):
    to_poison(storage, settings, "boom")
    first = client.get("/api/v1/operator/poison/task-queue", headers=admin).json()["items"][0]
    path = f"/api/v1/operator/poison/task-queue/{first['id']}"
    assert client.post(path + "/replay", headers=operator_support).status_code == 403
    assert client.delete(path, headers=operator_support).status_code == 403
    assert len(client.get("/api/v1/operator/poison/task-queue", headers=admin).json()["items"]) == 3


def test_an_unknown_message_or_queue_is_404_and_nothing_is_audited(client, admin, storage):
    assert client.post("/api/v1/operator/poison/task-queue/nope/replay", headers=admin).status_code == 404
    assert client.get("/api/v1/operator/poison/mail-queue", headers=admin).status_code == 404
    assert client.delete("/api/v1/operator/poison/mail-queue/nope", headers=admin).status_code == 404
    assert [r for r in audit_rows(storage) if r.get("action")] == []


def test_providers_show_breaker_state_failure_window_and_last_probe(client, admin, storage):
    board = HealthBoard(storage, BreakerConfig(min_requests=2, cooldown_seconds=0.2, sync_seconds=0.01))
    for _ in range(3):
        board.record(Permit("sendgrid"), ok=False)
    board.sync("sendgrid", wait=True)
    shown = client.get("/api/v1/operator/providers", headers=admin).json()["items"]
    sendgrid = next(p for p in shown if p["provider"] == "sendgrid")
    assert (sendgrid["state"], sendgrid["window_failed"], sendgrid["last_probe"]) == ("open", 3, None)
    assert sendgrid["open_until"]

    time.sleep(0.3)  # past the cool-down: the next permit is the one probe
    probe = board.permit("sendgrid")
    assert probe is not None and probe.probe
    board.record(probe, ok=True)
    sendgrid = next(p for p in client.get("/api/v1/operator/providers", headers=admin).json()["items"]
                    if p["provider"] == "sendgrid")
    assert (sendgrid["state"], sendgrid["window_failed"], sendgrid["last_probe"]) == ("closed", 0, "ok")
    assert sendgrid["last_probe_at"]


def test_tenants_show_their_running_jobs_with_send_rates(client, admin, storage, settings, started):
    tenant, job, host = started
    message = storage.queue(TASK_QUEUE).receive(1, visibility_timeout=60)[0]
    host.send(TaskTicket.model_validate_json(message.content))
    close_finished_jobs(storage, settings)  # sums the finished task into the job's counts
    items = client.get("/api/v1/operator/tenants", headers=admin, params={"limit": 1000}).json()["items"]
    shown = next(t for t in items if t["id"] == tenant.id)
    running = shown["running_jobs"]
    assert [(j["id"], j["sent"]) for j in running] == [(job.id, 2)]
    assert running[0]["sent_per_minute"] > 0 and shown["sent_per_minute"] == running[0]["sent_per_minute"]
