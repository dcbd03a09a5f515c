"""Truth under faults: leases that live while sends do, fenced writes, and throttling that fails nobody.

The managers run in-process on the session's Azurite and send through the real ``sendgrid``
client to the SendGrid simulator, whose fault injection plays the slow, throttling or failing
provider. Leases, budgets and horizons are shortened through settings so each run takes seconds.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import pytest

from campaign_manager import start_due_campaigns
from core.clock import iso, utcnow
from core.in_flight import only_delivery_rows
from core.messages import JobTicket, TaskTicket
from core.models import Job, unpack_recipients
from core.retry import RetryPolicy
from core.settings import Settings
from core.status import DeliveryStatus, JobStatus
from core.storage import DELIVERIES, JOB_QUEUE, JOBS, TASKS, Storage
from core.suppressions import SuppressionCache, add_suppression
from devhost.sendgrid_sim import SendGridSimulator
from devhost.stack import wait_for
from job_manager.manager import ExpansionOutcome, claim_expansion, expand_roster
from providers.base import OutboundEmail, SendResult
from providers.sendgrid import SendGridProvider
from status_manager import close_finished_jobs
from task_manager import Dispatcher, JobCache, TaskOutcome, send_task
from task_manager.manager import send_group_size
from tests.pipeline import (
    DiesAfter,
    HostDies,
    InProcessHost,
    add_contacts,
    expanded_job,
    job_of,
    make_tenant,
    schedule_campaign,
)
from tests.sim_fixtures import running_sendgrid_simulator


@dataclass
class Sim:
    sendgrid: SendGridSimulator
    url: str


@pytest.fixture
def sim() -> Iterator[Sim]:
    with running_sendgrid_simulator() as (simulator, url):
        yield Sim(simulator, url)


def host(storage: Storage, settings: Settings, provider, owner: str, policy: RetryPolicy | None = None,
         concurrency: int = 8) -> InProcessHost:
    made = InProcessHost(storage, settings, provider, owner=owner)
    policy = policy or RetryPolicy(max_attempts=3, base_delay=0.01)
    made.dispatcher = Dispatcher(provider, policy, concurrency)
    return made


def rows_of(storage: Storage, job: Job) -> list[dict]:
    return list(storage.table(DELIVERIES).query(only_delivery_rows("PartitionKey eq @pk"),
                                                {"pk": f"{job.id}-000000"}))


def run_campaign(storage: Storage, runner: InProcessHost, n: int, timeout: float = 60) -> tuple[Job, list]:
    tenant = make_tenant(storage)
    add_contacts(storage, tenant, [{"email": f"s{i:04d}-{secrets.token_hex(2)}@x.org"} for i in range(n)])
    campaign = schedule_campaign(storage, tenant)
    runner.run_until(lambda: (j := job_of(storage, campaign)) is not None and JobStatus(j.status).is_final,
                     timeout)
    job = job_of(storage, campaign)
    rows = list(storage.table(DELIVERIES).query(
        only_delivery_rows("PartitionKey ge @lo and PartitionKey lt @hi"),
        {"lo": f"{job.id}-", "hi": f"{job.id}."},
    ))
    return job, rows


class GatedProvider:
    """The real SendGrid provider behind a gate: a host whose sends hang until the test lets go."""

    name = "sendgrid"

    def __init__(self, inner: SendGridProvider) -> None:
        self.inner = inner
        self.gate = threading.Event()
        self.waiting = 0
        self._lock = threading.Lock()

    def send(self, email: OutboundEmail) -> SendResult:
        with self._lock:
            self.waiting += 1
        self.gate.wait(60)
        return self.inner.send(email)

    def close(self) -> None:
        self.inner.close()


# -- leases that live while the sends do ----------------------------------------------------------


def test_a_provider_slower_than_the_lease_keeps_the_task_with_its_first_owner(storage, settings, sim):
    lease = 3
    short = settings.model_copy(update={"task_size": 4, "task_window": 1, "lease_seconds": lease})
    sim.sendgrid.set_faults({"latency_ms": int(lease * 1.5 * 1000)})
    first = host(storage, short, SendGridProvider("SG.test", sim.url, timeout=15), "host-a")
    second = host(storage, short, SendGridProvider("SG.test", sim.url, timeout=15), "host-b")
    job, ticket = expanded_job(storage, first, 4)
    outcome: list[object] = []
    finished: list[float] = []

    def send_as_first_owner() -> None:
        outcome.append(first.send(ticket))
        finished.append(time.monotonic())

    sending = threading.Thread(target=send_as_first_owner)
    sending.start()
    # Under way: the four go as one batched request (four per-recipient ones with SENDGRID_BATCH_SIZE=0).
    wait_for(lambda: sim.sendgrid.stats()["requests"] >= 1, 10, "the first owner's sends to be under way")
    started = time.monotonic()
    tries: list[tuple[float, float, object]] = []  # (tried at, answered at, outcome)
    while sending.is_alive():
        at = time.monotonic()
        answer = second.send(ticket)
        tries.append((at, time.monotonic(), answer))
        sending.join(0.25)

    assert outcome == [TaskOutcome.DONE]
    # Every claim answered while the first owner was still sending is refused; one racing its
    # finish may already find the task done, never take it over.
    assert {o for _, answered, o in tries if answered < finished[0]} == {TaskOutcome.BUSY}
    assert {o for *_, o in tries} <= {TaskOutcome.BUSY, TaskOutcome.ALREADY_DONE}
    last_try = max(at for at, *_ in tries) - started
    assert last_try > lease, "no claim was tried after the lease would have run out"
    assert Counter(r["status"] for r in rows_of(storage, job)) == {DeliveryStatus.SENT: 4}
    assert sorted(Counter(m["to"] for m in sim.sendgrid.messages()).values()) == [1, 1, 1, 1]


def test_a_long_scan_between_two_tasks_keeps_its_expansion_lease(storage, settings):
    lease = 3
    long_scan = settings.model_copy(update={"task_size": 500, "lease_seconds": lease,
                                            "job_time_budget_seconds": 10_000})
    tenant = make_tenant(storage)
    add_contacts(storage, tenant, [{"email": f"e{i:02d}@x.org", "attributes": {"i": i}} for i in range(30)])
    campaign = schedule_campaign(storage, tenant, {"field": "attributes.i", "op": "gte", "value": 29})
    start_due_campaigns(storage)
    ticket = JobTicket.model_validate_json(storage.queue(JOB_QUEUE).receive(1)[0].content)
    elapsed = [0]
    rivals: list[object] = []

    def clock():
        return utcnow() + timedelta(seconds=elapsed[0])

    def a_second_per_contact() -> float:
        # Each contact scanned (none matches until the last) costs a second, and meanwhile a
        # second host tries to take the expansion over.
        elapsed[0] += 1
        rivals.append(claim_expansion(storage, job_of(storage, campaign), long_scan, "host-b", clock))
        return float(elapsed[0])

    outcome = expand_roster(storage, ticket, long_scan, "host-a", clock, monotonic=a_second_per_contact)

    assert outcome == ExpansionOutcome.EXPANDED
    assert elapsed[0] > 3 * lease and rivals == [None] * len(rivals)
    assert job_of(storage, campaign).roster_size == 1


# -- unknown is only what was really in flight ------------------------------------------------------


def test_a_host_dying_mid_chunk_leaves_unknown_only_its_send_group_and_never_the_suppressed(
    storage, settings, sim
):
    group_size = 8
    small = settings.model_copy(update={"task_size": 200, "task_window": 1, "send_group_size": group_size})
    assert send_group_size(small) == group_size
    runner = host(storage, small, SendGridProvider("SG.test", sim.url), "host-b")
    job, ticket = expanded_job(storage, runner, 200)
    roster = [r.email for r in unpack_recipients(storage.table(TASKS).get(job.id, "000000"))]
    for address in roster[::10]:  # 20 suppressed, spread over the chunk
        add_suppression(storage, job.tenant_id, address)
    dying = Dispatcher(DiesAfter(SendGridProvider("SG.test", sim.url), 20), RetryPolicy(max_attempts=1), 1)
    at = [utcnow()]

    with pytest.raises(HostDies):
        send_task(storage, ticket, small, dying, SuppressionCache(storage), JobCache(), "host-a",
                  lambda: at[0])
    at[0] += timedelta(seconds=small.lease_seconds + 1)  # host A's lease runs out
    assert send_task(storage, ticket, small, runner.dispatcher, SuppressionCache(storage), JobCache(),
                     "host-b", lambda: at[0]) == TaskOutcome.DONE

    statuses = Counter(r["status"] for r in rows_of(storage, job))
    handed = Counter(m["to"] for m in sim.sendgrid.messages())
    assert statuses[DeliveryStatus.SUPPRESSED] == 20
    assert statuses[DeliveryStatus.UNKNOWN] == group_size  # A's marked group; 4 of it reached the provider
    assert statuses == {DeliveryStatus.SUPPRESSED: 20, DeliveryStatus.UNKNOWN: group_size,
                        DeliveryStatus.SENT: 200 - 20 - group_size}
    assert max(handed.values()) == 1 and sum(handed.values()) == 20 + (200 - 20 - 3 * group_size)


# -- fencing: a host that lost its task writes no non-terminal rows ---------------------------------


def lose_the_task_mid_chunk(storage: Storage, settings: Settings, sim: Sim, n: int
                            ) -> tuple[Job, TaskTicket, GatedProvider, threading.Thread, list[object]]:
    """Host A marks its first chunk in flight and hangs in the provider; its lease is then taken
    from it (as when its heartbeat could not reach storage) and host B claims and finishes the task."""
    gated = GatedProvider(SendGridProvider("SG.test", sim.url))
    # Tiny retry budget: a 503 leaves a recipient ``retrying`` after one request.
    policy = RetryPolicy(max_attempts=5, base_delay=0.05, budget_seconds=0.01)
    stale = host(storage, settings, gated, "host-a", policy)
    fresh = host(storage, settings, SendGridProvider("SG.test", sim.url), "host-b")
    job, ticket = expanded_job(storage, fresh, n)
    outcome: list[object] = []
    sending = threading.Thread(target=lambda: outcome.append(stale.send(ticket)))
    sending.start()
    wait_for(lambda: gated.waiting >= 8, 20, "host A's sends to hang in the provider")
    past = iso(utcnow() - timedelta(seconds=1))
    storage.table(TASKS).update({"PartitionKey": job.id, "RowKey": "000000", "lease_until": past})
    taken_at = time.monotonic()
    assert fresh.send(ticket) == TaskOutcome.DONE
    # A lease that really ran out was not renewed for a whole lease: let that much time pass
    # before A's sends come back (its heartbeat meanwhile finds the task row changed).
    wait_for(lambda: time.monotonic() - taken_at > settings.lease_seconds, 10, "a lease's length")
    return job, ticket, gated, sending, outcome


def test_an_owner_that_lost_its_task_leaves_no_retrying_rows_and_the_new_owners_rows_stand(
    storage, settings, sim
):
    short = settings.model_copy(update={"task_size": 210, "task_window": 1, "lease_seconds": 3,
                                        "retry_budget_seconds": 0.01})
    job, _, gated, sending, outcome = lose_the_task_mid_chunk(storage, short, sim, 210)
    columns = ["status", "counts", "lease_owner"]
    task_after_b = storage.table(TASKS).get(job.id, "000000", select=columns)

    sim.sendgrid.set_faults({"status": 503, "for_seconds": 60})  # A's sends now fail: it would say retrying
    gated.gate.set()
    sending.join(60)

    assert outcome == [TaskOutcome.LOST]
    statuses = Counter(r["status"] for r in rows_of(storage, job))
    group = send_group_size(short)  # only A's group in the provider's hands is unknown; B sent the rest
    assert statuses == {DeliveryStatus.UNKNOWN: group, DeliveryStatus.SENT: 210 - group}
    assert storage.table(TASKS).get(job.id, "000000", select=columns) == task_after_b


def test_a_stale_owners_accepted_sends_are_kept_as_sent_and_counted(storage, settings, sim):
    short = settings.model_copy(update={"task_size": 210, "task_window": 1, "lease_seconds": 3})
    job, _, gated, sending, outcome = lose_the_task_mid_chunk(storage, short, sim, 210)

    gated.gate.set()  # the provider accepts A's late sends: 202 is a fact worth keeping
    sending.join(60)
    close_finished_jobs(storage, short)  # a Status Manager pass: recounts, closes

    assert outcome == [TaskOutcome.LOST]
    assert Counter(r["status"] for r in rows_of(storage, job)) == {DeliveryStatus.SENT: 210}
    stored = Job.from_entity(storage.table(JOBS).get(job.tenant_id, job.id))
    assert stored.status == JobStatus.COMPLETED
    assert stored.counts[DeliveryStatus.SENT] == 210 and stored.counts[DeliveryStatus.UNKNOWN] == 0


# -- throttling is not failure ---------------------------------------------------------------------


def test_a_429_storm_longer_than_every_retry_budget_fails_nobody(storage, settings, sim):
    budget, attempts, storm = 0.5, 2, 4
    assert storm > budget * attempts
    fast = settings.model_copy(update={"task_size": 4, "task_window": 2, "retry_budget_seconds": budget})
    policy = RetryPolicy(max_attempts=attempts, base_delay=0.05, budget_seconds=budget)
    runner = host(storage, fast, SendGridProvider("SG.test", sim.url), "host", policy, concurrency=2)
    sim.sendgrid.set_faults({"status": 429, "for_seconds": storm, "retry_after": 1})

    job, rows = run_campaign(storage, runner, 8)

    assert job.status == JobStatus.COMPLETED
    assert Counter(r["status"] for r in rows) == {DeliveryStatus.SENT: 8}
    assert {int(r["attempts"]) for r in rows} == {1}  # the accepted call; the 429s were not attempts
    throttled = [e["at"] for e in sim.sendgrid.request_log() if e["status"] == 429]
    assert max(throttled) - min(throttled) > budget * attempts  # it outlasted every budget (batched or not)


def test_a_recipient_throttled_past_the_horizon_fails_with_the_reason_and_no_attempts_spent(
    storage, settings, sim
):
    fast = settings.model_copy(update={"task_size": 3, "retry_budget_seconds": 0.2,
                                       "throttle_horizon_seconds": 2})
    policy = RetryPolicy(max_attempts=5, base_delay=0.05, budget_seconds=0.2)
    runner = host(storage, fast, SendGridProvider("SG.test", sim.url), "host", policy, concurrency=3)
    sim.sendgrid.set_faults({"status": 429, "for_seconds": 600, "retry_after": 1})

    job, rows = run_campaign(storage, runner, 3)

    assert job.status == JobStatus.COMPLETED
    assert {r["status"] for r in rows} == {DeliveryStatus.FAILED}
    assert all("throttled by the provider for more than 2 s" in r["reason"] for r in rows)
    assert {int(r["attempts"]) for r in rows} == {0}
    assert sim.sendgrid.stats()["accepted"] == 0
