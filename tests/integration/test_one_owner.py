"""One owner per fact: status moves race safely, counts add up at every step, the campaign follows.

A person's cancel and the system's own moves (a provider pause, a failed expansion, a close)
land on the same job row: each write is ETag-guarded and decided again on the row as it is
now, so the cancel wins, or the loser is told (409), never a silent overwrite.
"""

from __future__ import annotations

import json
import secrets
import time
from datetime import timedelta

import pytest

from campaign_manager import start_due_campaigns
from core.clock import utcnow
from core.counts import balance_pending, sum_task_counts
from core.errors import Conflict, StateConflict
from core.job_state import load_campaign, load_job, pause_job_for, write_job
from core.messages import JobTicket, TaskTicket
from core.models import Job
from core.retry import RetryPolicy
from core.settings import Settings
from core.status import CampaignStatus, JobStatus
from core.storage import JOB_QUEUE, TASK_QUEUE, TASKS, Storage
from core.suppressions import SuppressionCache
from job_manager import expand_roster, fail_expansion
from job_manager.control import cancel_job
from providers.sendgrid import SendGridProvider
from status_manager import close_finished_jobs
from status_manager.manager import StatusReport, update_job
from task_manager import Dispatcher, JobCache, TaskOutcome, send_task
from tests.integration.delivery_helpers import apply_events, events_of, people
from tests.pipeline import (
    DiesAfter,
    HostDies,
    InProcessHost,
    add_contacts,
    job_of,
    make_tenant,
    schedule_campaign,
    sendgrid_host,
)


@pytest.fixture
def host(storage: Storage, settings: Settings, simulator) -> InProcessHost:
    return sendgrid_host(storage, settings, simulator[1], task_size=10, task_window=2)


def started_campaign(storage: Storage, host: InProcessHost, n: int = 40):
    tenant = make_tenant(storage)
    tag = secrets.token_hex(3)
    add_contacts(storage, tenant, [{"email": f"p{i}-{tag}@example.com", "name": f"P{i}"} for i in range(n)])
    return schedule_campaign(storage, tenant)


def expanded_job(storage: Storage, host: InProcessHost, n: int = 40) -> Job:
    campaign = started_campaign(storage, host, n)
    host.expand_round()
    job = job_of(storage, campaign)
    assert job is not None and job.expanded
    return job


def assert_counts_add_up(storage: Storage, job_id: str, tenant_id: str) -> Job:
    job = load_job(storage, tenant_id, job_id)
    assert sum(job.counts.values()) == job.roster_size, (job.status, job.counts, job.roster_size)
    return job


def test_a_cancel_during_a_provider_pause_wins(storage, host):
    job = expanded_job(storage, host)
    seen_by_the_task_manager = load_job(storage, job.tenant_id, job.id)

    cancel_job(storage, job.tenant_id, job.id)
    with pytest.raises(Conflict):  # the stale read cannot overwrite the cancel
        write_job(storage, seen_by_the_task_manager, {"status": JobStatus.PAUSED.value})
    pause_job_for(storage, job.tenant_id, job.id, "paused: the email provider refused to send (401)")

    assert load_job(storage, job.tenant_id, job.id).status == JobStatus.CANCELLED
    assert load_campaign(storage, job.tenant_id, job.campaign_id).status == CampaignStatus.CANCELLED


def test_a_provider_pause_then_a_cancel_ends_cancelled(storage, host):
    job = expanded_job(storage, host)

    pause_job_for(storage, job.tenant_id, job.id, "paused: the email provider refused to send (401)")
    assert load_campaign(storage, job.tenant_id, job.campaign_id).status == CampaignStatus.PAUSED
    cancel_job(storage, job.tenant_id, job.id)

    assert load_job(storage, job.tenant_id, job.id).status == JobStatus.CANCELLED


def test_a_cancel_during_a_job_queue_failure_wins(storage, host):
    campaign = started_campaign(storage, host)
    start_due_campaigns(storage)
    job = job_of(storage, campaign)
    assert job is not None and job.status == JobStatus.QUEUED

    cancel_job(storage, job.tenant_id, job.id)
    fail_expansion(storage, JobTicket(tenant_id=job.tenant_id, job_id=job.id), "RuntimeError")

    assert load_job(storage, job.tenant_id, job.id).status == JobStatus.CANCELLED
    assert load_campaign(storage, job.tenant_id, job.campaign_id).status == CampaignStatus.CANCELLED


