"""In-flight rows: what a task run has handed to the provider is one row, and each recipient's row is
written once, with its outcome (``core/in_flight.py``).

The managers run in-process on the session's Azurite and send through the real ``sendgrid``
client to the SendGrid simulator; a provider hook reads the task's Deliveries partition at the
moment of hand-over, which is exactly what a host killed there would leave behind.
"""

from __future__ import annotations

import secrets
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta

import pytest

from core.clock import iso, utcnow
from core.in_flight import in_flight_row_key, is_in_flight_row, listed_in_flight
from core.models import InFlightRow, unpack_recipients
from core.settings import Settings
from core.status import DeliveryStatus, TaskStatus
from core.storage import DELIVERIES, TASKS, Storage
from devhost.sendgrid_sim import SendGridSimulator
from providers.base import OutboundEmail, SendResult
from providers.sendgrid import SendGridProvider
from task_manager import TaskOutcome
from tests.integration.test_api_jobs import V1, write_job
from tests.pipeline import InProcessHost, expanded_job
from tests.sim_fixtures import running_sendgrid_simulator


class WatchedProvider(SendGridProvider):
    """SendGrid, reading the task's Deliveries partition just before each hand-over."""

    def __init__(self, api_key: str, url: str, storage: Storage) -> None:
        super().__init__(api_key, url)
        self.storage, self.partition = storage, ""
        self.seen: list[tuple[list[str], dict[str, list[str]], set[str]]] = []

    def look(self, addresses: list[str]) -> None:
        rows = list(self.storage.table(DELIVERIES).partition(self.partition))
        marks = {row["RowKey"]: listed_in_flight(row) for row in rows if is_in_flight_row(row)}
        recorded = {row.get("email", "") for row in rows if not is_in_flight_row(row)}
        self.seen.append((addresses, marks, recorded))

    def send(self, email: OutboundEmail) -> SendResult:
        self.look([email.to_email])
        return super().send(email)

    def send_batch(self, messages, sandbox: bool = False):  # type: ignore[no-untyped-def]
        self.look([m.to_email for m in messages])
        return super().send_batch(messages, sandbox)


@pytest.fixture
def sim() -> Iterator[tuple[SendGridSimulator, str]]:
    with running_sendgrid_simulator() as running:
        yield running


def one_task(settings: Settings, batched: bool) -> Settings:
    return settings.model_copy(update={"task_size": 60, "task_window": 1, "send_group_size": 10,
                                       "sendgrid_batch_size": 10 if batched else 0})


@pytest.mark.parametrize("batched", [True, False], ids=["batched", "per-recipient"])
def test_a_group_in_the_providers_hands_is_named_by_the_runs_in_flight_row_and_has_no_row_of_its_own(
    storage, settings, sim, batched
):
    simulator, url = sim
    small = one_task(settings, batched)
    provider = WatchedProvider("SG.test", url, storage)
    host = InProcessHost(storage, small, provider)
    job, ticket = expanded_job(storage, host, 60)
    provider.partition = f"{job.id}-000000"

    assert host.send(ticket) == TaskOutcome.DONE

    attempt_row = in_flight_row_key(1)
    roster = unpack_recipients(storage.table(TASKS).get(job.id, "000000"))
    addresses_of = {r.contact_id: r.email for r in roster}
    assert len(provider.seen) == (6 if batched else 60)
    for handed, marks, recorded in provider.seen:
        named = {addresses_of[c] for c in marks[attempt_row]}
        assert set(handed) <= named and len(named) <= 10  # the whole group, and no more than it
        assert not named & recorded  # no recipient of the group has a row yet: it is written once
    rows = list(storage.table(DELIVERIES).partition(f"{job.id}-000000"))
    assert [listed_in_flight(r) for r in rows if is_in_flight_row(r)] == [[]]  # emptied at the end
    assert Counter(r["status"] for r in rows if not is_in_flight_row(r)) == {DeliveryStatus.SENT: 60}
    assert len(simulator.messages()) == 60


