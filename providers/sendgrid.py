"""SendGrid v3 Mail Send adapter.

Uses the official ``sendgrid`` client so the wire format and headers are the ones SendGrid
supports. The interesting part is the error mapping: the Task Manager decides between
retry, fail-the-recipient, pause-the-job and ``unknown`` from the exception class alone,
so every failure below is sorted by *whether the request could have been accepted*.

urllib (under ``python_http_client``) wraps anything that fails while connecting or
writing the request in ``URLError``: the request never fully reached SendGrid, so it is
safe to retry. Anything that fails after the request was written (waiting for or reading
the response) may have been accepted, so it is ambiguous and must never be resent.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import logging
import re
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

import sendgrid
from python_http_client.client import Response
from python_http_client.exceptions import HTTPError

from core.errors import (
    AmbiguousSendError,
    ProviderUnavailable,
    RecipientRejected,
    SendError,
    Throttled,
    TransientSendError,
)
from providers.base import OutboundEmail, SendResult
from providers.keepalive import KeepAliveTransport

# python_http_client logs the full request payload (addresses, bodies) at DEBUG. We never
# log addresses, so keep that logger above DEBUG whatever the root level is.
logging.getLogger("python_http_client.client").setLevel(logging.INFO)

NAME = "sendgrid"
# SendGrid's limits per Mail Send request: personalizations, and recipients (to + cc + bcc).
MAX_BATCH = 1000
# A 400's field for one personalization (we put one recipient in each): its index.
_PERSONALIZATION_FIELD = re.compile(r"personalizations\.(\d+)(?:\.|$)")
_EMAIL_RE = re.compile(r"[^\s<>()\[\]\"',;:]+@[^\s<>()\[\]\"',;:]+")
_MAX_REASON = 500


def build_payload(email_: OutboundEmail) -> dict[str, Any]:
    """The v3 ``mail/send`` body for one recipient.

    Built by hand rather than with ``sendgrid.helpers.mail`` so the exact JSON is visible
    and testable; names are omitted when empty because SendGrid treats them as optional.
    """
    to: dict[str, str] = {"email": email_.to_email}
    if email_.to_name:
        to["name"] = email_.to_name
    sender: dict[str, str] = {"email": email_.from_email}
    if email_.from_name:
        sender["name"] = email_.from_name
    # SendGrid requires text/plain before text/html and rejects empty values.
    content = [
        {"type": kind, "value": value}
        for kind, value in (("text/plain", email_.text), ("text/html", email_.html))
        if value
    ]
    payload: dict[str, Any] = {
        "personalizations": [{"to": [to]}],
        "from": sender,
        "subject": email_.subject,
        "content": content,
    }
    if email_.reply_to:
        payload["reply_to"] = {"email": email_.reply_to}
    if email_.headers:
        payload["headers"] = {str(k): str(v) for k, v in email_.headers.items()}
    if email_.custom_args:
        # SendGrid rejects the whole request when a custom_args value is not a string.
        payload["custom_args"] = {str(k): str(v) for k, v in email_.custom_args.items()}
    return payload


def build_batch_payload(messages: Sequence[OutboundEmail]) -> dict[str, Any]:
    """One v3 ``mail/send`` body for many recipients of one shared body.

    The content, sender and reply-to come from the first message (``send_batch`` checked they
    are the same in all); each recipient is one personalization with its own ``to``,
    ``custom_args`` (our ids: the events of its email carry them), ``headers`` (its
    List-Unsubscribe), ``substitutions`` and, where it differs, ``subject``.
    """
    payload = build_payload(messages[0])
    subject = messages[0].subject
    payload.pop("headers", None)
    payload.pop("custom_args", None)
    personalizations = []
    for message in messages:
        to: dict[str, str] = {"email": message.to_email}
        if message.to_name:
            to["name"] = message.to_name
        personalization: dict[str, Any] = {"to": [to]}
        if message.subject != subject:
            personalization["subject"] = message.subject
        if message.headers:
            personalization["headers"] = {str(k): str(v) for k, v in message.headers.items()}
        if message.custom_args:
            personalization["custom_args"] = {str(k): str(v) for k, v in message.custom_args.items()}
        if message.substitutions:
            personalization["substitutions"] = {str(k): str(v) for k, v in message.substitutions.items()}
        personalizations.append(personalization)
    payload["personalizations"] = personalizations
    return payload


class _Refused(Exception):
    """A 400 from SendGrid: which personalizations it named, and what it said about each."""

    def __init__(self, named: dict[int, list[str]], messages: list[str]) -> None:
        super().__init__("refused")
        self.named = named
        self.messages = messages


class SendGridProvider:
    """Sends through the SendGrid v3 API; safe to call from many threads.

    The ``sendgrid`` library supplies the request (its ``/v3/mail/send`` URL, Authorization,
    User-Agent and Accept headers), ``python_http_client`` the response and error types, and
    ``providers/keepalive.py`` the connection. Calling ``client.mail.send.post`` instead would
    build a fresh urllib opener (scanning the environment for proxies) and a fresh connection
    for every email: 65% of the CPU of a send, measured with cProfile.
    """

    name = NAME

    def __init__(self, api_key: str, api_url: str, timeout: float = 10.0) -> None:
        self._api_key = api_key
        self._api_url = api_url.rstrip("/")
        self._timeout = timeout
        self.transport = KeepAliveTransport()
        self._headers: dict[str, str] = {}
        if api_key:  # without one the library would read SENDGRID_API_KEY; ``send`` refuses instead
            library = sendgrid.SendGridAPIClient(api_key=api_key, host=self._api_url)
            self._headers = {**library.client.request_headers, "Content-Type": "application/json"}
        self._url = f"{self._api_url}/v3/mail/send"

    def send(self, email: OutboundEmail) -> SendResult:
        """POST one message; return SendGrid's ``X-Message-Id`` or raise a ``SendError``."""
        return self._post(email, build_payload(email))

    def validate(self, email: OutboundEmail) -> SendResult:
        """Have SendGrid validate the message without delivering it (``mail_settings.sandbox_mode``).

        SendGrid answers 200 with no message id and sends nothing; a request it would refuse
        gets the same 400 (and the same error mapping) as a real send, so a dry run shows the
        provider's own per-recipient rejections.
        """
        payload = build_payload(email)
        payload["mail_settings"] = {"sandbox_mode": {"enable": True}}
        return self._post(email, payload)

    def validate_batch(self, messages: Sequence[OutboundEmail]) -> list[SendResult | SendError]:
        """``send_batch`` in SendGrid's sandbox mode: validated as one request, delivered to nobody
        (a dry run of a batched job); a 400 names the recipients it refuses, as a real send's does."""
        return self.send_batch(messages, sandbox=True)

    def send_batch(
        self, messages: Sequence[OutboundEmail], sandbox: bool = False
    ) -> list[SendResult | SendError]:
        """Send up to ``MAX_BATCH`` recipients of one shared body in one request; an outcome each.

        ``messages`` share from, reply-to, html and text (the job's skeleton with placeholders);
        each brings its recipient, ids, headers, subject and ``substitutions``. The outcomes
        are in the same order, each a ``SendResult`` (message id: the request's
        ``X-Message-Id`` and the email's position in it, ``"<X-Message-Id>.<k>"``: SendGrid's
        ``sg_message_id`` for that email is ``<X-Message-Id>.<filter>.<k>``) or the
        ``SendError`` the Task Manager would have got from ``send`` for that recipient:

        - a 400 naming recipients (a bad or repeated address: SendGrid refuses the whole
          request) fails those with SendGrid's message, and the rest are sent once more in
          one request; a second such 400 fails whom it names and leaves the others
          ``TransientSendError`` (``batch_refused``) for a later try;
        - a 400 naming nobody fails everyone (as ``send`` would);
        - a 429, a 5xx or a connect error: every recipient gets that ``Throttled`` or
          ``TransientSendError`` (nothing was accepted); 401/403: ``ProviderUnavailable``;
        - no complete answer after the request was written: every recipient
          ``AmbiguousSendError`` (``unknown``; event reconciliation resolves them).
        """
        if not messages:
            return []
        if len(messages) > MAX_BATCH:
            raise ValueError(f"a batch holds at most {MAX_BATCH} recipients, not {len(messages)}")
        first = messages[0]
        shared = (first.from_email, first.from_name, first.reply_to, first.html, first.text)
        if any((m.from_email, m.from_name, m.reply_to, m.html, m.text) != shared for m in messages):
            raise ValueError("a batch shares one sender and one body (the skeleton); render per recipient")
        outcomes: list[SendResult | SendError | None] = [None] * len(messages)
        pending = list(range(len(messages)))
        for attempt in (1, 2):
            try:
                payload = build_batch_payload([messages[i] for i in pending])
                if sandbox:
                    payload["mail_settings"] = {"sandbox_mode": {"enable": True}}
                message_id = self._post_payload(payload, recipient="", refusals=True)
            except _Refused as refused:
                refused.named = {k: v for k, v in refused.named.items() if k < len(pending)}
                if not refused.named:
                    reason = _scrub("; ".join(refused.messages) or "SendGrid returned 400", "")
                    for i in pending:
                        outcomes[i] = RecipientRejected(reason, provider=NAME, code="400")
                    break
                for position, said in refused.named.items():
                    index = pending[position]
                    reason = _scrub("; ".join(said), messages[index].to_email)
                    outcomes[index] = RecipientRejected(reason, provider=NAME, code="400")
                pending = [i for position, i in enumerate(pending) if position not in refused.named]
                if attempt == 2:
                    for i in pending:
                        outcomes[i] = TransientSendError(
                            "SendGrid refused the batch twice for other recipients' addresses",
                            provider=NAME, code="batch_refused",
                        )
                if not pending:
                    break
                continue
            except SendError as err:
                for i in pending:
                    outcomes[i] = err
                break
            for position, i in enumerate(pending):
                outcomes[i] = SendResult(NAME, message_id=f"{message_id}.{position}" if message_id else "")
            break
        return [outcome for outcome in outcomes if outcome is not None]

    def _post(self, email: OutboundEmail, payload: dict[str, Any]) -> SendResult:
        return SendResult(NAME, message_id=self._post_payload(payload, email.to_email))

    def _post_payload(self, payload: dict[str, Any], recipient: str, refusals: bool = False) -> str:
        """POST one body; SendGrid's ``X-Message-Id``, or a ``SendError`` (``_Refused`` for a
        400 when ``refusals``, so a batch can tell which recipients it named)."""
        if not self._api_key:
            raise ProviderUnavailable("no SendGrid API key configured", provider=NAME, code="no_key")
        try:
            body = json.dumps(payload).encode()
            request = urllib.request.Request(self._url, data=body, headers=self._headers, method="POST")
            response = Response(self.transport.open(request, timeout=self._timeout))
        except HTTPError as err:
            if refusals and int(err.status_code) == 400:
                raise _refused(err.body) from None
            raise _from_http_error(err, recipient) from None
        except urllib.error.URLError as err:
            # Raised while connecting or writing: the request never fully arrived.
            raise _from_url_error(err) from None
        except ValueError as err:
            # urllib refuses the URL (no scheme) or a header value before sending anything.
            raise ProviderUnavailable(
                f"cannot build the SendGrid request ({type(err).__name__}); check the settings",
                provider=NAME, code="config",
            ) from None
        except (OSError, http.client.HTTPException) as err:
            # Raised after the request was written: SendGrid may have accepted it.
            raise AmbiguousSendError(
                f"no complete response from SendGrid ({type(err).__name__})",
                provider=NAME,
                code="no_response",
            ) from None
        if not 200 <= response.status_code < 300:
            raise AmbiguousSendError(
                f"unexpected SendGrid status {response.status_code}",
                provider=NAME,
                code=str(response.status_code),
            )
        return str(response.headers.get("X-Message-Id", "") or "")

    def close(self) -> None:
        """Close the kept-alive connections."""
        self.transport.close()


