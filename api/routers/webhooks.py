"""The SendGrid event webhook (API.md "Delivery feedback and compliance").

SendGrid signs ``timestamp + raw body`` with ECDSA P-256 and sends the signature and the
timestamp in headers. We verify with SendGrid's own ``EventWebhook`` helper against the raw
bytes (never a re-serialized body), refuse stale timestamps (replays), and only then queue
the batch: the answer comes at once, the work happens on ``events-queue``. A request that
does not verify is 401 and nothing is queued. Queued events keep only what the processor reads
(``core.provider_events.queued_event``): never the address, which travels as its hash.
"""

from __future__ import annotations

import binascii
import json
import logging
import time
from typing import Any

from fastapi import APIRouter, Request
from sendgrid.helpers.eventwebhook import EventWebhook
from starlette.concurrency import run_in_threadpool

from api.dependencies import SettingsDep, StorageDep
from api.errors import ApiError, invalid
from api.routers.conventions import ERROR_RESPONSES
from api.schemas import WebhookAccepted
from core.provider_events import split_into_messages
from core.storage import EVENTS_QUEUE

router = APIRouter(tags=["webhooks"], responses=ERROR_RESPONSES)
log = logging.getLogger("mailroom.webhooks")

SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"


def signature_is_valid(
    public_key: str, body: bytes, signature: str, timestamp: str, max_age_seconds: int, now: float
) -> bool:
    """SendGrid's check (``EventWebhook.verify_signature``) plus the replay window."""
    if not public_key or not signature or not timestamp:
        return False
    try:
        signed_at = int(timestamp)
    except ValueError:
        return False
    if max_age_seconds and abs(now - signed_at) > max_age_seconds:
        return False
    try:
        payload = body.decode("utf-8")
        verifier = EventWebhook(public_key)
        return bool(verifier.verify_signature(payload, signature, timestamp))
    except (ValueError, binascii.Error, TypeError, UnicodeDecodeError):
        # A malformed key, signature or body is a failed check, never a 500.
        return False


def rejected() -> ApiError:
    return ApiError(401, "unauthorized", "the webhook signature does not verify")


@router.post("/webhooks/sendgrid", response_model=WebhookAccepted)
async def sendgrid_events(request: Request, settings: SettingsDep, storage: StorageDep) -> WebhookAccepted:
    body = await request.body()
    valid = signature_is_valid(
        settings.sendgrid_webhook_public_key, body, request.headers.get(SIGNATURE_HEADER, ""),
        request.headers.get(TIMESTAMP_HEADER, ""), settings.sendgrid_webhook_max_age_seconds, time.time(),
    )
    if not valid:
        log.warning("webhook rejected: signature or timestamp does not verify")
        raise rejected()
    events = parse_batch(body)
    messages, cut = split_into_messages(events)
    await run_in_threadpool(_enqueue, storage, messages)
    if cut:
        log.warning("webhook events left out (not an event object, or too large) dropped=%d", cut)
    return WebhookAccepted(events=len(events) - cut, messages=len(messages))


def parse_batch(body: bytes) -> list[Any]:
    """SendGrid posts a JSON array of events; anything else is a 400 (after the signature)."""
    try:
        value = json.loads(body)
    except ValueError as err:
        raise invalid("body", "not JSON", 400) from err
    if not isinstance(value, list):
        raise invalid("body", "must be a JSON array of events", 400)
    return value


def _enqueue(storage: Any, messages: list[str]) -> None:
    queue = storage.queue(EVENTS_QUEUE)
    for text in messages:
        queue.send(text)
