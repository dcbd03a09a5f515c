"""Each manager's promises on its own, on a real Azurite."""

from __future__ import annotations

import itertools
import secrets
import threading
from collections import Counter
from datetime import UTC, datetime, timedelta

import job_manager.manager
from campaign_manager import start_due_campaigns
from core.clock import iso, later, utcnow
from core.messages import JobTicket, TaskTicket
from core.models import Task, unpack_recipients
from core.status import JobStatus
from core.storage import CAMPAIGNS, JOB_QUEUE, JOBS, SCHEDULE, TASK_QUEUE, TASKS
from job_manager import ExpansionOutcome, expand_roster
from job_manager.manager import task_size_for
from status_manager import close_finished_jobs
from tests.pipeline import add_contacts, job_of, make_tenant, schedule_campaign


def _tickets(storage) -> list[JobTicket]:
    return [JobTicket.model_validate_json(t) for t in storage.queue(JOB_QUEUE).peek()]


def test_overlapping_campaign_manager_runs_create_one_job(storage):
    tenant = make_tenant(storage)
    campaign = schedule_campaign(storage, tenant)
    runs = [threading.Thread(target=start_due_campaigns, args=(storage,)) for _ in range(4)]
    for run in runs:
        run.start()
    for run in runs:
        run.join()
    jobs = list(storage.table(JOBS).partition(tenant.id))
    assert [j["campaign_id"] for j in jobs] == [campaign.id]
    assert {t.job_id for t in _tickets(storage)} == {jobs[0]["RowKey"]}
    assert list(storage.table(SCHEDULE).query("PartitionKey eq 'due'")) == []


def test_a_campaign_not_yet_due_is_left_alone(storage):
    tenant = make_tenant(storage)
    schedule_campaign(storage, tenant)
    report = start_due_campaigns(storage, clock=lambda: datetime.now(UTC) - timedelta(hours=1))
    assert report.started == 0 and _tickets(storage) == []


def _expanded_job(storage, settings, n: int, **overrides):
    tenant = make_tenant(storage)
    add_contacts(storage, tenant, [{"email": f"e{i}@example.com", "attributes": {"i": i}} for i in range(n)])
    campaign = schedule_campaign(storage, tenant, {"field": "attributes.i", "op": "lt", "value": n - 10})
    start_due_campaigns(storage)
    ticket = _tickets(storage)[0]
    storage.queue(JOB_QUEUE).clear()
    return tenant, campaign, ticket, settings.model_copy(update=overrides)


def test_roster_is_split_into_tasks_of_task_size_covering_each_match_once(storage, settings):
    tenant, campaign, ticket, small = _expanded_job(storage, settings, 260, task_size=50)
    assert expand_roster(storage, ticket, small, "h1") == ExpansionOutcome.EXPANDED
    job = job_of(storage, campaign)
    tasks = [Task.from_entity(e) for e in storage.table(TASKS).partition(job.id)]
    emails = [r.email for e in storage.table(TASKS).partition(job.id) for r in unpack_recipients(e)]
    assert job.roster_size == 250 and job.expanded and job.status == JobStatus.SENDING
    assert [t.size for t in tasks] == [50] * 5
    assert len(emails) == len(set(emails)) == 250


def test_a_task_is_cut_short_when_its_recipients_would_pack_past_the_entity_budget(
    storage, settings, monkeypatch
):
    monkeypatch.setattr(job_manager.manager, "MAX_TASK_BYTES", 30_000)
    tenant = make_tenant(storage)
    noisy = [{"email": f"e{i}@example.com", "attributes": {"i": i, "noise": secrets.token_hex(200)}}
             for i in range(400)]
    add_contacts(storage, tenant, noisy)
    campaign = schedule_campaign(storage, tenant)
    start_due_campaigns(storage)

    assert expand_roster(storage, _tickets(storage)[0], settings, "h1") == ExpansionOutcome.EXPANDED
    entities = list(storage.table(TASKS).partition(job_of(storage, campaign).id))
    sizes = [Task.from_entity(e).size for e in entities]
    emails = [r.email for e in entities for r in unpack_recipients(e)]
    assert len(sizes) > 1 and all(size % 50 == 0 and size < settings.task_size for size in sizes[:-1])
    assert len(emails) == len(set(emails)) == 400


