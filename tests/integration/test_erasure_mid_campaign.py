"""A contact deleted while its campaign runs is not mailed, and no later row, task or log holds it."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

import task_manager.sending as sending
from core.messages import TaskTicket
from core.models import Job, Tenant
from core.storage import DELIVERIES, ERASURES, TASK_QUEUE, Storage
from privacy.erasure import SendInProgress, erase_contact_traces
from providers.base import OutboundEmail, SendResult
from providers.sendgrid import SendGridProvider
from status_manager.delivery_logs import write_delivery_log
from tests.integration.conftest import bearer
from tests.integration.delivery_helpers import addresses_everywhere, drain_events_queue, people
from tests.pipeline import InProcessHost, add_contacts, job_of, make_tenant, schedule_campaign, sendgrid_host
from tests.sim_fixtures import running_sendgrid_simulator

ERASED = {"status": "skipped", "reason": "contact deleted", "email": ""}


@pytest.fixture
def simulator() -> Iterator[tuple[object, str]]:
    with running_sendgrid_simulator() as (sim, url):
        yield sim, url


@pytest.fixture
def host(storage, settings, simulator) -> InProcessHost:
    _, url = simulator
    return sendgrid_host(storage, settings, url, task_size=2, task_window=1)


@pytest.fixture
def tenant_auth(storage, client, admin) -> tuple[Tenant, dict[str, str]]:
    tenant = make_tenant(storage)
    made = client.post(f"/api/v1/tenants/{tenant.id}/keys", json={"role": "tenant"}, headers=admin)
    return tenant, bearer(made.json()["key"])


def send_next_task(storage: Storage, host: InProcessHost) -> None:
    message = storage.queue(TASK_QUEUE).receive(1, visibility_timeout=60)[0]
    host.send(TaskTicket.model_validate_json(message.content))
    storage.queue(TASK_QUEUE).delete(message)


def close_with_log(storage: Storage, host: InProcessHost, campaign) -> Job:
    host.run_until(lambda: (job := job_of(storage, campaign)) is not None and job.status == "completed")
    drain_events_queue(storage, host.settings)  # writes the delivery log (CSV, history)
    return job_of(storage, campaign)


def delivery_of(storage: Storage, job: Job, contact_id: str) -> dict:
    row = next(iter(storage.table(DELIVERIES).query(
        "PartitionKey ge @lo and PartitionKey lt @hi and RowKey eq @c",
        {"lo": f"{job.id}-", "hi": f"{job.id}.", "c": contact_id})))
    return {"status": row["status"], "reason": row["reason"], "email": row["email"]}


def test_a_contact_deleted_while_its_task_is_pending_is_skipped_and_never_sent(
    storage, host, simulator, client, tenant_auth
):
    sim, _ = simulator
    tenant, auth = tenant_auth
    rows = people("a1", "a2", "a3", "a4", "a5", "a6")
    ids = add_contacts(storage, tenant, rows)
    campaign = schedule_campaign(storage, tenant)
    host.expand_round()
    send_next_task(storage, host)  # the job is under way: one task of three sent
    sent = {m["to"] for m in sim.messages()}
    later = next(i for i, r in enumerate(rows) if r["email"] not in sent)

    assert client.delete(f"/api/v1/contacts/{ids[later]}", headers=auth).status_code == 204
    job = close_with_log(storage, host, campaign)

    assert sim.messages(to=rows[later]["email"]) == []
    assert delivery_of(storage, job, ids[later]) == ERASED
    assert sum(job.counts.values()) == job.roster_size == 6 and job.counts["skipped"] == 1
    assert addresses_everywhere(storage, rows[later]["email"]) == set()


def test_a_contact_deleted_between_its_sending_mark_and_the_send_is_not_sent(
    storage, host, simulator, monkeypatch, tenant_auth
):
    """The DELETE's marker lands after the contact's send group was marked ``sending``: the DELETE
    cannot know whether the owner's check saw it, so it does not return (409) while the row says
    ``sending``; the check after the mark does see it, so nothing is sent and a repeated DELETE
    succeeds."""
    sim, _ = simulator
    tenant, _ = tenant_auth
    rows = people("b1", "b2")
    ids = add_contacts(storage, tenant, rows)
    campaign = schedule_campaign(storage, tenant)
    host.expand_round()
    mark_group_sending = sending.mark_group_sending  # looked up there by GroupSender.send_chunk
    refused: list[Exception] = []

    def mark_then_delete(run, outcomes, group):
        marked = mark_group_sending(run, outcomes, group)
        try:
            erase_contact_traces(storage, tenant.id, ids[0], rows[0]["email"], wait_seconds=0.5)
        except SendInProgress as err:
            refused.append(err)
        return marked

    monkeypatch.setattr(sending, "mark_group_sending", mark_then_delete)
    send_next_task(storage, host)
    monkeypatch.setattr(sending, "mark_group_sending", mark_group_sending)
    erase_contact_traces(storage, tenant.id, ids[0], rows[0]["email"], wait_seconds=0.5)  # the retry
    job = close_with_log(storage, host, campaign)

    assert len(refused) == 1
    assert sim.messages(to=rows[0]["email"]) == [] and len(sim.messages(to=rows[1]["email"])) == 1
    assert delivery_of(storage, job, ids[0]) == ERASED


class HookedProvider(SendGridProvider):
    """SendGrid, with a hook run just before one address is handed over, alone or in a batch (in the
    send thread)."""

    def __init__(self, api_key: str, url: str, address: str, hook) -> None:
        super().__init__(api_key, url)
        self.address, self.hook = address, hook
        self.sent_at: float | None = None

    def send(self, email: OutboundEmail) -> SendResult:
        if email.to_email == self.address:
            self.hook()
            result = super().send(email)
            self.sent_at = time.monotonic()
            return result
        return super().send(email)

    def send_batch(self, messages, sandbox: bool = False):  # type: ignore[no-untyped-def]
        if any(m.to_email == self.address for m in messages):
            self.hook()
            outcomes = super().send_batch(messages, sandbox)
            self.sent_at = time.monotonic()
            return outcomes
        return super().send_batch(messages, sandbox)


def test_a_delete_during_the_send_of_its_chunk_returns_after_the_send_and_blanks_the_row(
    storage, settings, simulator, tenant_auth
):
    sim, url = simulator
    tenant, _ = tenant_auth
    rows = people("c1", "c2", "c3")
    ids = add_contacts(storage, tenant, rows)
    returned: list[float] = []

    def delete_in_another_thread() -> None:
        def delete() -> None:
            erase_contact_traces(storage, tenant.id, ids[0], rows[0]["email"])
            returned.append(time.monotonic())

        threading.Thread(target=delete, daemon=True).start()
        deadline = time.monotonic() + 10
        while not list(storage.table(ERASURES).partition(tenant.id)):  # its marker is written
            assert time.monotonic() < deadline, "the DELETE wrote no erasure marker"
            time.sleep(0.05)
        time.sleep(0.3)  # give a DELETE that does not wait the time to return before the send

    provider = HookedProvider("SG.test", url, rows[0]["email"], delete_in_another_thread)
    sized = settings.model_copy(update={"task_size": 3, "task_window": 1})
    host = InProcessHost(storage, sized, provider)
    campaign = schedule_campaign(storage, tenant)
    host.expand_round()
    send_next_task(storage, host)
    deadline = time.monotonic() + 20
    while not returned:
        assert time.monotonic() < deadline, "the DELETE never returned"
        time.sleep(0.05)
    job = close_with_log(storage, host, campaign)

    assert provider.sent_at is not None and returned[0] > provider.sent_at  # it was already sending
    assert delivery_of(storage, job, ids[0])["email"] == ""
    assert addresses_everywhere(storage, rows[0]["email"]) == {"Contacts"}  # the API deletes it next


def test_rows_a_racing_writer_left_are_blanked_when_the_delivery_log_is_written(
    storage, host, simulator, tenant_auth
):
    """A task claimed before the DELETE keeps its copy of the address; whatever it (or a
    cancel, a recovery) wrote with it is blanked when the job's log is written."""
    tenant, _ = tenant_auth
    rows = people("e1", "e2")
    ids = add_contacts(storage, tenant, rows)
    campaign = schedule_campaign(storage, tenant)
    job = close_with_log(storage, host, campaign)  # sent to both, rows hold both addresses
    storage.table(ERASURES).upsert({  # an erasure that landed just after the rows were written
        "PartitionKey": tenant.id, "RowKey": f"{job.started_at}|{ids[0]}", "contact_id": ids[0],
        "erased_at": job.started_at,
    })

    write_delivery_log(storage, tenant.id, job.id)

    assert delivery_of(storage, job, ids[0])["email"] == ""
    assert addresses_everywhere(storage, rows[0]["email"]) == {"Contacts"}  # the contact itself stays
    assert addresses_everywhere(storage, rows[1]["email"]) >= {"Deliveries", "Tasks", "blob"}
