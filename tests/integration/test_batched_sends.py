"""Batched sends (issue 18): a job's send groups go to SendGrid as one request each
(personalizations), with every per-recipient guarantee of the one-by-one path.

The managers run in-process (``tests.pipeline``) on the session's Azurite and send through the
real ``sendgrid`` client to the SendGrid simulator over HTTP; the simulator's record of what it
accepted is the truth about who was handed over and how often.
"""

from __future__ import annotations

import secrets
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from core.job_state import load_job
from core.messages import TaskTicket
from core.models import Job
from core.retry import RetryPolicy
from core.settings import Settings
from core.status import JobStatus
from core.storage import TASKS, Storage
from core.suppressions import SuppressionCache
from devhost.sendgrid_sim import SendGridSimulator
from devhost.stack import serve_in_thread
from providers.sendgrid import SendGridProvider
from task_manager import Dispatcher, JobCache, TaskOutcome, send_task
from task_manager.batch_send import BATCHED, PER_RECIPIENT
from tests.integration.delivery_helpers import (
    apply_events,
    delivery_rows,
    events_of,
    people,
    statuses_by_email,
)
from tests.pipeline import InProcessHost, add_contacts, job_of, make_tenant, schedule_campaign

SG_KEY = "SG.batched"
LOGIC_TEMPLATE = {
    "subject": "Hello {{ contact.name }}",
    "html": "<p>{% if contact.name %}Hi {{ contact.name }}{% else %}Hello{% endif %}</p>",
    "text": "Hi",
    "from_email": "news@example.org",
}


@pytest.fixture
def sim() -> Iterator[tuple[SendGridSimulator, str]]:
    simulator = SendGridSimulator(api_key=SG_KEY)
    with serve_in_thread(simulator.app) as url:
        yield simulator, url


def batched_host(
    storage: Storage, settings: Settings, url: str, batch: int = 20, timeout: float = 5.0,
    policy: RetryPolicy | None = None, owner: str = "host", **overrides: Any,
) -> InProcessHost:
    sized = settings.model_copy(update={"task_size": 40, "task_window": 4, "sendgrid_batch_size": batch,
                                        **overrides})
    host = InProcessHost(storage, sized, SendGridProvider(SG_KEY, url, timeout=timeout), owner=owner)
    host.dispatcher = Dispatcher(host.provider, policy or RetryPolicy(max_attempts=3, base_delay=0.01), 4)
    return host


def run_job(storage: Storage, host: InProcessHost, contacts: list[dict[str, Any]],
            template: dict[str, Any] | None = None, timeout: float = 90) -> Job:
    tenant = make_tenant(storage)
    add_contacts(storage, tenant, contacts)
    campaign = schedule_campaign(storage, tenant, template=template)

    def closed() -> bool:
        job = job_of(storage, campaign)
        return job is not None and JobStatus(job.status).is_final

    host.run_until(closed, timeout)
    job = job_of(storage, campaign)
    assert job is not None
    return job


def recipients(n: int) -> list[dict[str, Any]]:
    tag = secrets.token_hex(3)
    return [{"email": f"r{i:03d}-{tag}@example.com", "name": f"R {i}"} for i in range(n)]


def handed_over(sim: SendGridSimulator) -> Counter[str]:
    return Counter(m["to"] for m in sim.messages())


def test_a_batched_job_sends_everyone_once_in_one_request_per_group_and_its_counts_add_up(
    storage, settings, sim
):
    host = batched_host(storage, settings, sim[1], batch=20)

    job = run_job(storage, host, recipients(100))

    assert job.status == JobStatus.COMPLETED and job.send_mode == BATCHED
    assert sim[0].stats()["requests"] == 5  # 100 recipients, 20 per request
    assert set(handed_over(sim[0]).values()) == {1} and len(handed_over(sim[0])) == 100
    assert job.counts["sent"] == job.roster_size == 100 == sum(job.counts.values())
    ids = [row["provider_message_id"] for row in delivery_rows(storage, job.id)]
    assert len(set(ids)) == 100 and len({i.rsplit(".", 1)[0] for i in ids}) == 5
    for message in sim[0].messages():  # each one's own values in the shared body
        name = message["to_name"]
        assert message["html"] == f"<p>Hi {name}</p>" and message["text"] == f"Hi {name}"
        assert message["subject"] == f"Hello {name}" and "List-Unsubscribe" in message["headers"]


def test_a_400_naming_two_addresses_fails_exactly_those_two_and_sends_the_rest_once(storage, settings, sim):
    contacts = recipients(30)
    bad = [contacts[3]["email"], contacts[17]["email"]]
    sim[0].set_faults({"fail_addresses": dict.fromkeys(bad, 400)})
    host = batched_host(storage, settings, sim[1], batch=30)

    job = run_job(storage, host, contacts)

    statuses = statuses_by_email(storage, job.id)
    assert sorted(e for e, (s, _) in statuses.items() if s == "failed") == sorted(bad)
    assert all("<address>" in statuses[e][1] or "rejected by provider" in statuses[e][1] for e in bad)
    sent = handed_over(sim[0])
    assert len(sent) == 28 and set(sent.values()) == {1} and not set(bad) & set(sent)
    assert job.counts["sent"] == 28 and job.counts["failed"] == 2


def test_a_429_storm_then_success_fails_nobody_and_spends_no_attempt(storage, settings, sim):
    sim[0].set_faults({"status": 429, "count": 4, "retry_after": 0})
    host = batched_host(storage, settings, sim[1], batch=20,
                        policy=RetryPolicy(max_attempts=2, base_delay=0.01, budget_seconds=5))

    job = run_job(storage, host, recipients(40))

    assert job.counts["sent"] == 40 and job.counts["failed"] == 0
    assert set(handed_over(sim[0]).values()) == {1}
    assert {row["attempts"] for row in delivery_rows(storage, job.id)} == {1}


