"""Pause, resume, cancel and retry-failed at the manager level and their HTTP answers (403/404/409)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from core.errors import StateConflict
from core.messages import TaskTicket
from core.models import Job
from core.status import JobStatus
from core.storage import ACTIVE_JOBS, JOBS, SCHEDULE, TASK_QUEUE, Storage
from job_manager.control import cancel_job, pause_job, resume_job
from status_manager import close_finished_jobs
from task_manager import TaskOutcome
from tests.pipeline import InProcessHost, add_contacts, job_of, make_tenant, schedule_campaign, sendgrid_host
from tests.sim_fixtures import running_sendgrid_simulator


@pytest.fixture
def simulator() -> Iterator[tuple[object, str]]:
    with running_sendgrid_simulator() as (sim, url):
        yield sim, url


@pytest.fixture
def host(storage: Storage, settings, simulator) -> InProcessHost:
    _, url = simulator
    return sendgrid_host(storage, settings, url, task_size=10, task_window=2)


def people(n: int) -> list[dict]:
    tag = secrets.token_hex(3)
    return [{"email": f"p{i}-{tag}@example.com", "name": f"P{i}"} for i in range(n)]


def expanded_job(storage: Storage, host: InProcessHost, n: int = 60) -> Job:
    tenant = make_tenant(storage)
    add_contacts(storage, tenant, people(n))
    campaign = schedule_campaign(storage, tenant)
    host.expand_round()
    job = job_of(storage, campaign)
    assert job is not None and job.expanded
    return job


def drain_task_queue(storage: Storage, host: InProcessHost) -> list[object]:
    outcomes = []
    for message in storage.queue(TASK_QUEUE).receive(32):
        outcomes.append(host.send(TaskTicket.model_validate_json(message.content)))
        storage.queue(TASK_QUEUE).delete(message)
    return outcomes


def queued_tasks(storage: Storage) -> list[int]:
    return sorted(TaskTicket.model_validate_json(t).task_index for t in storage.queue(TASK_QUEUE).peek())


def test_a_paused_jobs_task_messages_are_acked_and_its_tasks_wait(storage, host, simulator):
    job = expanded_job(storage, host)
    pause_job(storage, job.tenant_id, job.id)

    assert set(drain_task_queue(storage, host)) == {TaskOutcome.PAUSED}
    assert simulator[0].messages() == []


def test_resume_requeues_the_waiting_tasks_inside_the_window(storage, host, simulator):
    job = expanded_job(storage, host)
    pause_job(storage, job.tenant_id, job.id)
    drain_task_queue(storage, host)

    resumed = resume_job(storage, host.settings, job.tenant_id, job.id)

    assert resumed.status == JobStatus.SENDING
    assert queued_tasks(storage) == [0, 1]  # TASK_WINDOW = 2; the rest follow as tasks finish
    host.run_until(lambda: Job.from_entity(storage.table(JOBS).get(job.tenant_id, job.id)).completed_at != "")
    assert len(simulator[0].messages()) == 60


def test_a_cancelled_jobs_unclaimed_tasks_are_closed_by_the_status_manager(storage, host, simulator):
    job = expanded_job(storage, host)
    cancel_job(storage, job.tenant_id, job.id)

    close_finished_jobs(storage, host.settings)

    closed = Job.from_entity(storage.table(JOBS).get(job.tenant_id, job.id))
    assert closed.status == JobStatus.CANCELLED and closed.completed_at
    assert closed.counts["cancelled"] == closed.roster_size == 60
    assert storage.table(ACTIVE_JOBS).find("active", f"{job.tenant_id}|{job.id}") is None
    assert set(drain_task_queue(storage, host)) <= {TaskOutcome.ALREADY_DONE}
    assert simulator[0].messages() == []


def test_cancelling_a_final_job_is_a_state_conflict(storage, host):
    job = expanded_job(storage, host)
    cancel_job(storage, job.tenant_id, job.id)
    with pytest.raises(StateConflict):
        cancel_job(storage, job.tenant_id, job.id)


# -- HTTP ------------------------------------------------------------------------------------------


def test_pausing_or_cancelling_a_draft_campaign_is_409(client, tenant, campaign_body):
    campaign = client.post("/api/v1/campaigns", json=campaign_body(), headers=tenant.headers).json()
    for action in ("pause", "resume", "cancel"):
        answer = client.post(f"/api/v1/campaigns/{campaign['id']}/{action}", headers=tenant.headers)
        assert answer.status_code == 409, action
        assert answer.json()["error"]["code"] == "state_conflict"


def test_cancelling_a_scheduled_campaign_unschedules_it(client, storage, tenant, campaign_body):
    body = campaign_body(send_at="2030-01-01T00:00:00Z")
    campaign = client.post("/api/v1/campaigns", json=body, headers=tenant.headers).json()

    answer = client.post(f"/api/v1/campaigns/{campaign['id']}/cancel", headers=tenant.headers)

    assert answer.status_code == 200 and answer.json()["status"] == "cancelled"
    assert list(storage.table(SCHEDULE).partition("due")) == []


def test_support_keys_cannot_steer_and_get_403_before_any_state_check(client, tenant, support, campaign_body):
    campaign = client.post("/api/v1/campaigns", json=campaign_body(), headers=tenant.headers).json()
    assert client.post(f"/api/v1/campaigns/{campaign['id']}/pause", headers=support).status_code == 403
    assert client.post("/api/v1/jobs/nope/retry-failed", headers=support).status_code == 403


def test_another_tenants_campaign_and_job_are_404(client, tenant, new_tenant, campaign_body):
    other = new_tenant()
    campaign = client.post("/api/v1/campaigns", json=campaign_body(), headers=other.headers).json()
    cancel = client.post(f"/api/v1/campaigns/{campaign['id']}/cancel", headers=tenant.headers)
    assert cancel.status_code == 404
    assert client.post("/api/v1/jobs/01JUNKJUNKJUNK/retry-failed", headers=tenant.headers).status_code == 404