def test_a_roster_far_below_the_entity_budget_is_not_packed_while_it_is_gathered(
    storage, settings, monkeypatch
):
    packs: list[int] = []
    real_pack = job_manager.manager.pack_recipients
    monkeypatch.setattr(job_manager.manager, "pack_recipients",
                        lambda rs: packs.append(len(rs)) or real_pack(rs))
    tenant, campaign, ticket, small = _expanded_job(storage, settings, 260, task_size=200)

    assert expand_roster(storage, ticket, small, "h1") == ExpansionOutcome.EXPANDED
    assert job_of(storage, campaign).tasks_total == 2
    assert packs == []  # each task is packed once, when it is written


def test_a_job_that_will_be_sent_batched_gets_tasks_of_batched_task_size(storage, settings):
    tenant, campaign, ticket, sized = _expanded_job(storage, settings, 130, task_size=20,
                                                    batched_task_size=50)

    assert expand_roster(storage, ticket, sized, "h1") == ExpansionOutcome.EXPANDED
    tasks = [Task.from_entity(e) for e in storage.table(TASKS).partition(job_of(storage, campaign).id)]
    assert [t.size for t in tasks] == [50, 50, 20]


def test_a_job_whose_template_has_recipient_logic_keeps_task_size(storage, settings):
    tenant = make_tenant(storage)
    add_contacts(storage, tenant, [{"email": f"e{i}@example.com"} for i in range(60)])
    logic = {"subject": "Hi", "from_email": "news@example.org",
             "html": "{% if contact.name %}<p>{{ contact.name }}</p>{% endif %}"}
    campaign = schedule_campaign(storage, tenant, template=logic)
    start_due_campaigns(storage)
    sized = settings.model_copy(update={"task_size": 20, "batched_task_size": 50})

    assert expand_roster(storage, _tickets(storage)[0], sized, "h1") == ExpansionOutcome.EXPANDED
    tasks = [Task.from_entity(e) for e in storage.table(TASKS).partition(job_of(storage, campaign).id)]
    assert [t.size for t in tasks] == [20, 20, 20]


def test_a_job_routed_to_another_provider_first_or_with_batching_off_keeps_task_size(storage, settings):
    tenant, campaign, ticket, sized = _expanded_job(storage, settings, 70, task_size=20, batched_task_size=50,
                                                    email_provider="smtp")
    off = settings.model_copy(update={"task_size": 20, "batched_task_size": 50, "sendgrid_batch_size": 0})

    assert expand_roster(storage, ticket, sized, "h1") == ExpansionOutcome.EXPANDED
    assert [Task.from_entity(e).size for e in storage.table(TASKS).partition(job_of(storage, campaign).id)] \
        == [20, 20, 20]
    assert task_size_for(storage, job_of(storage, campaign), off) == 20


def test_only_the_task_window_goes_on_the_queue(storage, settings):
    tenant, campaign, ticket, small = _expanded_job(storage, settings, 260, task_size=20, task_window=3)
    expand_roster(storage, ticket, small, "h1")
    queued = [TaskTicket.model_validate_json(t).task_index for t in storage.queue(TASK_QUEUE).peek()]
    assert sorted(queued) == [0, 1, 2]


def test_a_duplicate_job_ticket_makes_no_second_set_of_tasks(storage, settings):
    tenant, campaign, ticket, small = _expanded_job(storage, settings, 120, task_size=25)
    expand_roster(storage, ticket, small, "h1")
    assert expand_roster(storage, ticket, small, "h2") == ExpansionOutcome.NOT_NEEDED
    job = job_of(storage, campaign)
    assert job.tasks_total == 5 and len(list(storage.table(TASKS).partition(job.id))) == 5


def test_expansion_out_of_time_continues_from_its_cursor_with_the_same_roster(storage, settings):
    tenant, campaign, ticket, small = _expanded_job(
        storage, settings, 300, task_size=40, job_time_budget_seconds=5
    )
    ticks = itertools.count(step=1)  # every look at the clock costs a "second"
    outcomes = Counter()
    while (
        outcome := expand_roster(storage, ticket, small, "h1", monotonic=lambda: next(ticks))
    ) != ExpansionOutcome.EXPANDED:
        outcomes[outcome] += 1
        assert [JobTicket.model_validate_json(t) for t in storage.queue(JOB_QUEUE).peek()] == [ticket]
        storage.queue(JOB_QUEUE).clear()
    job = job_of(storage, campaign)
    emails = [r.email for e in storage.table(TASKS).partition(job.id) for r in unpack_recipients(e)]
    assert outcomes[ExpansionOutcome.CONTINUED] >= 3
    assert job.roster_size == 290 == len(emails) == len(set(emails))