def test_5xx_beyond_the_budget_retries_the_batch_and_fails_each_recipient_after_its_last_attempt(
    storage, settings, sim
):
    sim[0].set_faults({"status": 503, "for_seconds": 600})
    policy = RetryPolicy(max_attempts=3, base_delay=0.05, max_delay=0.1, budget_seconds=0.3)
    host = batched_host(storage, settings, sim[1], batch=10, retry_budget_seconds=0.3, policy=policy)

    job = run_job(storage, host, recipients(6))

    rows = delivery_rows(storage, job.id)
    assert {r["status"] for r in rows} == {"failed"} and {int(r["attempts"]) for r in rows} == {3}
    assert all("503" in r["reason"] for r in rows)
    assert sim[0].stats()["requests"] == 3  # one request per attempt for the whole batch


def test_a_timeout_after_accept_leaves_that_batch_unknown_and_never_resends_it(storage, settings, sim):
    sim[0].set_faults({"accept_then_hang": 1, "hang_seconds": 2})
    host = batched_host(storage, settings, sim[1], batch=10, timeout=0.5)

    job = run_job(storage, host, recipients(40))

    assert job.counts["unknown"] == 10 and job.counts["sent"] == 30
    assert max(handed_over(sim[0]).values()) == 1  # the hung batch was accepted and never sent again
    unknown = {r["email"] for r in delivery_rows(storage, job.id) if r["status"] == "unknown"}
    assert len(unknown) == 10


def test_duplicate_task_messages_on_two_hosts_send_nobody_twice(storage, settings, sim):
    sim[0].set_faults({"latency_ms": 100})
    a = batched_host(storage, settings, sim[1], batch=10, owner="host-a")
    b = batched_host(storage, settings, sim[1], batch=10, owner="host-b")
    tenant = make_tenant(storage)
    add_contacts(storage, tenant, recipients(40))
    campaign = schedule_campaign(storage, tenant)
    a.expand_round()
    job = job_of(storage, campaign)
    assert job is not None
    tickets = [TaskTicket(tenant_id=tenant.id, job_id=job.id, task_index=int(row["RowKey"]))
               for row in storage.table(TASKS).partition(job.id)]
    outcomes: list[object] = []

    def run(host: InProcessHost) -> None:
        for ticket in tickets:
            outcomes.append(send_task(storage, ticket, host.settings, host.dispatcher,
                                      SuppressionCache(storage), JobCache(), host.owner))

    threads = [threading.Thread(target=run, args=(h,)) for h in (a, b, a)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    a.run_until(lambda: load_job(storage, tenant.id, job.id).status == JobStatus.COMPLETED)

    assert set(handed_over(sim[0]).values()) == {1} and len(handed_over(sim[0])) == 40
    assert outcomes.count(TaskOutcome.DONE) == len(tickets)


def test_events_for_batched_recipients_land_on_their_own_rows_with_or_without_custom_args(
    storage, settings, sim
):
    host = batched_host(storage, settings, sim[1], batch=20)
    contacts = people("bounce-a", "ok-b", "ok-c", "bounce-d", "ok-e", "ok-f")
    job = run_job(storage, host, contacts)
    assert job.send_mode == BATCHED
    records = sim[0].messages()
    assert len({r["sg_message_id"].split(".")[0] for r in records}) == 1  # one request for all six

    events = events_of(records)
    first_half = [e for e in events if e["email"].startswith(("bounce-a", "ok-b", "ok-c"))]
    apply_events(storage, settings, first_half)
    # Events that lost their custom_args find the delivery through MessageIndex (<X-Message-Id>.<k>).
    for_index = [{k: v for k, v in e.items() if k not in ("tenant_id", "job_id", "task_id", "contact_id")}
                 for e in events if e not in first_half]
    apply_events(storage, settings, for_index)

    statuses = {email.split("-", 1)[0] + "-" + email.split("-", 2)[1]: s
                for email, (s, _) in statuses_by_email(storage, job.id).items()}
    assert statuses["bounce-a"] == statuses["bounce-d"] == "bounced"
    assert {statuses[k] for k in ("ok-b", "ok-c", "ok-e", "ok-f")} == {"delivered"}


def test_a_template_with_per_recipient_logic_goes_per_recipient_and_the_job_says_why(storage, settings, sim):
    host = batched_host(storage, settings, sim[1], batch=20)

    job = run_job(storage, host, recipients(12), template=LOGIC_TEMPLATE)

    assert job.send_mode == PER_RECIPIENT and "logic" in job.send_mode_reason
    assert sim[0].stats()["requests"] == 12 and job.counts["sent"] == 12


def test_a_batch_size_of_zero_sends_one_request_per_recipient(storage, settings, sim):
    host = batched_host(storage, settings, sim[1], batch=0)

    job = run_job(storage, host, recipients(12))

    assert job.send_mode == PER_RECIPIENT and "SENDGRID_BATCH_SIZE" in job.send_mode_reason
    assert sim[0].stats()["requests"] == 12 and job.counts["sent"] == 12


def test_a_batched_request_holds_at_most_one_send_group(storage, settings, sim):
    host = batched_host(storage, settings, sim[1], batch=50, send_group_size=10)

    job = run_job(storage, host, recipients(40))

    assert job.send_mode == BATCHED and job.counts["sent"] == 40
    assert sim[0].stats()["requests"] == 4  # SENDGRID_BATCH_SIZE 50 is cut to the group of 10
