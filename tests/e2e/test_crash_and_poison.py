"""Crashes and bad messages: nobody lost, nobody sent twice, and the job says why."""

from __future__ import annotations

import json
import time
from collections import Counter

from core.in_flight import is_in_flight_row, listed_in_flight
from core.storage import DELIVERIES, JOB_QUEUE, TASK_QUEUE, TASKS, Storage
from devhost.stack import Stack, wait_for
from tests.e2e.conftest import FAST, TEMPLATE, new_tenant, people


def test_a_host_killed_mid_send_and_restarted_loses_nobody_and_sends_nobody_twice():
    with Stack(workers=1, settings=FAST) as stack:
        client = new_tenant(stack)
        client.call("POST", "/contacts", json=people(1000))
        stack.simulator.set_faults({"latency_ms": 40})
        campaign = client.call("POST", "/campaigns", json={"name": "crash", "template": TEMPLATE})
        client.call("POST", f"/campaigns/{campaign['id']}/schedule", json={})

        wait_for(lambda: len(stack.simulator.messages()) >= 150, 120, "sending to be under way")
        stack.kill_worker(0)
        accepted_at_crash = len(stack.simulator.messages())
        stack.start_worker(0)
        stack.wait_healthy()
        job = client.wait_job_done(campaign["id"])

        counts = job["counts"]
        assert job["status"] == "completed"
        assert sum(counts.values()) == job["roster_size"] == 1000
        assert counts["sent"] + counts["unknown"] == 1000
        assert counts["unknown"] <= 4 * 100  # at most the chunks in flight at the crash
        sent = Counter(m["to"] for m in stack.simulator.messages())
        assert set(sent.values()) == {1}, "a recipient was handed to the provider twice"
        assert accepted_at_crash < 1000


def test_a_killed_hosts_task_resumes_on_another_host_within_30_seconds_with_the_default_lease():
    # No TASK_LEASE_SECONDS: the default lease (15 s; the takeover adds at most one Status Manager
    # tick and one queue poll). Slow sends, so a chunk is in flight, past its lease, when the host dies.
    slow_chunks = {"TASK_SIZE": "200", "TASK_WINDOW": "2", "SEND_CONCURRENCY": "8"}
    with Stack(workers=2, settings=slow_chunks) as stack:
        client = new_tenant(stack)
        client.call("POST", "/contacts", json=people(1000))
        stack.simulator.set_faults({"latency_ms": 1500})
        campaign = client.call("POST", "/campaigns", json={"name": "takeover", "template": TEMPLATE})
        client.call("POST", f"/campaigns/{campaign['id']}/schedule", json={})
        storage = Storage(stack.azurite.connection_string)
        job_id = wait_for(lambda: client.call("GET", f"/campaigns/{campaign['id']}").get("current_job_id"),
                          60, "the job")

        def marked_sending(task: str) -> int:
            rows = storage.table(DELIVERIES).partition(f"{job_id}-{task}", select=["RowKey", "in_flight"])
            return sum(len(listed_in_flight(row)) for row in rows if is_in_flight_row(row))

        def task_in_flight() -> dict | None:
            row = storage.table(TASKS).find(job_id, "000000")
            return row if row and row.get("status") == "sending" and marked_sending("000000") else None

        owner = wait_for(task_in_flight, 90, "task 0's first send group in flight")["lease_owner"]
        victim = next(i for i, p in stack.processes.items() if owner.split("-")[-2] == str(p.pid))
        stack.kill_worker(victim)
        killed_at = time.monotonic()
        in_flight_at_kill = sum(marked_sending(t["RowKey"])
                                for t in storage.table(TASKS).partition(job_id) if t["lease_owner"] == owner)
        if victim == 0:  # worker 0 serves HTTP and runs the timers: a restarted host is another owner
            stack.start_worker(0)
        wait_for(lambda: storage.table(TASKS).get(job_id, "000000")["lease_owner"] != owner, 60,
                 "another host to take task 0 over")
        taken_over_after = time.monotonic() - killed_at
        print(f"task 0 taken over {taken_over_after:.1f} s after its host was killed")
        stack.simulator.set_faults({"latency_ms": 0})
        if victim == 0:
            stack.wait_healthy()
        job = client.wait_job_done(campaign["id"])

        assert taken_over_after <= 30, f"took {taken_over_after:.1f} s"
        counts = job["counts"]
        assert job["status"] == "completed" and sum(counts.values()) == job["roster_size"] == 1000
        assert counts["sent"] + counts["unknown"] == 1000
        assert counts["unknown"] <= in_flight_at_kill < 1000
        assert max(Counter(m["to"] for m in stack.simulator.messages()).values()) == 1


def test_malformed_messages_land_in_poison_and_the_named_job_shows_why(stack: Stack):
    client = new_tenant(stack)
    client.call("POST", "/contacts", json=people(5))
    campaign = client.call("POST", "/campaigns", json={"name": "poison", "template": TEMPLATE})
    client.call("POST", f"/campaigns/{campaign['id']}/schedule", json={})
    job = client.wait_job_done(campaign["id"])
    storage = Storage(stack.azurite.connection_string)

    storage.queue(JOB_QUEUE).send("this is not json")
    storage.queue(TASK_QUEUE).send(
        json.dumps({"tenant_id": client.tenant_id, "job_id": job["id"], "task_index": "not a number"})
    )

    def poisoned(name: str) -> list[str]:
        return storage.poison(name).peek()

    assert wait_for(lambda: poisoned(JOB_QUEUE), 60, "job-queue-poison") == ["this is not json"]
    assert "not a number" in wait_for(lambda: poisoned(TASK_QUEUE), 60, "task-queue-poison")[0]
    shown = client.call("GET", f"/jobs/{job['id']}")
    assert "task_index" in shown["last_error"]
