"""Unknowns are reconciled: what an ``unknown`` recipient becomes once the provider's events spoke.

The managers run in-process (``tests.pipeline``) on the session's Azurite and send through the
real ``sendgrid`` client to the SendGrid simulator, which loses answers on purpose:
``accept_then_hang`` (accepted, then no answer: the provider will post events) and
``lose_then_hang`` (never accepted, no answer: no event will ever come). Provider events are
the simulator's own (``devhost/sendgrid_events.py``), applied as the events-queue would.
"""

from __future__ import annotations

import secrets
import threading
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta

import pytest

from api.routers.jobs import job_public
from core.clock import parse_iso, utcnow
from core.messages import TaskTicket
from core.models import TENANT_PARTITION, Job, Tenant
from core.reconciliation import marks_of_job
from core.retry import RetryPolicy
from core.settings import Settings
from core.status import DeliveryStatus, JobStatus, TaskStatus
from core.storage import JOBS, TASK_QUEUE, TASKS, TENANTS, Storage
from devhost.sendgrid_sim import SendGridSimulator
from devhost.stack import serve_in_thread, wait_for
from job_manager.control import cancel_job
from providers.sendgrid import SendGridProvider
from status_manager import close_finished_jobs
from task_manager import Dispatcher
from tests.integration.delivery_helpers import apply_events, delivery_rows, events_of
from tests.pipeline import InProcessHost, add_contacts, job_of, make_tenant, schedule_campaign

SG_KEY = "SG.reconcile"
WINDOW = 1.5  # seconds: RECONCILE_WINDOW_SECONDS in these tests


@pytest.fixture
def simulator() -> Iterator[tuple[SendGridSimulator, str]]:
    sim = SendGridSimulator(api_key=SG_KEY)
    with serve_in_thread(sim.app) as url:
        yield sim, url


def with_event_feed(settings: Settings, window: float = WINDOW) -> Settings:
    """A deployment whose SendGrid has a verified event webhook (the key itself is not used here)."""
    return settings.model_copy(update={
        "task_size": 10, "task_window": 2, "reconcile_window_seconds": window,
        "sendgrid_webhook_public_key": "configured",
    })


def host_for(storage: Storage, settings: Settings, url: str, batch: int = 0) -> InProcessHost:
    """A host sending one request per recipient (``batch`` 0: the faults here count requests, so
    ``accept_then_hang: 2`` is two recipients), or SendGrid batches of ``batch``."""
    provider = SendGridProvider(SG_KEY, url, timeout=0.5)
    host = InProcessHost(storage, settings.model_copy(update={"sendgrid_batch_size": batch}), provider)
    host.dispatcher = Dispatcher(provider, RetryPolicy(base_delay=0.02), 4)
    return host


def tenant_with(storage: Storage, semantics: str, n: int) -> tuple[Tenant, list[str]]:
    tenant = make_tenant(storage)
    if semantics:
        storage.table(TENANTS).update({"PartitionKey": TENANT_PARTITION, "RowKey": tenant.id,
                                       "delivery_semantics": semantics})
    emails = [f"r{i:02d}-{secrets.token_hex(3)}@example.com" for i in range(n)]
    add_contacts(storage, tenant, [{"email": e} for e in emails])
    return tenant, emails


def stored_job(storage: Storage, job: Job) -> Job:
    return Job.from_entity(storage.table(JOBS).get(job.tenant_id, job.id))


def tasks_all_done(storage: Storage, job: Job | None) -> bool:
    if job is None or not job.expanded:
        return False
    statuses = [t["status"] for t in storage.table(TASKS).partition(job.id, select=["status"])]
    return len(statuses) == job.tasks_total and all(s == TaskStatus.DONE for s in statuses)


def run_to_close(storage: Storage, host: InProcessHost, tenant: Tenant, timeout: float = 60) -> Job:
    campaign = schedule_campaign(storage, tenant)
    host.run_until(lambda: (j := job_of(storage, campaign)) is not None and JobStatus(j.status).is_final,
                   timeout)
    job = job_of(storage, campaign)
    assert job is not None
    return job


