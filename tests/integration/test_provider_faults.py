"""Providers that fail well: the issue's "Done when" list, each against the real simulators.

The managers run in-process (``tests.pipeline``) on the session's Azurite, sending through
the real ``sendgrid`` and ``azure-communication-email`` clients to the simulators over HTTP.
Policies and windows are shortened through settings so each run takes seconds.
"""

from __future__ import annotations

import secrets
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from core.in_flight import only_delivery_rows
from core.messages import TaskTicket
from core.models import TENANT_PARTITION, Job
from core.retry import RetryPolicy
from core.settings import Settings
from core.status import DeliveryStatus, JobStatus
from core.storage import DELIVERIES, JOBS, TASKS, TENANTS, Storage
from devhost.acs_sim import AcsSimulator
from devhost.sendgrid_sim import SendGridSimulator
from devhost.stack import serve_in_thread, wait_for
from providers.acs import AcsProvider
from providers.failover import FailoverSender
from providers.health import BreakerConfig, BreakerState, HealthBoard
from providers.rate_limits import RateLimiter
from providers.sendgrid import SendGridProvider
from task_manager import Dispatcher, TaskOutcome
from task_manager.manager import CHUNK
from tests.pipeline import InProcessHost, add_contacts, job_of, make_tenant, schedule_campaign

SG_KEY = "SG.faults"


@dataclass
class Sims:
    sendgrid: SendGridSimulator
    sendgrid_url: str
    acs: AcsSimulator
    acs_url: str


@pytest.fixture
def sims() -> Iterator[Sims]:
    sendgrid, acs = SendGridSimulator(api_key=SG_KEY), AcsSimulator()
    with serve_in_thread(sendgrid.app) as sg_url, serve_in_thread(acs.app) as acs_url:
        yield Sims(sendgrid, sg_url, acs, acs_url)


def sender_for(
    storage: Storage, sims: Sims, order: tuple[str, ...] = ("sendgrid",),
    breaker: BreakerConfig | None = None, timeout: float = 5.0, sg_key: str = SG_KEY,
) -> FailoverSender:
    providers = {
        "sendgrid": SendGridProvider(sg_key, sims.sendgrid_url, timeout=timeout),
        "acs": AcsProvider(sims.acs.connection_string(sims.acs_url), timeout=timeout, poll_seconds=0.05),
    }
    health = HealthBoard(storage, breaker or BreakerConfig(), owner=f"host-{secrets.token_hex(2)}")
    return FailoverSender(providers, order, health=health, limiter=RateLimiter(storage))


def host_with(
    storage: Storage, settings: Settings, sender: FailoverSender, policy: RetryPolicy, concurrency: int = 4,
    owner: str = "host",
) -> InProcessHost:
    host = InProcessHost(storage, settings, sender, owner=owner)
    host.dispatcher = Dispatcher(sender, policy, concurrency, limiter=sender.limiter)
    return host


def run_campaign(
    storage: Storage, host: InProcessHost, n: int, timeout: float = 90
) -> tuple[Job, list[dict]]:
    tenant = make_tenant(storage)
    emails = [f"r{i:04d}-{secrets.token_hex(2)}@example.com" for i in range(n)]
    add_contacts(storage, tenant, [{"email": e, "name": f"R {i}"} for i, e in enumerate(emails)])
    campaign = schedule_campaign(storage, tenant)

    def closed() -> bool:
        job = job_of(storage, campaign)
        return job is not None and JobStatus(job.status).is_final

    host.run_until(closed, timeout)
    job = job_of(storage, campaign)
    assert job is not None
    return job, deliveries_of(storage, job.id)


def deliveries_of(storage: Storage, job_id: str) -> list[dict]:
    return list(storage.table(DELIVERIES).query(
        only_delivery_rows("PartitionKey ge @lo and PartitionKey lt @hi"),
        {"lo": f"{job_id}-", "hi": f"{job_id}."},
    ))


def handed_twice(messages: list[dict]) -> list[str]:
    return [to for to, n in Counter(m["to"] for m in messages).items() if n > 1]


# -- 429 storm -------------------------------------------------------------------------------


def test_429_storm_ends_all_sent_none_twice_and_waits_out_retry_after(storage, settings, sims):
    """Concurrency 1 so each 429's Retry-After can be checked against the next request's arrival."""
    sims.sendgrid.set_faults({"status": 429, "count": 4, "retry_after": 1})
    fast = settings.model_copy(update={"task_size": 10, "task_window": 2, "retry_budget_seconds": 1.5})
    policy = RetryPolicy(max_attempts=8, base_delay=0.05, budget_seconds=1.5)
    host = host_with(storage, fast, sender_for(storage, sims), policy, concurrency=1)

    job, rows = run_campaign(storage, host, 12)

    assert job.status == JobStatus.COMPLETED
    assert Counter(r["status"] for r in rows) == {DeliveryStatus.SENT: 12}
    assert handed_twice(sims.sendgrid.messages()) == []
    log = sims.sendgrid.request_log()
    for earlier, later in zip(log, log[1:], strict=False):
        if earlier["status"] == 429:
            assert later["at"] - earlier["at"] >= 1.0, "a request came before Retry-After had passed"
    assert {int(r["attempts"]) for r in rows} == {1}  # a 429 is a pace, not an attempt