def test_recovery_makes_unknown_what_any_earlier_runs_in_flight_row_names_and_sends_the_rest(
    storage, settings, sim
):
    """Two earlier runs died (attempts 1 and 2), each with a group named in its own row: a late
    write of one run never hides what another handed over, so recovery takes both lists."""
    simulator, url = sim
    small = one_task(settings, batched=True)
    host = InProcessHost(storage, small, SendGridProvider("SG.test", url))
    job, ticket = expanded_job(storage, host, 60)
    recipients = unpack_recipients(storage.table(TASKS).get(job.id, "000000"))
    partition, now = f"{job.id}-000000", iso(utcnow())
    for attempt, group in ((1, recipients[:3]), (2, recipients[3:5])):
        storage.table(DELIVERIES).upsert(InFlightRow(
            partition, in_flight_row_key(attempt), job_id=job.id, tenant_id=job.tenant_id,
            in_flight=[r.contact_id for r in group], in_flight_count=len(group), updated_at=now,
        ).to_entity())
    expired = iso(utcnow() - timedelta(seconds=1))
    storage.table(TASKS).update({"PartitionKey": job.id, "RowKey": "000000", "status": "sending",
                                 "attempt": 2, "lease_owner": "dead-host", "lease_until": expired})

    assert host.send(ticket) == TaskOutcome.DONE

    rows = list(storage.table(DELIVERIES).partition(partition))
    status_of = {r["RowKey"]: r["status"] for r in rows if not is_in_flight_row(r)}
    assert {status_of[r.contact_id] for r in recipients[:5]} == {DeliveryStatus.UNKNOWN}
    assert Counter(status_of.values()) == {DeliveryStatus.UNKNOWN: 5, DeliveryStatus.SENT: 55}
    handed = {m["to"] for m in simulator.messages()}
    assert handed == {r.email for r in recipients[5:]}  # the named five never again
    assert all(listed_in_flight(r) == [] for r in rows if is_in_flight_row(r))  # all settled
    task = storage.table(TASKS).get(job.id, "000000")
    assert task["status"] == TaskStatus.DONE and task["attempt"] == 3


def test_the_api_shows_recipients_named_in_flight_as_sending(client, tenant, storage):
    job = write_job(storage, tenant.id, status="sending", roster_size=3)
    storage.table(TASKS).upsert({"PartitionKey": job.id, "RowKey": "000000", "status": "sending"})
    ids = [f"c{secrets.token_hex(8)}" for _ in range(3)]
    storage.table(DELIVERIES).upsert(InFlightRow(
        f"{job.id}-000000", in_flight_row_key(1), job_id=job.id, tenant_id=tenant.id, in_flight=ids[:2],
        in_flight_count=2, updated_at=iso(utcnow()),
    ).to_entity())

    deliveries = f"{V1}/jobs/{job.id}/deliveries"
    listed = client.get(deliveries, params={"status": "sending"}, headers=tenant.headers)
    everything = client.get(f"{V1}/jobs/{job.id}/deliveries", headers=tenant.headers)
    one = client.get(f"{V1}/jobs/{job.id}/deliveries/{ids[0]}", headers=tenant.headers)
    other = client.get(f"{V1}/jobs/{job.id}/deliveries/{ids[2]}", headers=tenant.headers)

    assert sorted(d["contact_id"] for d in listed.json()["items"]) == sorted(ids[:2])
    assert {d["status"] for d in listed.json()["items"]} == {"sending"}
    assert everything.json()["items"] == []  # the in-flight row is not a recipient
    assert one.status_code == 200 and one.json()["status"] == "sending"
    assert other.status_code == 404


def test_recipients_in_flight_are_listed_a_page_at_a_time_in_key_order(client, tenant, storage):
    job = write_job(storage, tenant.id, status="sending", roster_size=5)
    ids = sorted(f"c{secrets.token_hex(8)}" for _ in range(5))
    for task, names in (("000000", ids[:3]), ("000001", ids[3:])):
        storage.table(TASKS).upsert({"PartitionKey": job.id, "RowKey": task, "status": "sending"})
        storage.table(DELIVERIES).upsert(InFlightRow(
            f"{job.id}-{task}", in_flight_row_key(1), job_id=job.id, tenant_id=tenant.id,
            in_flight=names[::-1], in_flight_count=len(names), updated_at=iso(utcnow()),
        ).to_entity())

    seen, token, pages = [], None, 0
    while True:
        params = {"status": "sending", "limit": 2, **({"continuation": token} if token else {})}
        body = client.get(f"{V1}/jobs/{job.id}/deliveries", params=params, headers=tenant.headers).json()
        seen += [d["contact_id"] for d in body["items"]]
        pages, token = pages + 1, body["continuation"]
        if not token:
            break

    assert seen == ids and pages == 3