def test_a_job_queue_failure_fails_the_job_and_its_campaign_with_the_reason(storage, host):
    campaign = started_campaign(storage, host)
    start_due_campaigns(storage)
    job = job_of(storage, campaign)

    fail_expansion(storage, JobTicket(tenant_id=job.tenant_id, job_id=job.id), "RuntimeError")

    failed = load_job(storage, job.tenant_id, job.id)
    assert failed.status == JobStatus.FAILED and "job-queue-poison" in failed.failure_reason
    assert load_campaign(storage, job.tenant_id, job.campaign_id).status == CampaignStatus.FAILED


def test_a_cancel_during_close_wins_and_the_close_decides_again(storage, host):
    job = expanded_job(storage, host, n=10)
    send_every_task(storage, host)  # every task done; no Status Manager pass yet
    seen_by_the_status_manager = load_job(storage, job.tenant_id, job.id)

    cancel_job(storage, job.tenant_id, job.id)  # lands between the pass's read and its write
    update_job(storage, seen_by_the_status_manager, host.settings, utcnow, StatusReport())

    assert load_job(storage, job.tenant_id, job.id).status == JobStatus.CANCELLED
    close_finished_jobs(storage, host.settings)
    closed = assert_counts_add_up(storage, job.id, job.tenant_id)
    assert closed.completed_at and closed.counts["sent"] == 10
    campaign = load_campaign(storage, job.tenant_id, job.campaign_id)
    assert campaign.status == CampaignStatus.CANCELLED and campaign.counts == closed.counts


def test_a_cancel_after_the_close_is_refused_with_409(storage, host):
    job = expanded_job(storage, host, n=10)
    send_every_task(storage, host)
    close_finished_jobs(storage, host.settings)

    with pytest.raises(StateConflict):
        cancel_job(storage, job.tenant_id, job.id)
    assert load_job(storage, job.tenant_id, job.id).status == JobStatus.COMPLETED


def test_counts_add_up_to_the_roster_at_every_step_and_the_campaign_follows(storage, settings, simulator):
    # One task per expansion call: the roster grows in steps with status passes in between.
    stepwise = settings.model_copy(update={"task_size": 5, "task_window": 2, "job_time_budget_seconds": 0})
    host = InProcessHost(storage, stepwise, sendgrid_host(storage, settings, simulator[1], 5, 2).provider)
    campaign = started_campaign(storage, host, n=23)
    start_due_campaigns(storage)
    job = job_of(storage, campaign)
    steps = 0
    while not load_job(storage, job.tenant_id, job.id).expanded:
        for message in storage.queue(JOB_QUEUE).receive(32, visibility_timeout=60):
            expand_roster(storage, JobTicket.model_validate_json(message.content), stepwise, host.owner)
            storage.queue(JOB_QUEUE).delete(message)
            assert_counts_add_up(storage, job.id, job.tenant_id)
            close_finished_jobs(storage, stepwise)
            now = assert_counts_add_up(storage, job.id, job.tenant_id)
            assert load_campaign(storage, job.tenant_id, job.campaign_id).counts == now.counts
            steps += 1
        assert steps < 100
    assert steps > 2  # it really grew in steps
    while True:
        messages = storage.queue(TASK_QUEUE).receive(1, visibility_timeout=60)
        if not messages:
            close_finished_jobs(storage, stepwise)
            if load_job(storage, job.tenant_id, job.id).completed_at:
                break
            continue
        host.send(TaskTicket.model_validate_json(messages[0].content))
        storage.queue(TASK_QUEUE).delete(messages[0])
        assert_counts_add_up(storage, job.id, job.tenant_id)
        close_finished_jobs(storage, stepwise)
        now = assert_counts_add_up(storage, job.id, job.tenant_id)
        # The campaign follows its job live, not only at the close.
        assert load_campaign(storage, job.tenant_id, job.campaign_id).counts == now.counts

    final = assert_counts_add_up(storage, job.id, job.tenant_id)
    assert final.roster_size == 23 and final.counts["sent"] == 23
    closed = load_campaign(storage, job.tenant_id, job.campaign_id)
    assert closed.status == CampaignStatus.COMPLETED and closed.counts == final.counts


