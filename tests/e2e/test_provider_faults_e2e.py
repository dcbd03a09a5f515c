"""Providers that fail well, through real host processes: two hosts, Azurite, the SendGrid
simulator as primary and the ACS simulator as secondary (issue 4's "Done when" list).

One stack serves the module (starting one costs seconds); each test uses its own tenant and
resets the simulators' faults and the shared provider health first.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from core.messages import TaskTicket
from core.storage import PROVIDER_HEALTH, TASK_QUEUE, TASKS, Storage
from devhost.acs_sim import AcsSimulator
from devhost.stack import Stack, serve_in_thread, wait_for
from tests.e2e.conftest import TEMPLATE, TenantClient, new_tenant, people

ACS = AcsSimulator()
SETTINGS = {
    "TASK_SIZE": "20",
    "TASK_WINDOW": "4",
    "TASK_LEASE_SECONDS": "10",
    "WINDOW_REFILL_AFTER_SECONDS": "10",
    "EMAIL_PROVIDERS": "sendgrid,acs",
    "ACS_POLL_SECONDS": "0.05",
    "SEND_CONCURRENCY": "2",
    "PROVIDER_TIMEOUT_SECONDS": "1",
    "RETRY_BUDGET_SECONDS": "1.5",
    "MAX_SEND_ATTEMPTS": "8",
    "HEALTH_WINDOW_SECONDS": "10",
    "HEALTH_MIN_REQUESTS": "4",
    "HEALTH_FAILURE_RATIO": "0.5",
    "HEALTH_COOLDOWN_SECONDS": "2",
    "HEALTH_SYNC_SECONDS": "0.2",
}


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with serve_in_thread(ACS.app) as acs_url:
        settings = {**SETTINGS, "ACS_CONNECTION_STRING": ACS.connection_string(acs_url)}
        with Stack(workers=2, settings=settings) as running:
            # No event webhooks back: they would refine sent/unknown into delivered, and these
            # tests read the Task Manager's own outcomes.
            running.simulator.listeners.clear()
            yield running


@pytest.fixture
def client(stack: Stack) -> TenantClient:
    stack.simulator.reset()
    ACS.reset()
    storage = Storage(stack.azurite.connection_string)
    for provider in ("sendgrid", "acs"):
        storage.table(PROVIDER_HEALTH).delete(provider, "health")  # an operator's reset
    return new_tenant(stack)


# Recipient data in logic: the job goes per recipient (one request each) whatever SENDGRID_BATCH_SIZE says.
PER_RECIPIENT_TEMPLATE = {
    **TEMPLATE, "html": "<p>{% if contact.name %}Hello {{ contact.name }}{% endif %}</p>",
}


def run(client: TenantClient, n: int, template: dict[str, Any] | None = None
        ) -> tuple[dict[str, Any], list[dict[str, str]]]:
    rows = people(n)
    client.call("POST", "/contacts", json=rows)
    campaign = client.call("POST", "/campaigns", json={"name": "faults", "template": template or TEMPLATE})
    client.call("POST", f"/campaigns/{campaign['id']}/schedule", json={})
    return client.wait_job_done(campaign["id"], timeout=120), rows


def accepted(stack: Stack) -> Counter[str]:
    return Counter(m["to"] for m in stack.simulator.messages() + ACS.messages())


def deliveries(client: TenantClient, job_id: str) -> list[dict[str, Any]]:
    return client.call("GET", f"/jobs/{job_id}/deliveries", params={"limit": 1000})["items"]


def test_429_storm_on_the_primary_ends_all_sent_once_and_retry_after_is_waited_out(client, stack):
    stack.simulator.set_faults({"status": 429, "count": 8, "retry_after": 1})
    job, rows = run(client, 40)

    assert job["counts"]["sent"] == 40 == job["roster_size"]
    assert set(accepted(stack).values()) == {1}
    log = stack.simulator.request_log()
    throttled = [e["at"] for e in log if e["status"] == 429]
    first_sent = min(e["at"] for e in log if e["status"] == 202)
    assert len(throttled) == 8
    # Four senders (two hosts × two) share eight 429s: someone met two, and waited Retry-After between.
    assert first_sent - min(throttled) >= 1.0


def test_503_on_the_primary_fails_over_then_one_probe_brings_it_back(client, stack):
    started = time.monotonic()
    stack.simulator.set_faults({"status": 503, "for_seconds": 600})
    job, _ = run(client, 60)
    first_503 = min(e["at"] for e in stack.simulator.request_log() if e["status"] == 503)
    first_acs = min(e["at"] for e in ACS.request_log() if e["status"] == 202)

    assert job["counts"]["sent"] == 60
    rows = deliveries(client, job["id"])
    assert Counter(r["provider"] for r in rows) == {"acs": 60}
    assert set(accepted(stack).values()) == {1}

    stack.simulator.clear_faults()
    recovered = time.monotonic()
    second = new_tenant(stack)
    job2, _ = run(second, 60)
    back = [e["at"] for e in stack.simulator.request_log() if e["status"] == 202]

    by_provider = Counter(r["provider"] for r in deliveries(second, job2["id"]))
    assert sum(by_provider.values()) == 60 and by_provider["sendgrid"] >= 1
    assert sum(accepted(stack).values()) == 120 and set(accepted(stack).values()) == {1}
    print(f"\nfailover: first ACS send {first_acs - first_503:.2f}s after the first 503 "
          f"(test started {first_503 - started:.2f}s before it); "
          f"recovery: first SendGrid send {min(back) - recovered:.2f}s after the primary recovered")


def test_timeout_after_accept_k_times_gives_k_unknown_none_resent(client, stack):
    k = 3
    stack.simulator.set_faults({"accept_then_hang": k, "hang_seconds": 3})
    job, _ = run(client, 30, PER_RECIPIENT_TEMPLATE)

    assert job["send_mode"] == "per-recipient"
    assert job["counts"]["unknown"] == k and job["counts"]["sent"] == 30 - k
    assert set(accepted(stack).values()) == {1} and sum(accepted(stack).values()) == 30
    hung = [e for e in stack.simulator.request_log() if e["status"] == "hang"]
    assert len(hung) == k and len(stack.simulator.request_log()) + len(ACS.request_log()) == 30


def test_timeout_after_accept_of_a_batch_leaves_that_batch_unknown_none_resent(client, stack):
    stack.simulator.set_faults({"accept_then_hang": 1, "hang_seconds": 3})
    job, _ = run(client, 30)  # two tasks (20 + 10): one batched request each

    assert job["send_mode"] == "batched"
    assert job["counts"]["unknown"] in (10, 20) and job["counts"]["sent"] == 30 - job["counts"]["unknown"]
    assert set(accepted(stack).values()) == {1} and sum(accepted(stack).values()) == 30
    log = stack.simulator.request_log()
    assert [e["status"] for e in log].count("hang") == 1 and len(log) + len(ACS.request_log()) == 2


def test_401_from_the_provider_pauses_the_job_with_the_reason_and_fails_nobody(client, stack):
    stack.simulator.set_faults({"status": 401, "for_seconds": 600})
    client.call("POST", "/contacts", json=people(30))
    campaign = client.call("POST", "/campaigns", json={"name": "401", "template": TEMPLATE})
    client.call("POST", f"/campaigns/{campaign['id']}/schedule", json={})

    def paused() -> dict[str, Any] | None:
        job_id = client.call("GET", f"/campaigns/{campaign['id']}").get("current_job_id")
        job = client.call("GET", f"/jobs/{job_id}") if job_id else None
        return job if job and job["status"] == "paused" else None

    job = wait_for(paused, 60, "the job to pause")
    assert "refused" in job["failure_reason"] and "authorization grant is invalid" in job["failure_reason"]
    assert job["counts"]["failed"] == 0
    assert sum(accepted(stack).values()) == 0


def test_400_for_two_addresses_fails_those_two_with_the_providers_message(client, stack):
    rows = people(25)
    bad = [rows[4]["email"], rows[17]["email"]]
    stack.simulator.set_faults({"fail_addresses": {bad[0]: 400, bad[1]: 400}})
    client.call("POST", "/contacts", json=rows)
    campaign = client.call("POST", "/campaigns", json={"name": "400", "template": TEMPLATE})
    client.call("POST", f"/campaigns/{campaign['id']}/schedule", json={})
    job = client.wait_job_done(campaign["id"], timeout=120)

    failed = {r["email"]: r["reason"] for r in deliveries(client, job["id"]) if r["status"] == "failed"}
    assert set(failed) == set(bad)
    assert all("Does not contain a valid address" in reason for reason in failed.values())
    assert job["counts"]["sent"] == 23


def test_each_task_message_three_times_on_two_hosts_hands_each_recipient_over_once(client, stack):
    stack.simulator.set_faults({"latency_ms": 30})
    storage = Storage(stack.azurite.connection_string)
    client.call("POST", "/contacts", json=people(80))
    campaign = client.call("POST", "/campaigns", json={"name": "dupes", "template": TEMPLATE})
    client.call("POST", f"/campaigns/{campaign['id']}/schedule", json={})
    job_id = wait_for(lambda: client.call("GET", f"/campaigns/{campaign['id']}").get("current_job_id"), 30,
                      "the job")
    tasks = wait_for(lambda: len(list(storage.table(TASKS).partition(job_id, select=["RowKey"]))) == 4, 60,
                     "the roster to be split into tasks")
    assert tasks
    for index in range(4):
        ticket = TaskTicket(tenant_id=client.tenant_id, job_id=job_id, task_index=index).to_text()
        for _ in range(2):
            storage.queue(TASK_QUEUE).send(ticket)
    job = client.wait_job_done(campaign["id"], timeout=120)

    assert job["counts"]["sent"] == 80
    assert set(accepted(stack).values()) == {1} and sum(accepted(stack).values()) == 80


def test_post_emails_twice_with_one_idempotency_key_is_one_id_and_one_send(client, stack):
    body = {"to": ["once@example.com"], "from_email": "app@example.org", "subject": "Receipt",
            "text": "Thanks", "idempotency_key": "order-1"}
    first = client.call("POST", "/emails", json=body)["id"]
    second = client.call("POST", "/emails", json=body)["id"]
    shown = wait_for(lambda: (e := client.call("GET", f"/emails/{first}"))["status"] == "completed" and e,
                     60, "the email to be sent")

    assert first == second
    assert [r["status"] for r in shown["recipients"]] == ["sent"]
    assert accepted(stack)["once@example.com"] == 1 and sum(accepted(stack).values()) == 1