def test_transient_errors_beyond_the_budget_are_requeued_then_failed_after_the_last_attempt(
    storage, settings, sims
):
    sims.sendgrid.set_faults({"status": 503, "for_seconds": 600})
    # One request per recipient (the batched path's own: tests/integration/test_batched_sends.py).
    fast = settings.model_copy(update={"task_size": 5, "retry_budget_seconds": 0.3, "sendgrid_batch_size": 0})
    policy = RetryPolicy(max_attempts=3, base_delay=0.05, max_delay=0.1, budget_seconds=0.3)
    breaker = BreakerConfig(min_requests=1000)  # keep the breaker out of this one
    host = host_with(storage, fast, sender_for(storage, sims, breaker=breaker), policy, concurrency=2)

    job, rows = run_campaign(storage, host, 3)

    assert job.status == JobStatus.COMPLETED
    assert {r["status"] for r in rows} == {DeliveryStatus.FAILED}
    assert {int(r["attempts"]) for r in rows} == {3}
    assert all("503" in r["reason"] for r in rows)
    assert sims.sendgrid.stats()["requests"] == 3 * 3


# -- failover on health ------------------------------------------------------------------------


def test_503_on_the_primary_fails_over_and_one_probe_brings_it_back(storage, settings, sims):
    breaker = BreakerConfig(window_seconds=10, failure_ratio=0.5, min_requests=4, cooldown_seconds=1.0,
                            sync_seconds=0.05)
    sender = sender_for(storage, sims, order=("sendgrid", "acs"), breaker=breaker)
    fast = settings.model_copy(update={"task_size": 20, "task_window": 2})
    policy = RetryPolicy(max_attempts=6, base_delay=0.02, max_delay=0.2, budget_seconds=5)
    host = host_with(storage, fast, sender, policy, concurrency=2)
    sims.sendgrid.set_faults({"status": 503, "for_seconds": 600})

    job, rows = run_campaign(storage, host, 30)

    assert job.status == JobStatus.COMPLETED
    by_provider = Counter(r["provider"] for r in rows if r["status"] == DeliveryStatus.SENT)
    assert by_provider["acs"] == 30 and len(sims.acs.messages()) == 30
    assert sender.health.state("sendgrid") != BreakerState.CLOSED

    sims.sendgrid.clear_faults()  # the primary recovers
    wait_for(lambda: sender.health.reopens_in("sendgrid") == 0, 10, "the cool-down")
    job2, rows2 = run_campaign(storage, host, 30)

    assert job2.status == JobStatus.COMPLETED
    by_provider2 = Counter(r["provider"] for r in rows2)
    assert by_provider2["sendgrid"] + by_provider2["acs"] == 30
    assert by_provider2["sendgrid"] >= 1
    assert sender.health.state("sendgrid") == BreakerState.CLOSED
    accepted = Counter(m["to"] for m in sims.sendgrid.messages() + sims.acs.messages())
    assert sum(accepted.values()) == 60 and max(accepted.values()) == 1


def test_only_one_of_many_hosts_claims_the_probe(storage, sims):
    breaker = BreakerConfig(min_requests=2, cooldown_seconds=0.2, sync_seconds=0.01)
    boards = [HealthBoard(storage, breaker, owner=f"h{i}") for i in range(4)]
    for _ in range(3):
        permit = boards[0].permit("sendgrid")
        boards[0].record(permit, ok=False)
    boards[0].sync("sendgrid")
    assert boards[1].permit("sendgrid") is None or boards[1].state("sendgrid") == BreakerState.OPEN
    wait_for(lambda: boards[0].reopens_in("sendgrid") == 0, 5, "the cool-down")

    permits = []
    threads = [threading.Thread(target=lambda b=b: permits.append(b.permit("sendgrid"))) for b in boards]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    probes = [p for p in permits if p is not None]
    assert len(probes) == 1 and probes[0].probe


# -- ambiguous, provider-wide and per-recipient failures ---------------------------------------


