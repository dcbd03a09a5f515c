"""Pause, resume, cancel and retry-failed on a job that is really running (host process, Azurite, simulator).

The simulator answers each send after 40 ms and tasks are 10 recipients with a window of 2, so a
few hundred recipients take long enough to act on mid-run. Every wait is a poll with a deadline.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from core.status import TaskStatus
from core.storage import TASK_QUEUE, TASKS, Storage
from devhost.stack import Stack, wait_for
from tests.e2e.conftest import TEMPLATE, TenantClient, new_tenant, people, stack_with_latency

# Few sends in flight at 40 ms each, so the job is still running when the test steers it.
SLOW = {"TASK_SIZE": "10", "TASK_WINDOW": "2", "TASK_LEASE_SECONDS": "6", "WINDOW_REFILL_AFTER_SECONDS": "10",
        "SEND_CONCURRENCY": "4"}
ROSTER = 600


@pytest.fixture(scope="module")
def slow_stack() -> Iterator[Stack]:
    with stack_with_latency(SLOW, 40) as running:
        yield running


def handed_over(counts: dict[str, int]) -> int:
    """Recipients the provider accepted: ``sent``, or already refined by its events."""
    return sum(counts[s] for s in ("sent", "delivered", "bounced", "dropped", "complained"))


def start_campaign(client: TenantClient, rows: list[dict[str, Any]]) -> tuple[str, str]:
    client.call("POST", "/contacts", json=rows)
    campaign = client.call("POST", "/campaigns", json={"name": "steered", "template": TEMPLATE})
    client.call("POST", f"/campaigns/{campaign['id']}/schedule", json={})
    job_id = wait_for(lambda: client.call("GET", f"/campaigns/{campaign['id']}").get("current_job_id"),
                      60, "the campaign's job")
    return campaign["id"], job_id


def wait_sending(client: TenantClient, job_id: str) -> dict[str, Any]:
    """Until some recipients are sent and many are not: the job is really running."""
    def running() -> dict[str, Any] | None:
        job = client.call("GET", f"/jobs/{job_id}")
        return job if handed_over(job["counts"]) > 0 and job["status"] == "sending" else None

    return wait_for(running, 90, "the job to be sending", 0.05)


def wait_closed(client: TenantClient, job_id: str, timeout: float = 180) -> dict[str, Any]:
    def closed() -> dict[str, Any] | None:
        job = client.call("GET", f"/jobs/{job_id}")
        return job if job["completed_at"] else None

    return wait_for(closed, timeout, f"job {job_id} to close", 0.2)


def quiet(storage: Storage, job_id: str) -> bool:
    """No task of the job is being sent and no task message is waiting or in a host's hands."""
    statuses = [e["status"] for e in storage.table(TASKS).partition(job_id, select=["status"])]
    return TaskStatus.SENDING not in statuses and storage.queue(TASK_QUEUE).depth() == 0


def sent_to(stack: Stack, emails: list[str]) -> Counter[str]:
    wanted = set(emails)
    return Counter(m["to"] for m in stack.simulator.messages() if m["to"] in wanted)


def test_pause_stops_a_running_job_and_resume_finishes_it_sending_each_recipient_once(slow_stack: Stack):
    client = new_tenant(slow_stack)
    rows = people(ROSTER)
    emails = [r["email"] for r in rows]
    campaign_id, job_id = start_campaign(client, rows)
    running = wait_sending(client, job_id)
    assert 0 < running["progress"] < 1 and running["eta"] is not None

    client.call("POST", f"/campaigns/{campaign_id}/pause")
    storage = Storage(slow_stack.azurite.connection_string)
    wait_for(lambda: quiet(storage, job_id), 60, "in-flight tasks to finish and the queue to drain")

    paused = client.call("GET", f"/jobs/{job_id}")
    sent_while_running = sum(sent_to(slow_stack, emails).values())
    assert paused["status"] == "paused" and paused["eta"] is None
    assert client.call("GET", f"/campaigns/{campaign_id}")["status"] == "paused"
    assert 0 < sent_while_running < ROSTER
    assert sum(paused["counts"].values()) == paused["roster_size"] == ROSTER

    client.call("POST", f"/campaigns/{campaign_id}/resume")
    done = wait_closed(client, job_id)

    assert done["status"] == "completed" and handed_over(done["counts"]) == ROSTER
    assert sum(done["counts"].values()) == ROSTER
    sent = sent_to(slow_stack, emails)
    assert set(sent) == set(emails) and set(sent.values()) == {1}
    campaign = client.call("GET", f"/campaigns/{campaign_id}")
    assert campaign["status"] == "completed"
    assert campaign["jobs"][-1]["time_to_send_seconds"] > 0


def test_cancel_ends_a_running_job_with_every_unsent_recipient_cancelled(slow_stack: Stack):
    client = new_tenant(slow_stack)
    rows = people(ROSTER)
    emails = [r["email"] for r in rows]
    campaign_id, job_id = start_campaign(client, rows)
    wait_sending(client, job_id)

    client.call("POST", f"/campaigns/{campaign_id}/cancel")
    done = wait_closed(client, job_id)

    counts = done["counts"]
    assert done["status"] == "cancelled"
    assert sum(counts.values()) == done["roster_size"] == ROSTER
    assert handed_over(counts) + counts["cancelled"] == ROSTER and counts["cancelled"] > 0
    sent = sent_to(slow_stack, emails)
    assert sum(sent.values()) == handed_over(counts) and set(sent.values()) <= {1}
    params = {"status": "cancelled", "limit": 1000}
    cancelled = client.call("GET", f"/jobs/{job_id}/deliveries", params=params)
    assert not {d["email"] for d in cancelled["items"]} & set(sent)
    campaign = client.call("GET", f"/campaigns/{campaign_id}")
    assert campaign["status"] == "cancelled" and sum(campaign["counts"].values()) == ROSTER
    assert campaign["counts"]["cancelled"] == counts["cancelled"]
    again = client.api.post(f"/campaigns/{campaign_id}/cancel", headers=client.headers)
    assert again.status_code == 409


def test_retry_failed_sends_a_new_job_to_exactly_the_recipients_that_failed(slow_stack: Stack):
    client = new_tenant(slow_stack)
    rows = people(120)
    rejected = [r["email"] for r in rows[::17]]
    slow_stack.simulator.set_faults({"fail_addresses": {email: 400 for email in rejected}})
    try:
        campaign_id, job_id = start_campaign(client, rows)
        wait_sending(client, job_id)
        early = client.api.post(f"/jobs/{job_id}/retry-failed", headers=client.headers)
        assert early.status_code == 409  # still running: its failures are not final yet
        first = wait_closed(client, job_id)
    finally:
        slow_stack.simulator.set_faults({"fail_addresses": {}})
    assert first["counts"]["failed"] == len(rejected)

    retry = client.api.post(f"/jobs/{job_id}/retry-failed", headers=client.headers)
    assert retry.status_code == 202
    again = client.api.post(f"/jobs/{job_id}/retry-failed", headers=client.headers)
    assert again.json()["id"] == retry.json()["id"]  # idempotent
    second = wait_closed(client, retry.json()["id"])

    assert second["status"] == "completed" and second["retry_of"] == job_id
    assert second["roster_size"] == len(rejected) and handed_over(second["counts"]) == len(rejected)
    assert sent_to(slow_stack, rejected) == Counter({email: 1 for email in rejected})
    jobs = client.call("GET", f"/campaigns/{campaign_id}/jobs")["items"]
    assert {j["id"] for j in jobs} == {job_id, retry.json()["id"]}
