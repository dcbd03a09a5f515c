"""POST /webhooks/sendgrid: SendGrid's signature check, the replay window, and the queue hand-off."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from core.ids import email_hash
from core.provider_events import EventBatch
from core.storage import EVENTS_QUEUE
from devhost.sendgrid_events import SIGNATURE_HEADER, TIMESTAMP_HEADER, WebhookSigner

URL = "/api/v1/webhooks/sendgrid"


@pytest.fixture
def signer() -> WebhookSigner:
    return WebhookSigner()


@pytest.fixture
def webhook(settings, storage, signer) -> Iterator[TestClient]:
    configured = settings.model_copy(update={"sendgrid_webhook_public_key": signer.public_key,
                                             "sendgrid_webhook_max_age_seconds": 300})
    with TestClient(create_app(configured, storage)) as client:
        yield client


def batch(n: int = 3, pad: int = 0) -> bytes:
    events = [{"event": "delivered", "email": f"p{i}@example.com", "timestamp": int(time.time()),
               "sg_event_id": f"e{i}", "tenant_id": "t", "job_id": "j", "task_id": "000000",
               "contact_id": f"c{i}", "reason": "x" * pad} for i in range(n)]
    return json.dumps(events).encode()


def queued(storage) -> list[EventBatch]:
    return [EventBatch.model_validate_json(text) for text in storage.queue(EVENTS_QUEUE).peek(32)]


def flip(text: str, index: int) -> str:
    raw = bytearray(base64.b64decode(text))
    raw[index] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()


def test_a_signed_batch_is_queued_and_answered_at_once(webhook, storage, signer):
    body = batch(3)
    response = webhook.post(URL, content=body, headers=signer.headers(body))
    assert response.status_code == 200, response.text
    assert response.json() == {"events": 3, "messages": 1}
    (message,) = queued(storage)
    assert [e["sg_event_id"] for e in message.events] == ["e0", "e1", "e2"]


@pytest.mark.parametrize("forgery", ["body byte flipped", "signature byte flipped", "stale timestamp",
                                     "other key", "no signature"])
def test_a_forged_or_altered_webhook_gets_401_and_changes_nothing(webhook, storage, signer, forgery):
    body = batch(2)
    headers = signer.headers(body)
    if forgery == "body byte flipped":
        body = body.replace(b"delivered", b"dElivered", 1)
    elif forgery == "signature byte flipped":
        headers[SIGNATURE_HEADER] = flip(headers[SIGNATURE_HEADER], 20)
    elif forgery == "stale timestamp":
        headers = signer.headers(body, timestamp=int(time.time()) - 3600)
    elif forgery == "other key":
        headers = WebhookSigner().headers(body)
    else:
        headers.pop(SIGNATURE_HEADER)

    response = webhook.post(URL, content=body, headers=headers)

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"
    assert queued(storage) == []


def test_without_a_configured_key_every_webhook_is_refused(client, storage, signer):
    body = batch(1)
    assert client.post(URL, content=body, headers=signer.headers(body)).status_code == 401
    assert queued(storage) == []


def test_max_age_zero_accepts_a_recorded_batch_replayed_later(settings, storage, signer):
    replay = settings.model_copy(update={"sendgrid_webhook_public_key": signer.public_key,
                                         "sendgrid_webhook_max_age_seconds": 0})
    body = batch(1)
    headers = signer.headers(body, timestamp=int(time.time()) - 86_400)
    with TestClient(create_app(replay, storage)) as client:
        assert client.post(URL, content=body, headers=headers).status_code == 200


def test_a_large_batch_is_split_into_queue_messages_under_64_kib(webhook, storage, signer):
    body = batch(200, pad=490)
    response = webhook.post(URL, content=body, headers=signer.headers(body))
    assert response.status_code == 200
    assert response.json()["messages"] > 1
    texts = storage.queue(EVENTS_QUEUE).peek(32)
    assert all(len(base64.b64encode(t.encode())) <= 64 * 1024 for t in texts)
    assert sum(len(EventBatch.model_validate_json(t).events) for t in texts) == 200


def test_a_signed_body_that_is_not_an_event_array_is_400(webhook, signer):
    body = b'{"event": "delivered"}'
    assert webhook.post(URL, content=body, headers=signer.headers(body)).status_code == 400
    assert TIMESTAMP_HEADER in signer.headers(body)


def test_the_queued_events_of_a_webhook_batch_hold_no_address(webhook, storage, signer):
    address = "Ada.Lovelace@Example.com"
    events = [
        {"event": "bounce", "email": address, "timestamp": int(time.time()), "sg_event_id": "b1",
         "sg_message_id": "m1.filter", "type": "bounce", "status": "5.1.1",
         "reason": f"550 5.1.1 <{address}>: Recipient address rejected", "ip": "203.0.113.9",
         "tenant_id": "t", "job_id": "j", "task_id": "000000", "contact_id": "c1"},
        {"event": "click", "email": address, "timestamp": int(time.time()), "sg_event_id": "k1",
         "url": f"https://example.org/?who={address}", "useragent": "Mozilla/5.0",
         "tenant_id": "t", "job_id": "j", "task_id": "000000", "contact_id": "c1", "note": address},
    ]
    body = json.dumps(events).encode()
    assert webhook.post(URL, content=body, headers=signer.headers(body)).status_code == 200

    (text,) = storage.queue(EVENTS_QUEUE).peek(32)
    assert "@" not in text and "lovelace" not in text.lower()
    bounce, click = EventBatch.model_validate_json(text).events
    assert bounce["email_hash"] == click["email_hash"] == email_hash("ada.lovelace@example.com")
    assert (bounce["event"], bounce["status"], bounce["sg_message_id"], bounce["contact_id"]) == (
        "bounce", "5.1.1", "m1.filter", "c1")
    assert bounce["reason"] == "550 5.1.1 <<address>>: Recipient address rejected"
    assert not {"ip", "url", "useragent", "note"} & (set(bounce) | set(click))