def run_tasks_without_a_pass(storage: Storage, host: InProcessHost, tenant: Tenant) -> Job:
    """Schedule a campaign and run its tasks to done with the Task Manager only (no Status Manager pass)."""
    campaign = schedule_campaign(storage, tenant)
    while not tasks_all_done(storage, job_of(storage, campaign)):  # the Task Manager only, no pass
        host.expand_round()
        for message in storage.queue(TASK_QUEUE).receive(32, visibility_timeout=60):
            host.send(TaskTicket.model_validate_json(message.content))
            storage.queue(TASK_QUEUE).delete(message)
    job = job_of(storage, campaign)
    assert job is not None
    return job


def sends_per_address(sim: SendGridSimulator) -> Counter[str]:
    return Counter(m["to"] for m in sim.messages())


def report(**resolved: int) -> dict[str, int]:
    return {"accepted_by_event": 0, "not_accepted": 0, "resent": 0, "no_event_feed": 0, "awaiting": 0,
            **resolved}


def test_an_unknown_the_provider_accepted_is_resolved_by_its_event_and_not_resent(
    storage, settings, simulator
):
    sim, url = simulator
    sim.set_faults({"accept_then_hang": 2, "hang_seconds": 1})
    fast = with_event_feed(settings, window=60)  # the events surely come inside it, however slow the run
    host = host_for(storage, fast, url)
    tenant, emails = tenant_with(storage, "reconcile", 10)
    campaign = schedule_campaign(storage, tenant)
    host.run_until(lambda: tasks_all_done(storage, job_of(storage, campaign)))
    host.run_round()
    job = job_of(storage, campaign)
    assert job is not None and job.status == JobStatus.SENDING  # held open for its unknowns' window
    assert job.counts[DeliveryStatus.UNKNOWN] == 2 and job.unknown_resolution == report(awaiting=2)

    apply_events(storage, fast, events_of(sim.messages()))
    after_window = utcnow() + timedelta(seconds=61)
    close_finished_jobs(storage, fast, clock=lambda: after_window)

    job = stored_job(storage, job)
    assert job.status == JobStatus.COMPLETED
    assert sends_per_address(sim) == Counter(dict.fromkeys(emails, 1))  # nobody resent
    resolved = [r for r in delivery_rows(storage, job.id) if r.get("resolution")]
    assert [(r["status"], r["resolution"]) for r in resolved] == [("delivered", "accepted_by_event")] * 2
    assert job.unknown_resolution == report(accepted_by_event=2)
    assert sum(job.counts.values()) == job.roster_size == 10


def test_a_reconcile_tenants_unaccepted_unknowns_are_resent_exactly_once_with_the_same_ids(
    storage, settings, simulator
):
    sim, url = simulator
    sim.set_faults({"lose_then_hang": 2, "hang_seconds": 1})
    fast = with_event_feed(settings)
    tenant, emails = tenant_with(storage, "reconcile", 12)

    job = run_to_close(storage, host_for(storage, fast, url), tenant)

    job = stored_job(storage, job)
    assert job.status == JobStatus.COMPLETED
    assert sends_per_address(sim) == Counter(dict.fromkeys(emails, 1))  # one accepted message each
    rows = delivery_rows(storage, job.id)
    resent = [r for r in rows if r.get("resolution") == "resent"]
    assert len(resent) == 2 and {r["status"] for r in rows} == {DeliveryStatus.SENT}
    for row in resent:
        [message] = sim.messages(to=row["email"])
        ids = message["custom_args"]
        assert (ids["job_id"], ids["contact_id"]) == (job.id, row["RowKey"])
        assert row["PartitionKey"] == f"{job.id}-{message['custom_args']['task_id']}"
    assert job.counts[DeliveryStatus.SENT] == 12 and sum(job.counts.values()) == job.roster_size == 12
    assert job.unknown_resolution == report(resent=2)
    assert job_public(job).unknown_resolution == report(resent=2)
    assert marks_of_job(storage, job.tenant_id, job.id) == []