def _from_http_error(err: HTTPError, recipient: str) -> SendError:
    """Map SendGrid's status codes to what the Task Manager should do."""
    status = int(err.status_code)
    code = str(status)
    headers = err.headers
    if status == 429:
        return Throttled(
            "rate limited by SendGrid", provider=NAME, code=code,
            retry_after=_retry_after(headers),
        )
    if status >= 500 or status == 408:
        return TransientSendError(
            f"SendGrid server error {status}", provider=NAME, code=code,
            retry_after=_retry_after(headers),
        )
    messages, fields = _error_messages(err.body)
    reason = _scrub("; ".join(messages) or f"SendGrid returned {status}", recipient)
    extra = {"fields": fields} if fields else {}
    if status in (401, 403):
        return ProviderUnavailable(reason, provider=NAME, code=code, extra=extra)
    if status in (404, 405):
        # A wrong SENDGRID_API_URL, not a bad recipient: failing every recipient would hide it.
        return ProviderUnavailable(
            f"SendGrid endpoint not found ({status}); check SENDGRID_API_URL",
            provider=NAME, code=code,
        )
    return RecipientRejected(reason, provider=NAME, code=code, extra=extra)


def _from_url_error(err: urllib.error.URLError) -> SendError:
    """Connect/DNS/write failures are retryable; certificate and URL problems are not."""
    reason = err.reason
    if isinstance(reason, ssl.SSLCertVerificationError):
        return ProviderUnavailable(
            "SendGrid TLS certificate verification failed", provider=NAME, code="tls"
        )
    if isinstance(reason, OSError):
        return TransientSendError(
            f"could not reach SendGrid ({type(reason).__name__})", provider=NAME,
            code="connect",
        )
    return ProviderUnavailable(f"bad SendGrid URL: {reason}", provider=NAME, code="url")


