"""Truth under faults through real host processes (issue 14): kills, a slow provider, a 429 storm.

Each run ends with ``assert_every_recipient_accounted_for``: lost 0 and duplicated 0 (the
SendGrid simulator's accepted messages against the roster), no non-terminal row in the closed
job, counts that add up to ``roster_size``, and ``unknown`` no more than what was outstanding.
The other fault runs live beside their features: one host killed mid-send and restarted, and a
killed host's task taken over within 30 s (``test_crash_and_poison.py``); timeout-after-accept,
a short 429 burst, 503 failover and duplicate task messages (``test_provider_faults_e2e.py``).
Rosters are small and faults short so each run takes well under a minute on a quiet machine.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import pytest

from core.models import unpack_recipients
from core.storage import JOBS, TASK_QUEUE, TASKS, Storage
from devhost.stack import Stack, wait_for
from tests.e2e.accounting import assert_every_recipient_accounted_for, delivery_rows, recipients_in_flight
from tests.e2e.conftest import FAST, TEMPLATE, TenantClient, new_tenant, people


def start_campaign(client: TenantClient, roster: list[dict[str, Any]], name: str) -> str:
    client.call("POST", "/contacts", json=roster)
    campaign = client.call("POST", "/campaigns", json={"name": name, "template": TEMPLATE})
    client.call("POST", f"/campaigns/{campaign['id']}/schedule", json={})
    return str(campaign["id"])


def job_id_of(client: TenantClient, campaign_id: str) -> str:
    return str(wait_for(lambda: client.call("GET", f"/campaigns/{campaign_id}").get("current_job_id"), 60,
                        "the campaign's job"))


def accepted(stack: Stack) -> Counter[str]:
    return Counter(m["to"] for m in stack.simulator.messages())


def tasks_claimed_by(storage: Storage, job_id: str, pid: int) -> list[dict[str, Any]]:
    """Task rows host process ``pid`` holds now (owners are ``{hostname}-{pid}-{nonce}``)."""
    return [t for t in storage.table(TASKS).partition(job_id, select=["RowKey", "status", "lease_owner"])
            if t["status"] == "sending" and (t.get("lease_owner") or "").split("-")[-2:-1] == [str(pid)]]


def test_both_hosts_killed_mid_send_and_one_restarted_loses_nobody_and_sends_nobody_twice():
    with Stack(workers=2, settings=FAST) as stack:
        client = new_tenant(stack)
        roster = people(600)
        stack.simulator.set_faults({"latency_ms": 60})
        campaign_id = start_campaign(client, roster, "both killed")
        storage = Storage(stack.azurite.connection_string)
        job_id = job_id_of(client, campaign_id)

        wait_for(lambda: len(stack.simulator.messages()) >= 100, 120, "sending to be under way")
        stack.kill_worker(1)
        stack.kill_worker(0)
        outstanding = recipients_in_flight(storage, job_id)  # frozen: nobody is left to change them
        accepted_at_kill = sum(accepted(stack).values())
        stack.simulator.set_faults({"latency_ms": 0})
        stack.processes.pop(1)  # stays dead: the stack's health check asks only about live hosts
        stack.start_worker(0)
        stack.wait_healthy()
        job = client.wait_job_done(campaign_id, timeout=180)

        assert accepted_at_kill < 600
        statuses = assert_every_recipient_accounted_for(
            storage, job, [p["email"] for p in roster], accepted(stack), unknown_at_most=outstanding
        )
        assert statuses["sent"] + statuses["unknown"] == 600


def test_a_killed_host_running_eight_tasks_leaves_at_most_twice_send_concurrency_unknown():
    # Eight task messages on one host (host.json's batchSize), each task with groups of 4: without
    # a host-wide bound all eight claim and mark (32 rows said ``sending`` at the kill before the
    # bound was built); with it at most 2 × 4 threads' worth are marked, the rest wait unclaimed.
    many_tasks = {**FAST, "TASK_SIZE": "40", "TASK_WINDOW": "8", "SEND_CONCURRENCY": "4",
                  "SEND_GROUP_SIZE": "4"}
    with Stack(workers=1, settings=many_tasks) as stack:
        client = new_tenant(stack)
        roster = people(400)
        stack.simulator.set_faults({"latency_ms": 300})
        campaign_id = start_campaign(client, roster, "many tasks killed")
        storage = Storage(stack.azurite.connection_string)
        job_id = job_id_of(client, campaign_id)
        pid = stack.processes[0].pid

        def eight_tickets_in_hand() -> bool:
            written = len(list(storage.table(TASKS).partition(job_id, select=["RowKey"])))
            return (written >= 8 and not storage.queue(TASK_QUEUE).peek()
                    and bool(tasks_claimed_by(storage, job_id, pid)) and bool(stack.simulator.messages()))

        wait_for(eight_tickets_in_hand, 120, "the host to hold eight task messages, sends under way")
        stack.kill_worker(0)
        tasks_at_kill = len(list(storage.table(TASKS).partition(job_id, select=["RowKey"])))
        outstanding = recipients_in_flight(storage, job_id)  # frozen: exactly what recovery makes unknown
        stack.simulator.set_faults({"latency_ms": 0})
        stack.start_worker(0)
        stack.wait_healthy()
        job = client.wait_job_done(campaign_id, timeout=180)

        assert tasks_at_kill >= 8
        assert outstanding <= 2 * 4, f"{outstanding} rows said sending with eight task messages on the host"
        assert_every_recipient_accounted_for(
            storage, job, [p["email"] for p in roster], accepted(stack), unknown_at_most=outstanding
        )


def test_a_host_killed_mid_expansion_resumes_it_and_every_contact_is_in_exactly_one_task():
    with Stack(workers=1, settings={**FAST, "TASK_SIZE": "10"}) as stack:
        client = new_tenant(stack)
        roster = people(2500)
        storage = Storage(stack.azurite.connection_string)
        campaign_id = start_campaign(client, roster, "expansion killed")

        def expanding() -> dict[str, Any] | None:
            jobs = storage.table(JOBS).partition(client.tenant_id)
            return next((j for j in jobs if j.get("status") == "expanding" and not j.get("expanded")
                         and 0 < int(j.get("tasks_total") or 0) < 250), None)

        caught = wait_for(expanding, 120, "the roster's expansion to be half done", interval=0.01)
        stack.kill_worker(0)
        job_id = caught["RowKey"]
        at_kill = storage.table(JOBS).get(client.tenant_id, job_id)
        outstanding = recipients_in_flight(storage, job_id)
        stack.start_worker(0)
        stack.wait_healthy()
        job = client.wait_job_done(campaign_id, timeout=240)

        assert not at_kill.get("expanded") and int(at_kill["tasks_total"]) < 250
        tasks = list(storage.table(TASKS).partition(job_id, select=None))
        in_tasks = Counter(r.contact_id for t in tasks for r in unpack_recipients(t))
        assert len(tasks) == job["tasks_total"] == 250
        assert len(in_tasks) == 2500 and set(in_tasks.values()) == {1}, "a contact is in two tasks"
        assert len({r["RowKey"] for r in delivery_rows(storage, job_id)}) == 2500
        assert_every_recipient_accounted_for(
            storage, job, [p["email"] for p in roster], accepted(stack), unknown_at_most=outstanding
        )


@pytest.mark.parametrize("batch", ["0", "2"], ids=["per-recipient", "batched"])
def test_a_provider_taking_5_seconds_per_call_keeps_each_task_with_its_one_owner_at_the_default_lease(
    batch: str,
):
    # The default lease (15 s): each task's 8 recipients take 4 × 5 s, longer than the lease, as 8
    # sends on 2 threads (per recipient) or as 4 batched requests of 2, one send group at a time.
    slow = {"TASK_SIZE": "8", "TASK_WINDOW": "2", "SEND_CONCURRENCY": "2", "SENDGRID_BATCH_SIZE": batch}
    with Stack(workers=2, settings=slow) as stack:
        client = new_tenant(stack)
        roster = people(16)
        stack.simulator.set_faults({"latency_ms": 5000})
        campaign_id = start_campaign(client, roster, "slow provider")
        job = client.wait_job_done(campaign_id, timeout=120)
        storage = Storage(stack.azurite.connection_string)

        tasks = list(storage.table(TASKS).partition(job["id"], select=["RowKey", "attempt"]))
        arrivals = sorted(e["at"] for e in stack.simulator.request_log())
        assert arrivals[-1] - arrivals[0] >= 15, "the sends did not outlast a lease"
        assert {int(t["attempt"]) for t in tasks} == {1}, "a task was claimed twice: its lease was taken over"
        statuses = assert_every_recipient_accounted_for(
            storage, job, [p["email"] for p in roster], accepted(stack), unknown_at_most=0
        )
        assert statuses == {"sent": 16}


def test_a_30_second_429_storm_fails_nobody_and_spends_no_attempts():
    # Retry budget × attempts (5 s × 2) is a third of the storm: every recipient is re-queued as
    # throttled at least once, and only the final accepted call is an attempt.
    short_budget = {"TASK_SIZE": "10", "SEND_CONCURRENCY": "2", "RETRY_BUDGET_SECONDS": "5",
                    "MAX_SEND_ATTEMPTS": "2"}
    with Stack(workers=1, settings=short_budget) as stack:
        client = new_tenant(stack)
        roster = people(20)
        stack.simulator.set_faults({"status": 429, "for_seconds": 30, "retry_after": 1})
        storm_began = time.monotonic()
        campaign_id = start_campaign(client, roster, "429 storm")
        job = client.wait_job_done(campaign_id, timeout=150)
        storage = Storage(stack.azurite.connection_string)

        log = stack.simulator.request_log()
        throttled = [e["at"] for e in log if e["status"] == 429]
        assert max(throttled) - storm_began >= 25, "the storm was over before the sends met most of it"
        statuses = assert_every_recipient_accounted_for(
            storage, job, [p["email"] for p in roster], accepted(stack), unknown_at_most=0
        )
        assert statuses == {"sent": 20}
        assert {int(r["attempts"]) for r in delivery_rows(storage, job["id"])} == {1}
