"""Crashes and bad messages: nobody lost, nobody sent twice, and the job says why."""

from __future__ import annotations

import json
from collections import Counter

from core.storage import JOB_QUEUE, TASK_QUEUE, Storage
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