def _refused(body: bytes | str | None) -> _Refused:
    """Which personalizations a 400 names (``personalizations.N...``) and its messages."""
    named: dict[int, list[str]] = {}
    messages: list[str] = []
    for message, field_ in _error_pairs(body):
        messages.append(message)
        match = _PERSONALIZATION_FIELD.match(field_)
        if match:
            named.setdefault(int(match.group(1)), []).append(message)
    return _Refused(named, messages)


def _error_pairs(body: bytes | str | None) -> list[tuple[str, str]]:
    """(message, field) of each entry of SendGrid's ``{"errors": [...]}`` body."""
    try:
        data = json.loads(body) if body else None
    except (ValueError, UnicodeDecodeError):
        return []
    errors = data.get("errors") if isinstance(data, dict) else None
    if not isinstance(errors, list):
        return []
    return [(str(e.get("message") or ""), str(e.get("field") or "")) for e in errors if isinstance(e, dict)]


def _error_messages(body: bytes | str | None) -> tuple[list[str], list[str]]:
    """The ``message`` and ``field`` values of SendGrid's ``{"errors": [...]}`` body."""
    if not body:
        return [], []
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return [], []
    errors = data.get("errors") if isinstance(data, dict) else None
    if not isinstance(errors, list):
        return [], []
    messages = [str(e["message"]) for e in errors if isinstance(e, dict) and e.get("message")]
    fields = [str(e["field"]) for e in errors if isinstance(e, dict) and e.get("field")]
    return messages, fields


def _retry_after(headers: Any) -> float | None:
    """Seconds to wait: ``Retry-After`` (seconds or HTTP date), else ``X-RateLimit-Reset``."""
    if headers is None:
        return None
    raw = headers.get("Retry-After")
    if raw:
        try:
            return max(0.0, float(raw))
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(raw)
            except (TypeError, ValueError):
                when = None
            if when is not None:
                return max(0.0, when.timestamp() - time.time())
    reset = headers.get("X-RateLimit-Reset")
    if reset:
        try:
            return max(0.0, float(reset) - time.time())
        except ValueError:
            return None
    return None


def _scrub(text: str, recipient: str) -> str:
    """Drop addresses from a provider message: reasons are stored and shown to people."""
    if recipient:
        text = re.sub(re.escape(recipient), "<recipient>", text, flags=re.IGNORECASE)
    text = _EMAIL_RE.sub("<address>", text)
    return text[:_MAX_REASON]