def send_every_task(storage: Storage, host: InProcessHost) -> None:
    """Run every queued task (and the ones each finished task enqueues), no Status Manager pass."""
    while messages := storage.queue(TASK_QUEUE).receive(32, visibility_timeout=60):
        for message in messages:
            host.send(TaskTicket.model_validate_json(message.content))
            storage.queue(TASK_QUEUE).delete(message)


def test_task_job_and_campaign_counts_agree_through_a_crash_a_takeover_events_and_the_close(
    storage, settings, simulator
):
    _, url, records = simulator
    small = settings.model_copy(update={"task_size": 5, "task_window": 2, "send_group_size": 2})
    host = InProcessHost(storage, small, SendGridProvider("SG.test", url))
    tenant = make_tenant(storage)
    add_contacts(storage, tenant, people("ok1", "ok2", "ok3", "ok4", "ok5", "ok6", "ok7", "ok8", "ok9",
                                         "bounce-a", "bounce-b", "complain-c", "slow-d"))
    campaign = schedule_campaign(storage, tenant)
    host.expand_round()
    job = job_of(storage, campaign)
    assert job is not None and job.roster_size == 13
    assert_all_counts_agree(storage, job)

    # Host A dies (kill -9) while handing over its third send of task 0.
    message = storage.queue(TASK_QUEUE).receive(1, visibility_timeout=60)[0]
    ticket = TaskTicket.model_validate_json(message.content)
    dying = Dispatcher(DiesAfter(SendGridProvider("SG.test", url), 2), RetryPolicy(max_attempts=1), 1)
    at = [utcnow()]
    with pytest.raises(HostDies):
        send_task(storage, ticket, small, dying, SuppressionCache(storage), JobCache(), "host-a",
                  lambda: at[0])
    close_finished_jobs(storage, small)
    assert_all_counts_agree(storage, job)

    # Host B takes the task over once A's lease ran out, then the rest of the job runs.
    at[0] += timedelta(seconds=small.lease_seconds + 1)
    assert send_task(storage, ticket, small, host.dispatcher, SuppressionCache(storage), JobCache(),
                     "host-b", lambda: at[0]) == TaskOutcome.DONE
    deadline = time.monotonic() + 60
    while not load_job(storage, job.tenant_id, job.id).completed_at:
        assert time.monotonic() < deadline, "the job did not close"
        host.run_round()
        assert_all_counts_agree(storage, job)
    closed = assert_all_counts_agree(storage, job)
    assert 0 < closed.counts["unknown"] <= small.send_group_size  # only A's group in the provider's hands

    # Provider feedback moves rows; the next pass recounts tasks, job and campaign alike.
    apply_events(storage, small, events_of(records))
    final = assert_all_counts_agree(storage, job)
    # The bounces the provider could report: the bounce addresses it accepted. Task order follows
    # the random contact ids, so now and then both sat in A's unknown group and never reached it.
    bounced = sum(1 for record in records if str(record["to"]).startswith("bounce-"))
    assert final.counts["bounced"] == bounced and final.counts["delivered"] >= 1
    assert load_campaign(storage, job.tenant_id, job.campaign_id).counts == final.counts


def assert_all_counts_agree(storage: Storage, job: Job) -> Job:
    """Every task's counts add up to its size, the job's to its roster, and the job's are the sum
    of its tasks' once the Status Manager has passed; the campaign shows the job's."""
    now = load_job(storage, job.tenant_id, job.id)
    assert sum(now.counts.values()) == now.roster_size, now.counts
    tasks = list(storage.table(TASKS).partition(job.id, select=["size", "counts", "status"]))
    for task in tasks:
        counts = json.loads(task.get("counts") or "{}")
        assert sum(counts.values()) <= task["size"], counts
    totals = sum_task_counts(tasks)
    assert totals.roster == now.roster_size
    if now.completed_at:
        assert balance_pending(totals.counts, now.roster_size) == now.counts
    campaign = load_campaign(storage, job.tenant_id, job.campaign_id)
    assert sum(campaign.counts.values()) in (0, now.roster_size)
    return now
