"""The four managers in-process on a real Azurite, sending through the SendGrid simulator."""

from __future__ import annotations

import secrets
from collections import Counter
from collections.abc import Iterator

import pytest

from core.in_flight import only_delivery_rows
from core.messages import TaskTicket
from core.models import Task
from core.status import DeliveryStatus, JobStatus, TaskStatus
from core.storage import DELIVERIES, TASK_QUEUE, TASKS, Storage
from core.suppressions import add_suppression
from tests.pipeline import InProcessHost, add_contacts, job_of, make_tenant, schedule_campaign, sendgrid_host
from tests.sim_fixtures import running_sendgrid_simulator


@pytest.fixture
def simulator() -> Iterator[tuple[object, str]]:
    with running_sendgrid_simulator() as (sim, url):
        yield sim, url


@pytest.fixture
def host(storage: Storage, settings, simulator) -> InProcessHost:
    _, url = simulator
    return sendgrid_host(storage, settings, url, task_size=40, task_window=3)


def people(n: int, term_every: int = 2) -> list[dict]:
    tag = secrets.token_hex(3)
    return [
        {
            "email": f"p{i}-{tag}@example.com",
            "name": f"Person {i}",
            "attributes": {"term": "Spring" if i % term_every == 0 else "Fall", "n": i},
        }
        for i in range(n)
    ]


def deliveries_of(storage: Storage, job_id: str) -> list[dict]:
    return list(
        storage.table(DELIVERIES).query(
            only_delivery_rows("PartitionKey ge @lo and PartitionKey lt @hi"),
        {"lo": f"{job_id}-", "hi": f"{job_id}."},
        )
    )


def test_campaign_sends_each_matching_recipient_once_and_counts_add_up(storage, host, simulator):
    sim, _ = simulator
    tenant = make_tenant(storage)
    rows = people(200)
    add_contacts(storage, tenant, rows)
    suppressed = [rows[0]["email"], rows[2]["email"]]
    for email in suppressed:
        add_suppression(storage, tenant.id, email)
    campaign = schedule_campaign(storage, tenant, {"field": "attributes.term", "op": "eq", "value": "Spring"})

    host.run_until(lambda: (j := job_of(storage, campaign)) is not None and j.status == JobStatus.COMPLETED)

    job = job_of(storage, campaign)
    assert job.roster_size == 100
    assert sum(job.counts.values()) == job.roster_size
    assert job.counts["sent"] == 98 and job.counts["suppressed"] == 2
    sent_to = Counter(m["to"] for m in sim.messages())
    assert set(sent_to) == {r["email"] for r in rows[::2]} - set(suppressed)
    assert max(sent_to.values()) == 1
    assert len(deliveries_of(storage, job.id)) == 100


def test_each_tasks_counts_match_its_delivery_rows(storage, host):
    tenant = make_tenant(storage)
    rows = people(130, term_every=1)
    add_contacts(storage, tenant, rows)
    add_suppression(storage, tenant.id, rows[5]["email"])
    campaign = schedule_campaign(storage, tenant)
    host.run_until(lambda: (j := job_of(storage, campaign)) is not None and j.status == JobStatus.COMPLETED)

    job = job_of(storage, campaign)
    tasks = [Task.from_entity(e) for e in storage.table(TASKS).partition(job.id)]
    assert len(tasks) == 4
    for task in tasks:
        recorded = Counter(r["status"] for r in storage.table(DELIVERIES).query(
            only_delivery_rows("PartitionKey eq @pk"), {"pk": task.delivery_partition}))
        assert {k: v for k, v in task.counts.items() if v} == dict(recorded)
    assert job.counts["suppressed"] == 1 and job.counts["sent"] == 129


def test_every_message_carries_our_ids_and_one_click_unsubscribe(storage, host, simulator):
    sim, _ = simulator
    tenant = make_tenant(storage)
    add_contacts(storage, tenant, people(3))
    campaign = schedule_campaign(storage, tenant)
    host.run_until(lambda: (j := job_of(storage, campaign)) is not None and j.status == JobStatus.COMPLETED)
    job = job_of(storage, campaign)
    for message in sim.messages():
        assert message["custom_args"]["job_id"] == job.id
        assert message["custom_args"]["tenant_id"] == tenant.id
        assert message["headers"]["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert message["headers"]["List-Unsubscribe"].startswith("<http")


def test_a_duplicate_task_message_sends_nobody_twice(storage, host, simulator):
    sim, _ = simulator
    tenant = make_tenant(storage)
    add_contacts(storage, tenant, people(60))
    campaign = schedule_campaign(storage, tenant)
    host.run_until(lambda: (j := job_of(storage, campaign)) is not None and j.status == JobStatus.COMPLETED)
    job = job_of(storage, campaign)
    for index in range(job.tasks_total):
        host.send(TaskTicket(tenant_id=tenant.id, job_id=job.id, task_index=index))
    assert len(sim.messages()) == 60
    assert Counter(m["to"] for m in sim.messages()).most_common(1)[0][1] == 1


def test_a_lease_that_expired_mid_chunk_leaves_that_chunk_unknown_not_resent(storage, host, simulator):
    sim, _ = simulator
    tenant = make_tenant(storage)
    add_contacts(storage, tenant, people(30))
    campaign = schedule_campaign(storage, tenant)
    # Expand only, then fake a host that recorded a chunk in flight and died.
    while (job := job_of(storage, campaign)) is None or not job.expanded:
        host.expand_round()
    job = job_of(storage, campaign)
    task = Task.from_entity(storage.table(TASKS).get(job.id, "000000"))
    task.status, task.in_flight, task.lease_until = (
        TaskStatus.SENDING.value,
        list(range(10)),
        "2000-01-01T00:00:00.000Z",
    )
    storage.table(TASKS).update(task.progress_entity())
    storage.queue(TASK_QUEUE).clear()

    host.send(TaskTicket(tenant_id=tenant.id, job_id=job.id, task_index=0))

    statuses = Counter(d["status"] for d in deliveries_of(storage, job.id))
    assert statuses == {DeliveryStatus.UNKNOWN: 10, DeliveryStatus.SENT: 20}
    assert len(sim.messages()) == 20
