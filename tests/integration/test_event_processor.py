"""The event processor on real Azurite, fed the simulator's SendGrid events for real sends."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime

import pytest

from core.clock import iso
from core.ids import email_hash
from core.models import Job
from core.provider_events import EventBatch
from core.storage import CAMPAIGNS, DELIVERIES, EVENTS_QUEUE, JOBS, RECOUNTS, SUPPRESSIONS, TASKS
from status_manager.event_processor import orphan_count, process_event_batch
from tests.integration.delivery_helpers import (
    EVENT_TIME,
    apply_events,
    delivery_rows,
    drain_events_queue,
    events_of,
    people,
    run_campaign,
    statuses_by_email,
)
from tests.pipeline import InProcessHost, add_contacts, make_tenant, schedule_campaign, sendgrid_host

MIXED = ("ok1", "ok2", "ok3", "bounce-a", "complain-b", "slow-c", "blocked-d", "ok4")



@pytest.fixture
def host(storage, settings, simulator) -> InProcessHost:
    _, url, _ = simulator
    return sendgrid_host(storage, settings, url, task_size=3, task_window=4)


def job_counts(storage, job: Job) -> dict[str, int]:
    return Job.from_entity(storage.table(JOBS).get(job.tenant_id, job.id)).counts


def test_a_batch_replayed_five_times_and_shuffled_ends_like_one_in_order_delivery(storage, host, simulator):
    _, _, records = simulator
    tenant = make_tenant(storage)
    add_contacts(storage, tenant, people(*MIXED))
    first = run_campaign(storage, host, tenant)
    first_records = list(records)
    records.clear()
    second = run_campaign(storage, host, tenant)

    apply_events(storage, host.settings, events_of(first_records))
    replayed = events_of(records) * 5
    random.Random(11).shuffle(replayed)
    report = apply_events(storage, host.settings, replayed)

    assert report.duplicates >= 4 * report.applied
    once, five = statuses_by_email(storage, first.id), statuses_by_email(storage, second.id)
    assert once == five
    by_local = {email.split("-")[0]: status for email, (status, _) in once.items()}
    assert by_local == {
        "ok1": "delivered", "ok2": "delivered", "ok3": "delivered", "ok4": "delivered",
        "bounce": "bounced", "complain": "complained", "slow": "delivered", "blocked": "bounced",
    }
    assert job_counts(storage, first) == job_counts(storage, second)
    assert sum(job_counts(storage, second).values()) == second.roster_size == len(MIXED)


def test_late_events_move_a_closed_jobs_counts(storage, host, simulator):
    _, _, records = simulator
    tenant = make_tenant(storage)
    add_contacts(storage, tenant, people(*MIXED))
    job = run_campaign(storage, host, tenant)
    assert job_counts(storage, job)["sent"] == len(MIXED)

    apply_events(storage, host.settings, events_of(records))

    counts = job_counts(storage, job)
    assert (counts["sent"], counts["delivered"], counts["bounced"], counts["complained"]) == (0, 5, 2, 1)
    tasks = [json.loads(t["counts"]) for t in storage.table(TASKS).partition(job.id, select=["counts"])]
    assert sum(t.get("delivered", 0) for t in tasks) == 5 and sum(t.get("sent", 0) for t in tasks) == 0
    campaign = json.loads(storage.table(CAMPAIGNS).get(job.tenant_id, job.campaign_id)["counts"])
    assert (campaign["sent"], campaign["delivered"], campaign["bounced"]) == (0, 5, 2)


def test_an_unknown_delivery_becomes_delivered_when_the_providers_events_arrive(storage, host, simulator):
    _, _, records = simulator
    tenant = make_tenant(storage)
    add_contacts(storage, tenant, people("ok1", "ok2"))
    job = run_campaign(storage, host, tenant)
    row = delivery_rows(storage, job.id)[0]
    mark_unknown(storage, job, row)
    assert job_counts(storage, job)["unknown"] == 1

    apply_events(storage, host.settings, events_of(records))

    after = storage.table(DELIVERIES).get(row["PartitionKey"], row["RowKey"])
    assert after["status"] == "delivered" and after["outcome"] == "unknown"
    assert after["provider_message_id"]  # learnt from the events
    counts = job_counts(storage, job)
    assert counts["unknown"] == 0 and counts["delivered"] == 2


def mark_unknown(storage, job: Job, row: dict) -> None:
    """What lease recovery writes for a recipient whose host died mid-chunk (no message id known)."""
    storage.table(DELIVERIES).update({
        "PartitionKey": row["PartitionKey"], "RowKey": row["RowKey"], "status": "unknown",
        "reason": "the host sending this chunk stopped; it may have been sent, so it is not resent",
        "provider_message_id": "",
    })
    task_id = row["PartitionKey"][len(job.id) + 1:]
    task = storage.table(TASKS).get(job.id, task_id)
    counts = json.loads(task["counts"])
    counts["sent"] -= 1
    counts["unknown"] = counts.get("unknown", 0) + 1
    storage.table(TASKS).update({"PartitionKey": job.id, "RowKey": task_id, "counts": json.dumps(counts)})
    storage.table(JOBS).update({"PartitionKey": job.tenant_id, "RowKey": job.id,
                                "count_sent": counts["sent"], "count_unknown": 1})


def test_an_event_that_beats_its_outcome_row_is_retried_then_applied(storage, host, simulator, settings):
    sim, _, records = simulator
    tenant = make_tenant(storage)
    add_contacts(storage, tenant, people("ok1"))
    campaign = schedule_campaign(storage, tenant)
    host.expand_round()
    job_id = storage.table(CAMPAIGNS).get(tenant.id, campaign.id)["current_job_id"]
    early = {"event": "delivered", "timestamp": EVENT_TIME, "sg_event_id": "early", "email": "x@example.com",
             "tenant_id": tenant.id, "job_id": job_id, "task_id": "000000", "contact_id": "not-yet"}
    report = process_event_batch(storage, EventBatch(events=[early]), settings, retry_delay=0)
    assert report.retried == 1 and report.orphans == 0
    (waiting,) = storage.queue(EVENTS_QUEUE).peek()
    assert EventBatch.model_validate_json(waiting).attempt == 1

    host.run_round()
    early["contact_id"] = delivery_rows(storage, job_id)[0]["RowKey"]
    storage.queue(EVENTS_QUEUE).clear()
    process_event_batch(storage, EventBatch(events=[early], attempt=1), settings, retry_delay=0)
    assert delivery_rows(storage, job_id)[0]["status"] == "delivered"


def test_events_nobody_can_match_are_kept_as_orphans_and_never_raise(storage, settings):
    tenant = make_tenant(storage)
    events = [
        {"event": "delivered", "timestamp": EVENT_TIME, "sg_event_id": "a", "tenant_id": tenant.id,
         "job_id": "no-such-job", "task_id": "000000", "contact_id": "c"},
        {"event": "delivered", "timestamp": EVENT_TIME, "sg_event_id": "b", "sg_message_id": "nope.filter"},
        {"event": "something-new", "timestamp": EVENT_TIME},
        "not even an object",
    ]
    report = process_event_batch(storage, EventBatch(events=events), settings, max_attempts=1)
    assert (report.orphans, report.ignored) == (2, 2)
    assert orphan_count(storage, iso(datetime.now(UTC))[:10]) == 2


def test_events_without_custom_args_find_their_delivery_by_message_id_after_close(storage, host, simulator):
    _, _, records = simulator
    tenant = make_tenant(storage)
    add_contacts(storage, tenant, people("ok1"))
    job = run_campaign(storage, host, tenant)
    drain_events_queue(storage, host.settings)  # writes the delivery log and the message index
    (event,) = [e for e in events_of(records) if e["event"] == "delivered"]
    for name in ("tenant_id", "job_id", "task_id", "contact_id"):
        event.pop(name)

    report = apply_events(storage, host.settings, [event])

    assert report.applied == 1 and report.orphans == 0
    assert delivery_rows(storage, job.id)[0]["status"] == "delivered"


def test_a_hard_bounce_or_complaint_in_one_campaign_suppresses_the_address_in_the_next(
    storage, host, simulator
):
    sim, _, records = simulator
    tenant = make_tenant(storage)
    rows = people("bounce-x", "complain-y", "ok1")
    add_contacts(storage, tenant, rows)
    run_campaign(storage, host, tenant)
    apply_events(storage, host.settings, events_of(records))

    second = run_campaign(storage, host, tenant)

    statuses = {email: status for email, (status, _) in statuses_by_email(storage, second.id).items()}
    assert statuses[rows[0]["email"]] == statuses[rows[1]["email"]] == "suppressed"
    assert statuses[rows[2]["email"]] == "sent"
    assert len(sim.messages(to=rows[0]["email"])) == len(sim.messages(to=rows[1]["email"])) == 1


def test_soft_bounces_suppress_after_the_configured_number(storage, host, simulator):
    _, _, records = simulator
    host.settings = host.settings.model_copy(update={"soft_bounce_suppress_after": 2})
    tenant = make_tenant(storage)
    (row,) = people("blocked-z")
    add_contacts(storage, tenant, [row])
    key = email_hash(row["email"])
    run_campaign(storage, host, tenant)
    apply_events(storage, host.settings, events_of(records))
    assert storage.table(SUPPRESSIONS).get(tenant.id, key)["active"] is False
    records.clear()

    run_campaign(storage, host, tenant)
    apply_events(storage, host.settings, events_of(records, seed=5))

    suppression = storage.table(SUPPRESSIONS).get(tenant.id, key)
    assert suppression["active"] is True and suppression["soft_bounces"] == 2


def test_an_event_between_a_tasks_final_recount_and_its_close_is_still_counted(storage, host, settings):
    tenant = make_tenant(storage)
    add_contacts(storage, tenant, people("ok1", "ok2", "ok3"))
    job = run_campaign(storage, host, tenant)  # one task of three, every row ``sent``
    row = delivery_rows(storage, job.id)[0]
    task_id = row["PartitionKey"][len(job.id) + 1:]
    finished = storage.table(TASKS).get(job.id, task_id)

    def event(kind: str, key: str) -> dict:
        return {"event": kind, "timestamp": EVENT_TIME, "sg_event_id": key, "email": row["email"],
                "tenant_id": tenant.id, "job_id": job.id, "task_id": task_id, "contact_id": row["RowKey"]}

    # The task is still sending (its final recount taken: three ``sent``) when a deferral lands…
    storage.table(TASKS).update({"PartitionKey": job.id, "RowKey": task_id, "status": "sending"})
    apply_events(storage, settings, [event("deferred", "d1")])
    assert len(list(storage.table(RECOUNTS).partition("due"))) == 1  # waits for the task to finish
    # …then it closes with the counts of that recount, and the delivery follows.
    storage.table(TASKS).update({"PartitionKey": job.id, "RowKey": task_id, "status": "done",
                                 "counts": finished["counts"]})
    apply_events(storage, settings, [event("delivered", "d2")])

    counts = job_counts(storage, job)
    assert sum(counts.values()) == job.roster_size == 3
    assert (counts["sent"], counts["deferred"], counts["delivered"]) == (2, 0, 1)
    assert json.loads(storage.table(TASKS).get(job.id, task_id)["counts"]) == {"sent": 2, "delivered": 1}
    assert list(storage.table(RECOUNTS).partition("due")) == []

