"""The SendGrid simulator's feedback: signed event webhook batches posted back to the app.

Real SendGrid reports what happened to each message by POSTing JSON arrays of events to
the app's webhook, signed with ECDSA P-256 over ``timestamp + body``. It batches them, does
not keep them in order, sends some twice, and retries a batch the app did not accept. The
``EventFeedback`` here does the same, from the records the simulator accepted:

- every message: ``processed``, then ``delivered`` (plus an ``open``, and a ``click`` for
  some), unless the local part of the address says otherwise:
- ``bounce-*@…``: ``bounce`` (hard, 5.1.1); ``blocked-*@…``: ``bounce`` of type ``blocked``
  (a soft bounce); ``complain-*@…``: ``delivered`` then ``spamreport``; ``slow-*@…``:
  ``deferred`` then ``delivered``.

Plug it in with ``simulator.listeners.append(feedback)`` and ``feedback.start()``.
"""

from __future__ import annotations

import base64
import json
import logging
import random
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"

log = logging.getLogger("devhost.sendgrid_events")


class WebhookSigner:
    """An ECDSA P-256 key pair that signs webhook bodies the way SendGrid does."""

    def __init__(self, private_key: ec.EllipticCurvePrivateKey | None = None) -> None:
        self._key = private_key or ec.generate_private_key(ec.SECP256R1())

    @property
    def public_key(self) -> str:
        """What SendGrid shows as the verification key: base64 DER (SubjectPublicKeyInfo)."""
        der = self._key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return base64.b64encode(der).decode()

    def sign(self, body: bytes, timestamp: str) -> str:
        signature = self._key.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
        return base64.b64encode(signature).decode()

    def headers(self, body: bytes, timestamp: int | None = None) -> dict[str, str]:
        stamp = str(int(time.time()) if timestamp is None else timestamp)
        return {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: self.sign(body, stamp),
            TIMESTAMP_HEADER: stamp,
        }


def events_for(record: dict[str, Any], rng: random.Random, now: int | None = None) -> list[dict[str, Any]]:
    """The events SendGrid would report for one accepted message (see the module doc)."""
    now = int(time.time()) if now is None else now
    to = str(record["to"])
    local = to.split("@", 1)[0].lower()
    base = {
        "email": to,
        "sg_message_id": record.get("sg_message_id")
        or f"{record['message_id']}.filter0001.{rng.randint(1000, 9999)}.0",
        "smtp-id": f"<{record['message_id']}@sim.sendgrid.local>",
        **{k: str(v) for k, v in (record.get("custom_args") or {}).items()},
    }

    def event(kind: str, offset: int, **extra: Any) -> dict[str, Any]:
        return {**base, "event": kind, "timestamp": now + offset, "sg_event_id": secrets.token_urlsafe(16),
                **extra}

    events = [event("processed", 0)]
    if local.startswith("bounce-"):
        events.append(event("bounce", 1, type="bounce", status="5.1.1",
                            reason=f"550 5.1.1 <{to}>: Recipient address rejected: User unknown"))
    elif local.startswith("blocked-"):
        events.append(event("bounce", 1, type="blocked", status="4.7.1",
                            reason="421 4.7.1 Temporarily rate limited; try again later"))
    elif local.startswith("complain-"):
        events += [event("delivered", 1, response="250 2.0.0 OK"), event("spamreport", 3)]
    elif local.startswith("slow-"):
        events += [event("deferred", 1, attempt="1", response="451 4.3.2 Please try again later"),
                   event("delivered", 5, response="250 2.0.0 OK")]
    else:
        events += [event("delivered", 1, response="250 2.0.0 OK"), event("open", 4, useragent="Mozilla/5.0")]
        if rng.random() < 0.3:
            events.append(event("click", 6, url="https://example.org/survey"))
    return events


@dataclass
class FeedbackStats:
    events: int = 0  # distinct events generated
    posts: int = 0  # POSTs attempted
    accepted: int = 0  # POSTs the app answered 2xx
    failed: int = 0  # POSTs that failed and were retried later
    duplicates: int = 0  # events sent a second time on purpose


