"""``POST /campaigns/{id}/test``: the campaign to a few addresses, marked as a test, outside any job."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from core.status import JobStatus
from core.storage import JOBS
from core.unsubscribe import read_token
from devhost.sendgrid_sim import SendGridSimulator
from providers.sendgrid import SendGridProvider
from tests.integration.conftest import random_email
from tests.pipeline import InProcessHost
from tests.sim_fixtures import running_sendgrid_simulator

V1 = "/api/v1"


@pytest.fixture
def sim() -> Iterator[tuple[SendGridSimulator, str]]:
    with running_sendgrid_simulator() as running:
        yield running


@pytest.fixture
def campaign(client, tenant, campaign_body) -> dict[str, Any]:
    created = client.post(f"{V1}/campaigns", json=campaign_body(), headers=tenant.headers)
    assert created.status_code == 201, created.text
    return created.json()


def post_test_send(client, tenant, campaign_id: str, to: list[str]):
    return client.post(f"{V1}/campaigns/{campaign_id}/test", json={"to": to}, headers=tenant.headers)


def sent_test(client, tenant, storage, settings, url: str, campaign_id: str, to: list[str]) -> str:
    """POST the test, run the Task and Status Managers until it closed; the email id."""
    answer = post_test_send(client, tenant, campaign_id, to)
    assert answer.status_code == 202, answer.text
    email_id = answer.json()["id"]
    host = InProcessHost(storage, settings, SendGridProvider("SG.test", url))
    host.run_until(lambda: storage.table(JOBS).get(tenant.id, email_id)["status"] == JobStatus.COMPLETED, 60)
    return email_id


def add_contact(client, tenant, **contact: Any) -> None:
    imported = client.post(f"{V1}/contacts", json=[contact], headers=tenant.headers).json()
    assert imported["rejected"] == [], imported


def test_a_test_send_renders_the_campaign_for_the_contact_with_that_address(
    client, tenant, storage, settings, sim, campaign
):
    simulator, url = sim
    address = random_email("ada")
    add_contact(client, tenant, email=address, name="Ada", attributes={"course": "CSE456"})

    sent_test(client, tenant, storage, settings, url, campaign["id"], [address])

    [message] = simulator.messages()
    assert message["to"] == address and message["subject"] == "[Test] Hello Ada"
    assert "about CSE456" in message["html"]


def test_a_test_send_to_an_address_without_a_contact_uses_sample_data(
    client, tenant, storage, settings, sim, campaign
):
    simulator, url = sim
    sent_test(client, tenant, storage, settings, url, campaign["id"], [random_email("nobody")])

    [message] = simulator.messages()
    assert message["subject"] == "[Test] Hello Test Recipient"
    assert message["html"].startswith("<p>Hi Test Recipient, about </p>")


def test_a_test_send_carries_a_signed_unsubscribe_link_naming_the_campaign(
    client, tenant, storage, settings, sim, campaign
):
    simulator, url = sim
    sent_test(client, tenant, storage, settings, url, campaign["id"], [random_email()])

    headers = simulator.messages()[0]["headers"]
    assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    token = headers["List-Unsubscribe"].strip("<>").rsplit("/", 1)[1]
    claim = read_token(settings.signing_key, token)
    assert claim is not None and (claim.tenant_id, claim.campaign_id) == (tenant.id, campaign["id"])


def test_get_emails_shows_a_test_send_as_sent_and_names_its_campaign(
    client, tenant, storage, settings, sim, campaign
):
    _, url = sim
    address = random_email()
    email_id = sent_test(client, tenant, storage, settings, url, campaign["id"], [address])

    shown = client.get(f"{V1}/emails/{email_id}", headers=tenant.headers).json()
    assert (shown["kind"], shown["campaign_id"], shown["status"]) == ("test", campaign["id"], "completed")
    assert [(r["email"], r["status"]) for r in shown["recipients"]] == [(address, "sent")]


def test_a_test_send_leaves_the_campaigns_status_counts_and_jobs_as_they_were(
    client, tenant, storage, settings, sim, campaign
):
    _, url = sim
    sent_test(client, tenant, storage, settings, url, campaign["id"], [random_email(), random_email()])

    after = client.get(f"{V1}/campaigns/{campaign['id']}", headers=tenant.headers).json()
    assert (after["status"], after["counts"], after["jobs"]) == ("draft", campaign["counts"], [])
    jobs = client.get(f"{V1}/campaigns/{campaign['id']}/jobs", headers=tenant.headers).json()
    assert jobs["items"] == []


def test_a_scheduled_campaign_can_be_test_sent_and_stays_scheduled(
    client, tenant, storage, settings, sim, campaign_body
):
    simulator, url = sim
    send_at = (datetime.now(UTC) + timedelta(days=3)).isoformat()
    created = client.post(f"{V1}/campaigns", json=campaign_body(send_at=send_at), headers=tenant.headers)
    campaign = created.json()

    sent_test(client, tenant, storage, settings, url, campaign["id"], [random_email()])

    assert len(simulator.messages()) == 1
    shown = client.get(f"{V1}/campaigns/{campaign['id']}", headers=tenant.headers).json()
    assert shown["status"] == "scheduled"


def test_a_suppressed_address_is_not_sent_a_test_and_ends_suppressed(
    client, tenant, storage, settings, sim, campaign
):
    simulator, url = sim
    suppressed, fine = random_email("gone"), random_email("fine")
    client.post(f"{V1}/suppressions", json={"email": suppressed}, headers=tenant.headers)

    email_id = sent_test(client, tenant, storage, settings, url, campaign["id"], [suppressed, fine])

    assert [m["to"] for m in simulator.messages()] == [fine]
    shown = client.get(f"{V1}/emails/{email_id}", headers=tenant.headers).json()
    assert {r["email"]: r["status"] for r in shown["recipients"]} == {suppressed: "suppressed", fine: "sent"}


def test_a_support_key_cannot_test_send(client, tenant, support, campaign):
    answer = client.post(f"{V1}/campaigns/{campaign['id']}/test", json={"to": [random_email()]},
                         headers=support)
    assert answer.status_code == 403


def test_another_tenants_campaign_cannot_be_test_sent(client, new_tenant, campaign):
    other = new_tenant()
    answer = post_test_send(client, other, campaign["id"], [random_email()])
    assert answer.status_code == 404 and answer.json()["error"]["message"] == "campaign not found"


def test_more_than_five_addresses_is_a_422_naming_to(client, tenant, campaign):
    answer = post_test_send(client, tenant, campaign["id"], [random_email() for _ in range(6)])
    assert answer.status_code == 422
    assert [d["field"] for d in answer.json()["error"]["details"]] == ["to"]


def test_a_bad_address_is_a_422_naming_its_position(client, tenant, campaign):
    answer = post_test_send(client, tenant, campaign["id"], ["not-an-address", random_email()])
    assert answer.status_code == 422
    assert [d["field"] for d in answer.json()["error"]["details"]] == ["to.0"]


def test_a_test_send_from_a_domain_the_tenant_may_no_longer_use_is_422(client, admin, tenant, campaign):
    client.patch(f"{V1}/tenants/{tenant.id}", json={"sender_domains": ["uni.example"]}, headers=admin)
    answer = post_test_send(client, tenant, campaign["id"], [random_email()])
    assert answer.status_code == 422
    assert [d["field"] for d in answer.json()["error"]["details"]] == ["template.from_email"]
