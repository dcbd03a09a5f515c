"""Transactional email: ``POST /emails`` answers 202 at once and sends through the Task Manager path."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator

import pytest

from core.status import DeliveryStatus, JobStatus
from core.storage import JOBS, TASK_QUEUE
from devhost.sendgrid_sim import SendGridSimulator
from devhost.stack import serve_in_thread
from providers.sendgrid import SendGridProvider
from tests.pipeline import InProcessHost


@pytest.fixture
def sim() -> Iterator[tuple[SendGridSimulator, str]]:
    simulator = SendGridSimulator()
    with serve_in_thread(simulator.app) as url:
        yield simulator, url


def body(**extra) -> dict:
    return {
        "to": [f"t-{secrets.token_hex(3)}@example.com"],
        "from_email": "app@example.org",
        "subject": "Your code is {{ contact.attributes.code }}",
        "text": "Code: {{ contact.attributes.code }}",
        "data": {"code": "123456"},
        **extra,
    }


def drain(storage, settings, url: str, tenant_id: str, email_id: str) -> None:
    host = InProcessHost(storage, settings, SendGridProvider("SG.test", url))
    host.run_until(lambda: storage.table(JOBS).get(tenant_id, email_id)["status"] == JobStatus.COMPLETED, 60)


def test_post_emails_answers_202_with_an_id_and_sends_through_the_task_path(
    client, tenant, storage, settings, sim
):
    simulator, url = sim
    request = body()
    answer = client.post("/api/v1/emails", json=request, headers=tenant.headers)

    assert answer.status_code == 202
    email_id = answer.json()["id"]
    drain(storage, settings, url, tenant.id, email_id)
    shown = client.get(f"/api/v1/emails/{email_id}", headers=tenant.headers).json()
    assert shown["status"] == "completed"
    recipients = [(r["email"], r["status"]) for r in shown["recipients"]]
    assert recipients == [(request["to"][0], DeliveryStatus.SENT)]
    sent = simulator.messages()
    assert len(sent) == 1 and sent[0]["subject"] == "Your code is 123456"
    assert sent[0]["custom_args"]["job_id"] == email_id


def test_post_emails_twice_with_one_idempotency_key_gives_one_id_and_one_send(
    client, tenant, storage, settings, sim
):
    simulator, url = sim
    request = body(idempotency_key=f"order-{secrets.token_hex(4)}")
    first = client.post("/api/v1/emails", json=request, headers=tenant.headers)
    second = client.post("/api/v1/emails", json=request, headers=tenant.headers)

    assert first.status_code == second.status_code == 202
    assert first.json()["id"] == second.json()["id"]
    drain(storage, settings, url, tenant.id, first.json()["id"])
    third = client.post("/api/v1/emails", json=request, headers=tenant.headers)
    assert third.json()["id"] == first.json()["id"]
    assert storage.queue(TASK_QUEUE).depth() == 0
    assert len(simulator.messages()) == 1


def test_concurrent_posts_with_one_idempotency_key_agree_on_one_id(client, tenant):
    request = body(idempotency_key=f"race-{secrets.token_hex(4)}")
    ids: list[str] = []
    barrier = threading.Barrier(4)

    def post() -> None:
        barrier.wait()
        ids.append(client.post("/api/v1/emails", json=request, headers=tenant.headers).json()["id"])

    threads = [threading.Thread(target=post) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(ids)) == 1 and len(ids) == 4


def test_an_idempotency_key_is_per_tenant(client, new_tenant):
    key = f"shared-{secrets.token_hex(4)}"
    a, b = new_tenant(), new_tenant()
    first = client.post("/api/v1/emails", json=body(idempotency_key=key), headers=a.headers).json()["id"]
    second = client.post("/api/v1/emails", json=body(idempotency_key=key), headers=b.headers).json()["id"]
    assert first != second


def test_more_than_fifty_recipients_is_a_422_naming_the_field(client, tenant):
    request = body(to=[f"r{i}@example.com" for i in range(51)])
    answer = client.post("/api/v1/emails", json=request, headers=tenant.headers)
    assert answer.status_code == 422
    assert any(d["field"] == "to" for d in answer.json()["error"]["details"])


def test_another_tenants_email_is_404(client, new_tenant):
    a, b = new_tenant(), new_tenant()
    email_id = client.post("/api/v1/emails", json=body(), headers=a.headers).json()["id"]
    assert client.get(f"/api/v1/emails/{email_id}", headers=b.headers).status_code == 404


def test_a_support_key_cannot_send(client, tenant, support):
    assert client.post("/api/v1/emails", json=body(), headers=support).status_code == 403