def test_a_batched_jobs_accepted_but_unanswered_batch_is_resolved_by_its_events_and_not_resent(
    storage, settings, simulator
):
    sim, url = simulator
    sim.set_faults({"accept_then_hang": 1, "hang_seconds": 1})  # one request: the first task's batch of 10
    fast = with_event_feed(settings, window=60)
    host = host_for(storage, fast, url, batch=50)
    tenant, emails = tenant_with(storage, "reconcile", 20)
    campaign = schedule_campaign(storage, tenant)
    host.run_until(lambda: tasks_all_done(storage, job_of(storage, campaign)))
    host.run_round()
    job = job_of(storage, campaign)
    assert job is not None and job.send_mode == "batched" and job.status == JobStatus.SENDING
    assert job.counts[DeliveryStatus.UNKNOWN] == 10 and job.unknown_resolution == report(awaiting=10)

    apply_events(storage, fast, events_of(sim.messages()))
    after_window = utcnow() + timedelta(seconds=61)
    close_finished_jobs(storage, fast, clock=lambda: after_window)

    job = stored_job(storage, job)
    assert job.status == JobStatus.COMPLETED
    assert sends_per_address(sim) == Counter(dict.fromkeys(emails, 1))  # nobody resent
    assert job.unknown_resolution == report(accepted_by_event=10)
    assert sum(job.counts.values()) == job.roster_size == 20


def test_a_batched_reconcile_tenants_unaccepted_batch_is_resent_exactly_once_with_the_same_ids(
    storage, settings, simulator
):
    sim, url = simulator
    sim.set_faults({"lose_then_hang": 1, "hang_seconds": 1})  # one request: the first task's batch of 10
    fast = with_event_feed(settings)
    tenant, emails = tenant_with(storage, "reconcile", 20)

    job = run_to_close(storage, host_for(storage, fast, url, batch=50), tenant)

    job = stored_job(storage, job)
    assert job.status == JobStatus.COMPLETED and job.send_mode == "batched"
    assert sends_per_address(sim) == Counter(dict.fromkeys(emails, 1))  # one accepted message each
    rows = delivery_rows(storage, job.id)
    resent = [r for r in rows if r.get("resolution") == "resent"]
    assert len(resent) == 10 and {r["status"] for r in rows} == {DeliveryStatus.SENT}
    for row in resent:
        [message] = sim.messages(to=row["email"])
        ids = message["custom_args"]
        assert (ids["job_id"], ids["contact_id"]) == (job.id, row["RowKey"])
    assert job.unknown_resolution == report(resent=10)
    assert marks_of_job(storage, job.tenant_id, job.id) == []


def test_an_at_most_once_tenants_job_closes_at_once_with_its_unknowns_unknown_and_nobody_resent(
    storage, settings, simulator
):
    sim, url = simulator
    sim.set_faults({"lose_then_hang": 2, "hang_seconds": 1})
    slow_window = with_event_feed(settings, window=3600)  # an at-most-once job never waits for it
    tenant, emails = tenant_with(storage, "", 12)  # the deployment's default: at-most-once

    job = stored_job(storage, run_to_close(storage, host_for(storage, slow_window, url), tenant))

    assert job.status == JobStatus.COMPLETED
    assert sum(sends_per_address(sim).values()) == 10  # the two lost ones were never handed over again
    assert job.counts[DeliveryStatus.UNKNOWN] == 2 and sum(job.counts.values()) == job.roster_size == 12
    assert marks_of_job(storage, job.tenant_id, job.id, holding_only=True) == []
    assert job.unknown_resolution == report(awaiting=2)  # settled after the window, as a report


def test_an_at_most_once_tenants_unknowns_are_reported_not_accepted_after_the_close_with_its_counts_unchanged(
    storage, settings, simulator
):
    sim, url = simulator
    sim.set_faults({"lose_then_hang": 2, "hang_seconds": 1})
    fast = with_event_feed(settings)
    tenant, _ = tenant_with(storage, "", 12)
    job = stored_job(storage, run_to_close(storage, host_for(storage, fast, url), tenant))
    counts_at_close = dict(job.counts)
    due = max(parse_iso(m["due_at"]) for m in marks_of_job(storage, job.tenant_id, job.id))
    wait_for(lambda: utcnow() >= due, 10, "the reconciliation window")

    def reported() -> bool:
        close_finished_jobs(storage, fast)
        return stored_job(storage, job).unknown_resolution == report(not_accepted=2)

    wait_for(reported, 20, "the closed job's report of its not-accepted unknowns")

    after = stored_job(storage, job)
    assert after.status == JobStatus.COMPLETED and after.counts == counts_at_close
    assert sum(sends_per_address(sim).values()) == 10  # nobody sent again
    unknown = [r for r in delivery_rows(storage, job.id) if r["status"] == DeliveryStatus.UNKNOWN]
    assert [r["resolution"] for r in unknown] == ["not_accepted", "not_accepted"]
    assert marks_of_job(storage, job.tenant_id, job.id) == []