def test_timeout_after_accept_k_times_gives_exactly_k_unknown_none_resent(storage, settings, sims):
    k = 3
    sims.sendgrid.set_faults({"accept_then_hang": k, "hang_seconds": 2})
    # One request per recipient, so k hung requests are k recipients (batched: test_batched_sends.py).
    fast = settings.model_copy(update={"task_size": 10, "sendgrid_batch_size": 0})
    host = host_with(storage, fast, sender_for(storage, sims, timeout=0.5), RetryPolicy(base_delay=0.02))

    job, rows = run_campaign(storage, host, 15)

    statuses = Counter(r["status"] for r in rows)
    assert statuses == {DeliveryStatus.UNKNOWN: k, DeliveryStatus.SENT: 15 - k}
    assert handed_twice(sims.sendgrid.messages()) == []
    assert len(sims.sendgrid.messages()) == 15  # the k were accepted, so they must not be sent again
    assert sims.sendgrid.stats()["requests"] == 15


def test_401_pauses_the_job_with_a_reason_and_fails_nobody(storage, settings, sims):
    fast = settings.model_copy(update={"task_size": 10})
    sender = sender_for(storage, sims, sg_key="SG.wrong")
    host = host_with(storage, fast, sender, RetryPolicy(base_delay=0.02))
    tenant = make_tenant(storage)
    add_contacts(storage, tenant, [{"email": f"x{i}-{secrets.token_hex(2)}@example.com"} for i in range(25)])
    campaign = schedule_campaign(storage, tenant)

    def paused() -> bool:
        job = job_of(storage, campaign)
        return job is not None and job.status == JobStatus.PAUSED

    host.run_until(paused, 60)
    job = job_of(storage, campaign)
    rows = deliveries_of(storage, job.id)

    assert "refused" in job.failure_reason and "authorization" in job.failure_reason
    assert not [r for r in rows if r["status"] == DeliveryStatus.FAILED]
    assert sims.sendgrid.stats()["accepted"] == 0
    assert sims.sendgrid.stats()["requests"] <= 4  # what was in flight; nothing after the refusal


def test_400_for_two_addresses_fails_those_two_with_the_providers_message(storage, settings, sims):
    fast = settings.model_copy(update={"task_size": 10})
    host = host_with(storage, fast, sender_for(storage, sims), RetryPolicy(base_delay=0.02))
    tenant = make_tenant(storage)
    emails = [f"y{i}-{secrets.token_hex(2)}@example.com" for i in range(12)]
    add_contacts(storage, tenant, [{"email": e} for e in emails])
    sims.sendgrid.set_faults({"fail_addresses": {emails[3]: 400, emails[7]: 400}})
    campaign = schedule_campaign(storage, tenant)
    host.run_until(lambda: (j := job_of(storage, campaign)) is not None and JobStatus(j.status).is_final, 60)
    rows = deliveries_of(storage, job_of(storage, campaign).id)

    failed = {r["email"]: r["reason"] for r in rows if r["status"] == DeliveryStatus.FAILED}
    assert set(failed) == {emails[3], emails[7]}
    assert all("Does not contain a valid address" in reason for reason in failed.values())
    assert Counter(r["status"] for r in rows)[DeliveryStatus.SENT] == 10


# -- duplicates, semantics and records -----------------------------------------------------------