class EventFeedback:
    """Collects the simulator's accepted records and posts their events to ``url`` in batches.

    Like SendGrid: batches of up to ``batch_size`` events, shuffled, ``duplicate_rate`` of
    them sent twice (in another batch), and a batch the app refused or did not answer is
    retried with back-off until ``max_attempts``.
    """

    def __init__(
        self,
        url: str,
        signer: WebhookSigner,
        batch_size: int = 200,
        interval: float = 0.5,
        duplicate_rate: float = 0.1,
        max_attempts: int = 20,
        seed: int | None = None,
        post: Callable[[str, bytes, dict[str, str]], int] | None = None,
    ) -> None:
        self.url = url
        self.signer = signer
        self.batch_size = batch_size
        self.interval = interval
        self.duplicate_rate = duplicate_rate
        self.max_attempts = max_attempts
        self.stats = FeedbackStats()
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._pending: list[dict[str, Any]] = []
        self._retries: list[tuple[float, int, list[dict[str, Any]]]] = []  # (due, attempt, batch)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._post = post or self._http_post
        self._client: httpx.Client | None = None

    # -- the simulator's listener ------------------------------------------------------------
    def __call__(self, records: list[dict[str, Any]]) -> None:
        with self._lock:
            for record in records:
                events = events_for(record, self._rng)
                self.stats.events += len(events)
                self._pending.extend(events)
                for extra in events:
                    if self._rng.random() < self.duplicate_rate:
                        self._pending.append(extra)
                        self.stats.duplicates += 1

    # -- the posting thread --------------------------------------------------------------------
    def start(self) -> EventFeedback:
        self._client = httpx.Client(timeout=10)
        self._thread = threading.Thread(target=self._run, name="sendgrid-events", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=15)
        if self._client is not None:
            self._client.close()

    def idle(self) -> bool:
        """Nothing waiting to be posted (tests and the demo poll this with a deadline)."""
        with self._lock:
            return not self._pending and not self._retries

    def flush_once(self) -> None:
        """Post what is pending now (one round of the thread's loop)."""
        for attempt, batch in self._take_batches():
            self._send(attempt, batch)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.flush_once()
            except Exception:  # noqa: BLE001 - the feedback thread must outlive a bad round
                log.exception("event feedback round failed")

    def _take_batches(self) -> list[tuple[int, list[dict[str, Any]]]]:
        now = time.monotonic()
        with self._lock:
            pending, self._pending = self._pending, []
            due = [(attempt, batch) for at, attempt, batch in self._retries if at <= now]
            self._retries = [entry for entry in self._retries if entry[0] > now]
        self._rng.shuffle(pending)
        batches = [(0, pending[i:i + self.batch_size]) for i in range(0, len(pending), self.batch_size)]
        return due + batches

    def _send(self, attempt: int, batch: list[dict[str, Any]]) -> None:
        body = json.dumps(batch, separators=(",", ":")).encode()
        self.stats.posts += 1
        try:
            status = self._post(self.url, body, self.signer.headers(body))
        except httpx.HTTPError:
            status = 0
        if 200 <= status < 300:
            self.stats.accepted += 1
            return
        self.stats.failed += 1
        if attempt + 1 >= self.max_attempts:
            log.warning("event batch given up after %d attempts events=%d", attempt + 1, len(batch))
            return
        delay = min(30.0, 0.5 * 2**attempt)
        with self._lock:
            self._retries.append((time.monotonic() + delay, attempt + 1, batch))

    def _http_post(self, url: str, body: bytes, headers: dict[str, str]) -> int:
        assert self._client is not None
        return self._client.post(url, content=body, headers=headers).status_code


def attach_feedback(simulator: Any, url: str, signer: WebhookSigner, **options: Any) -> EventFeedback:
    """Start posting ``simulator``'s events to ``url`` (signed with ``signer``)."""
    feedback = EventFeedback(url, signer, **options).start()
    simulator.listeners.append(feedback)
    return feedback