def test_a_cancelled_jobs_unknowns_are_reported_after_the_window_and_not_resent(storage, settings, simulator):
    sim, url = simulator
    sim.set_faults({"lose_then_hang": 2, "hang_seconds": 1})
    fast = with_event_feed(settings)
    host = host_for(storage, fast, url)
    tenant, _ = tenant_with(storage, "reconcile", 10)
    job = run_tasks_without_a_pass(storage, host, tenant)
    cancel_job(storage, job.tenant_id, job.id)  # before the window ends: nothing is resent

    def reported() -> bool:
        close_finished_jobs(storage, fast)
        return stored_job(storage, job).unknown_resolution == report(not_accepted=2)

    wait_for(reported, 20, "the cancelled job's report of its not-accepted unknowns")

    after = stored_job(storage, job)
    assert after.status == JobStatus.CANCELLED and after.completed_at
    assert after.counts[DeliveryStatus.UNKNOWN] == 2 and sum(after.counts.values()) == 10
    assert sum(sends_per_address(sim).values()) == 8
    assert marks_of_job(storage, job.tenant_id, job.id) == []


def test_a_late_event_for_the_first_attempt_still_matches_the_resent_row(storage, settings, simulator):
    sim, url = simulator
    sim.set_faults({"accept_then_hang": 1, "hang_seconds": 1})  # accepted, but its events come late
    fast = with_event_feed(settings)
    tenant, _ = tenant_with(storage, "reconcile", 6)
    job = run_to_close(storage, host_for(storage, fast, url), tenant)
    [twice] = [to for to, n in sends_per_address(sim).items() if n == 2]  # the price of reconcile
    first_attempt = sim.messages(to=twice)[0]

    events = apply_events(storage, fast, events_of([first_attempt]))

    assert events.orphans == 0 and events.applied >= 2
    [row] = [r for r in delivery_rows(storage, job.id) if r["email"] == twice]
    assert (row["status"], row["resolution"]) == (DeliveryStatus.DELIVERED, "resent")
    job = stored_job(storage, job)
    assert job.counts[DeliveryStatus.DELIVERED] == 1 and sum(job.counts.values()) == 6


def test_two_status_manager_passes_at_once_resend_nobody_twice(storage, settings, simulator):
    sim, url = simulator
    sim.set_faults({"lose_then_hang": 4, "hang_seconds": 1})
    fast = with_event_feed(settings)
    host = host_for(storage, fast, url)
    tenant, emails = tenant_with(storage, "reconcile", 10)
    job = run_tasks_without_a_pass(storage, host, tenant)
    due = max(parse_iso(m["due_at"]) for m in marks_of_job(storage, job.tenant_id, job.id))
    wait_for(lambda: utcnow() >= due, 10, "the reconciliation window")

    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def one_pass() -> None:
        start.wait()
        try:
            close_finished_jobs(storage, fast)
        except BaseException as err:  # noqa: BLE001 - reported by the assertion below
            errors.append(err)

    passes = [threading.Thread(target=one_pass) for _ in range(2)]
    for thread in passes:
        thread.start()
    for thread in passes:
        thread.join()
    host.run_until(lambda: JobStatus(stored_job(storage, job).status).is_final)

    assert errors == []
    assert sends_per_address(sim) == Counter(dict.fromkeys(emails, 1))
    job = stored_job(storage, job)
    assert job.status == JobStatus.COMPLETED and job.unknown_resolution == report(resent=4)
    assert job.counts[DeliveryStatus.SENT] == 10


def test_unknowns_without_an_event_feed_stay_unknown_reported_and_do_not_hold_the_job(
    storage, settings, simulator
):
    sim, url = simulator
    sim.set_faults({"accept_then_hang": 2, "hang_seconds": 1})
    no_feed = settings.model_copy(
        update={"task_size": 10, "task_window": 2, "reconcile_window_seconds": 3600})
    tenant, _ = tenant_with(storage, "reconcile", 8)

    job = stored_job(storage, run_to_close(storage, host_for(storage, no_feed, url), tenant))

    assert job.status == JobStatus.COMPLETED  # well before the hour-long window
    assert job.counts[DeliveryStatus.UNKNOWN] == 2 and sum(sends_per_address(sim).values()) == 8
    assert job.unknown_resolution == report(no_event_feed=2)