def test_one_task_message_three_times_at_once_on_two_hosts_hands_each_recipient_over_once(
    storage, settings, sims
):
    sims.sendgrid.set_faults({"latency_ms": 20})
    fast = settings.model_copy(update={"task_size": 40, "task_window": 1})
    hosts = [host_with(storage, fast, sender_for(storage, sims), RetryPolicy(base_delay=0.02), owner=f"h{i}")
             for i in range(2)]
    tenant = make_tenant(storage)
    add_contacts(storage, tenant, [{"email": f"z{i}-{secrets.token_hex(2)}@example.com"} for i in range(40)])
    campaign = schedule_campaign(storage, tenant)
    while (job := job_of(storage, campaign)) is None or not job.expanded:
        hosts[0].expand_round()
    ticket = TaskTicket(tenant_id=tenant.id, job_id=job.id, task_index=0)
    outcomes: list[object] = []
    barrier = threading.Barrier(6)

    def deliver(host: InProcessHost) -> None:
        barrier.wait()
        outcomes.append(host.send(ticket))

    threads = [threading.Thread(target=deliver, args=(hosts[i % 2],)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert outcomes.count(TaskOutcome.DONE) == 1
    assert handed_twice(sims.sendgrid.messages()) == [] and len(sims.sendgrid.messages()) == 40
    assert storage.table(TASKS).get(job.id, "000000")["status"] == "done"


def test_ambiguous_sends_are_resent_only_for_a_tenant_that_chose_at_least_once(storage, settings, sims):
    sims.sendgrid.set_faults({"accept_then_hang": 2, "hang_seconds": 2})
    fast = settings.model_copy(update={"task_size": 10, "retry_budget_seconds": 0.5,
                                       "sendgrid_batch_size": 0})
    host = host_with(storage, fast, sender_for(storage, sims, timeout=0.5),
                     RetryPolicy(base_delay=0.02, budget_seconds=0.5))
    tenant = make_tenant(storage)
    storage.table(TENANTS).update({"PartitionKey": TENANT_PARTITION, "RowKey": tenant.id,
                                   "delivery_semantics": "at-least-once"})
    add_contacts(storage, tenant, [{"email": f"w{i}-{secrets.token_hex(2)}@example.com"} for i in range(6)])
    campaign = schedule_campaign(storage, tenant)
    host.run_until(lambda: (j := job_of(storage, campaign)) is not None and JobStatus(j.status).is_final, 60)
    rows = deliveries_of(storage, job_of(storage, campaign).id)

    assert Counter(r["status"] for r in rows) == {DeliveryStatus.SENT: 6}
    assert len(handed_twice(sims.sendgrid.messages())) == 2  # the price of at-least-once


def test_a_tenants_provider_order_wins_and_each_delivery_names_its_provider(storage, settings, sims):
    fast = settings.model_copy(update={"task_size": 10})
    host = host_with(storage, fast, sender_for(storage, sims, order=("sendgrid", "acs")),
                     RetryPolicy(base_delay=0.02))
    tenant = make_tenant(storage)
    storage.table(TENANTS).update({"PartitionKey": TENANT_PARTITION, "RowKey": tenant.id, "providers": "acs"})
    add_contacts(storage, tenant, [{"email": f"v{i}-{secrets.token_hex(2)}@example.com"} for i in range(5)])
    campaign = schedule_campaign(storage, tenant)
    host.run_until(lambda: (j := job_of(storage, campaign)) is not None and JobStatus(j.status).is_final, 60)
    rows = deliveries_of(storage, job_of(storage, campaign).id)

    assert {(r["status"], r["provider"]) for r in rows} == {(DeliveryStatus.SENT, "acs")}
    assert all(r["provider_message_id"] for r in rows)
    assert sims.sendgrid.stats()["requests"] == 0
    headers = sims.acs.messages()[0]["headers"]
    assert headers["X-Mailroom-Job"] == job_of(storage, campaign).id


def test_jobs_table_counts_match_the_rows_after_requeues(storage, settings, sims):
    sims.sendgrid.set_faults({"status": 503, "count": 6})
    fast = settings.model_copy(update={"task_size": 8, "retry_budget_seconds": 0.2})
    policy = RetryPolicy(max_attempts=10, base_delay=0.05, max_delay=0.1, budget_seconds=0.2)
    sender = sender_for(storage, sims, breaker=BreakerConfig(min_requests=1000))
    host = host_with(storage, fast, sender, policy, concurrency=2)
    job, rows = run_campaign(storage, host, 16)
    stored = Job.from_entity(storage.table(JOBS).get(job.tenant_id, job.id))

    assert stored.counts[DeliveryStatus.SENT] == 16 == len(rows)
    assert sum(stored.counts.values()) == stored.roster_size == 16


def test_a_pause_stops_a_running_task_at_the_next_chunk_and_resuming_sends_the_rest_once(
    storage, settings, sims
):
    one_task = settings.model_copy(update={"task_size": 250, "task_window": 1, "job_status_check_seconds": 0})
    tenant = make_tenant(storage)
    add_contacts(storage, tenant, [{"email": f"u{i}-{secrets.token_hex(2)}@example.com"} for i in range(250)])
    campaign = schedule_campaign(storage, tenant)
    plain = sender_for(storage, sims)
    host = host_with(storage, one_task, plain, RetryPolicy(base_delay=0.02))
    while (job := job_of(storage, campaign)) is None or not job.expanded:
        host.expand_round()

    class PausesOnFirstSend:
        name = "sendgrid"
        paused = False

        def send(self, email):
            if not self.paused:
                self.paused = True
                paused_job = {"PartitionKey": job.tenant_id, "RowKey": job.id, "status": "paused"}
                storage.table(JOBS).update(paused_job)
            return plain.send(email)

        def close(self) -> None:
            plain.close()

    pausing = host_with(storage, one_task, plain, RetryPolicy(base_delay=0.02), concurrency=1)
    pausing.dispatcher = Dispatcher(PausesOnFirstSend(), RetryPolicy(base_delay=0.02), 1)
    ticket = TaskTicket(tenant_id=tenant.id, job_id=job.id, task_index=0)

    assert pausing.send(ticket) == TaskOutcome.PAUSED
    assert len(sims.sendgrid.messages()) == CHUNK  # the chunk under way, nothing after it
    storage.table(JOBS).update({"PartitionKey": job.tenant_id, "RowKey": job.id, "status": "sending"})
    assert host.send(ticket) == TaskOutcome.DONE
    assert len(sims.sendgrid.messages()) == 250 and handed_twice(sims.sendgrid.messages()) == []