def test_another_hosts_live_expansion_lease_is_respected(storage, settings):
    tenant, campaign, ticket, small = _expanded_job(storage, settings, 50)
    job = job_of(storage, campaign)
    storage.table(JOBS).update(
        {
            "PartitionKey": tenant.id,
            "RowKey": job.id,
            "lease_owner": "other",
            "lease_until": later(utcnow, 60),
        }
    )
    assert expand_roster(storage, ticket, small, "h1") == ExpansionOutcome.BUSY


def test_status_manager_closes_an_empty_roster_job_and_its_campaign(storage, settings):
    tenant = make_tenant(storage)
    campaign = schedule_campaign(storage, tenant, {"field": "email", "op": "eq", "value": "nobody@x.org"})
    start_due_campaigns(storage)
    expand_roster(storage, _tickets(storage)[0], settings, "h1")
    report = close_finished_jobs(storage, settings)
    job = job_of(storage, campaign)
    assert job.status == JobStatus.COMPLETED and job.roster_size == 0
    assert report.jobs_closed == [job.id]
    assert storage.table(CAMPAIGNS).get(tenant.id, campaign.id)["status"] == "completed"


def test_status_manager_requeues_a_task_whose_owner_died(storage, settings):
    tenant, campaign, ticket, small = _expanded_job(storage, settings, 60, task_size=30)
    expand_roster(storage, ticket, small, "h1")
    storage.queue(TASK_QUEUE).clear()
    job = job_of(storage, campaign)
    storage.table(TASKS).update(
        {
            "PartitionKey": job.id,
            "RowKey": "000001",
            "status": "sending",
            "lease_until": "2000-01-01T00:00:00.000Z",
        }
    )
    report = close_finished_jobs(storage, small)
    queued = [TaskTicket.model_validate_json(t).task_index for t in storage.queue(TASK_QUEUE).peek()]
    assert report.tasks_requeued == 1 and queued == [1]


def test_status_manager_refills_a_window_a_crash_left_short(storage, settings):
    tenant, campaign, ticket, small = _expanded_job(storage, settings, 100, task_size=30, task_window=2)
    expand_roster(storage, ticket, small, "h1")
    storage.queue(TASK_QUEUE).clear()  # the window's messages were lost
    close_finished_jobs(storage, small)  # records the counts: progress "now"
    later_on = datetime.now(UTC) + timedelta(seconds=small.refill_after_seconds + 1)
    close_finished_jobs(storage, small, clock=lambda: later_on)
    queued = [TaskTicket.model_validate_json(t).task_index for t in storage.queue(TASK_QUEUE).peek()]
    assert sorted(queued) == [0, 1]


def test_status_manager_requeues_a_retrying_task_whose_delayed_ticket_never_came(storage, settings):
    tenant, campaign, ticket, small = _expanded_job(storage, settings, 60, task_size=30)
    expand_roster(storage, ticket, small, "h1")
    storage.queue(TASK_QUEUE).clear()
    job = job_of(storage, campaign)
    not_before = datetime.now(UTC) - timedelta(seconds=small.refill_after_seconds + 5)
    storage.table(TASKS).update({"PartitionKey": job.id, "RowKey": "000000", "status": "retrying",
                                 "lease_owner": "", "lease_until": iso(not_before)})
    close_finished_jobs(storage, small)
    queued = [TaskTicket.model_validate_json(t).task_index for t in storage.queue(TASK_QUEUE).peek()]
    assert 0 in queued


def test_status_manager_passes_during_expansion_do_not_stall_it(storage, settings):
    tenant, campaign, ticket, small = _expanded_job(storage, settings, 200, task_size=20)
    passes = Counter()

    def clock_with_status_passes() -> float:
        # Between every contact the expansion looks at the clock: run a Status Manager pass there,
        # which rewrites the job's counts (and so its ETag) while the expansion holds the lease.
        close_finished_jobs(storage, small)
        passes["n"] += 1
        return 0.0

    outcome = expand_roster(storage, ticket, small, "h1", monotonic=clock_with_status_passes)

    job = job_of(storage, campaign)
    assert outcome == ExpansionOutcome.EXPANDED and passes["n"] > 100
    assert job.expanded and job.roster_size == 190 and job.tasks_total == 10
