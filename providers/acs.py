"""Azure Communication Services Email adapter (``azure-communication-email``).

``begin_send`` answers 202 with an ``Operation-Location`` once ACS has accepted the
message, and its poller then follows the operation to ``Succeeded`` or ``Failed``. The
202 is the hand-off: from then on the message must never be sent again, so a poller that
fails afterwards still reports the message sent (the operation id is its message id).

The operation id we pass is derived from our ids (tenant, job, task, contact), so a retry
of a request whose answer was lost names the same operation at ACS.

Errors are sorted by whether ACS could have accepted the request, as for SendGrid:
connect failures are retryable, a request that was written but got no answer is
ambiguous (``unknown``), 429/5xx are transient, 401/403 pause the job, other 4xx fail
the recipient.
"""

from __future__ import annotations

import hashlib
import logging
import re
import uuid
from typing import Any

from azure.communication.email import EmailClient
from azure.core.credentials import AzureKeyCredential
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ServiceRequestError,
    ServiceResponseError,
)

from core.errors import (
    AmbiguousSendError,
    ProviderUnavailable,
    RecipientRejected,
    SendError,
    Throttled,
    TransientSendError,
)
from providers.base import OutboundEmail, SendResult

NAME = "acs"
TRACE_HEADERS = {
    "tenant_id": "X-Mailroom-Tenant",
    "job_id": "X-Mailroom-Job",
    "task_id": "X-Mailroom-Task",
    "contact_id": "X-Mailroom-Contact",
}
_EMAIL_RE = re.compile(r"[^\s<>()\[\]\"',;:]+@[^\s<>()\[\]\"',;:]+")

# azure-core logs request headers at INFO; keep it quiet (no keys, no addresses in logs).
logging.getLogger("azure.core.pipeline.policies.http_logging_policy").setLevel(logging.WARNING)


def parse_connection_string(value: str) -> tuple[str, str]:
    """(endpoint with its scheme, access key). The SDK's own parser drops ``http://``."""
    parts = dict(p.split("=", 1) for p in value.split(";") if "=" in p)
    lowered = {k.strip().lower(): v.strip() for k, v in parts.items()}
    endpoint, key = lowered.get("endpoint", ""), lowered.get("accesskey", "")
    if not endpoint or not key:
        raise ValueError("an ACS connection string needs endpoint=...;accesskey=...")
    return endpoint.rstrip("/"), key


def build_message(email_: OutboundEmail) -> dict[str, Any]:
    """The ``emails:send`` body for one recipient; our ids ride along as headers."""
    to: dict[str, str] = {"address": email_.to_email}
    if email_.to_name:
        to["displayName"] = email_.to_name
    content: dict[str, str] = {"subject": email_.subject}
    if email_.text:
        content["plainText"] = email_.text
    if email_.html:
        content["html"] = email_.html
    headers = {str(k): str(v) for k, v in email_.headers.items()}
    headers.update({TRACE_HEADERS[k]: str(v) for k, v in email_.custom_args.items() if k in TRACE_HEADERS})
    message: dict[str, Any] = {
        "senderAddress": email_.from_email,
        "recipients": {"to": [to]},
        "content": content,
    }
    if headers:
        message["headers"] = headers
    if email_.reply_to:
        message["replyTo"] = [{"address": email_.reply_to}]
    return message


def operation_id_for(email_: OutboundEmail) -> str:
    """A stable id per (tenant, job, task, contact): the same delivery names one operation."""
    ids = "|".join(email_.custom_args.get(k, "") for k in TRACE_HEADERS)
    if not ids.strip("|"):
        return str(uuid.uuid4())
    return str(uuid.UUID(bytes=hashlib.sha256(ids.encode()).digest()[:16]))


class AcsProvider:
    """Sends through ACS Email; one SDK client (and its connection pool) shared by threads."""

    name = NAME

    def __init__(self, connection_string: str, timeout: float = 10.0, poll_seconds: float = 1.0) -> None:
        endpoint, key = parse_connection_string(connection_string)
        self._poll_seconds = poll_seconds
        self._timeout = timeout
        # retry_total=0: the project's one retry policy decides, not azure-core's.
        self._client = EmailClient(
            endpoint, AzureKeyCredential(key), retry_total=0,
            connection_timeout=timeout, read_timeout=timeout,
        )

    def send(self, email: OutboundEmail) -> SendResult:
        operation_id = operation_id_for(email)
        try:
            poller = self._client.begin_send(
                build_message(email), operation_id=operation_id, polling_interval=self._poll_seconds
            )
        except HttpResponseError as err:
            raise _from_http_error(err, email.to_email) from None
        except ServiceRequestError as err:
            raise TransientSendError(
                f"could not reach ACS ({type(err).__name__})", provider=NAME, code="connect"
            ) from None
        except ServiceResponseError as err:
            raise AmbiguousSendError(
                f"no complete response from ACS ({type(err).__name__})", provider=NAME, code="no_response"
            ) from None
        # Accepted (202). Follow the operation; whatever happens now, it was handed over.
        try:
            result = poller.result(timeout=self._timeout) or {}
        except (HttpResponseError, ServiceRequestError, ServiceResponseError):
            return SendResult(NAME, message_id=operation_id)
        if str(result.get("status", "")).lower() == "failed":
            error = result.get("error") or {}
            raise RecipientRejected(
                _scrub(f"ACS could not send it: {error.get('message') or error.get('code') or 'failed'}",
                       email.to_email),
                provider=NAME, code=str(error.get("code", "failed")),
            )
        return SendResult(NAME, message_id=str(result.get("id") or operation_id))

    def close(self) -> None:
        self._client.close()


def _from_http_error(err: HttpResponseError, recipient: str) -> SendError:
    status = int(err.status_code or 0)
    code = str(status)
    response = getattr(err, "response", None)
    retry_after = None
    if response is not None:
        raw = response.headers.get("Retry-After") or response.headers.get("retry-after")
        try:
            retry_after = float(raw) if raw else None
        except ValueError:
            retry_after = None
    if status == 429:
        return Throttled("rate limited by ACS", provider=NAME, code=code, retry_after=retry_after)
    if status >= 500 or status == 408:
        return TransientSendError(f"ACS server error {status}", provider=NAME, code=code,
                                  retry_after=retry_after)
    message = _scrub(_error_message(err) or f"ACS returned {status}", recipient)
    if isinstance(err, ClientAuthenticationError) or status in (401, 403):
        return ProviderUnavailable(
            f"ACS refused the credentials ({status}): {message}", provider=NAME, code=code
        )
    if status == 404:
        return ProviderUnavailable("ACS endpoint not found (404); check ACS_CONNECTION_STRING",
                                   provider=NAME, code=code)
    return RecipientRejected(message, provider=NAME, code=code)


def _error_message(err: HttpResponseError) -> str:
    error = getattr(err, "error", None)
    if error is not None and getattr(error, "message", None):
        return str(error.message)
    try:
        # azure-core types ``response`` as a protocol without json(); a response that lacks it lands below.
        body = err.response.json() if err.response is not None else {}  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - a body that is not JSON has no message to show
        return ""
    inner = body.get("error") if isinstance(body, dict) else None
    return str(inner.get("message", "")) if isinstance(inner, dict) else ""


def _scrub(text: str, recipient: str) -> str:
    if recipient:
        text = re.sub(re.escape(recipient), "<recipient>", text, flags=re.IGNORECASE)
    return _EMAIL_RE.sub("<address>", text)[:500]
