"""A local stand-in for SendGrid's v3 Mail Send API.

Development and tests point ``SENDGRID_API_URL`` here so the real ``sendgrid`` client and
the real ``providers.sendgrid`` adapter run end to end without an account. It validates
like SendGrid does (the error messages, fields and help links are SendGrid's documented
ones), answers 202 with an ``X-Message-Id``, and records one entry per recipient.

Personalizations work as SendGrid's do: up to 1,000 per request and 1,000 recipients
(to + cc + bcc) in all; each may carry its own ``subject``, ``headers``, ``custom_args``
(at most 10,000 bytes merged with the message's) and ``substitutions`` (applied to the subject
and bodies); a bad or repeated address refuses the whole request with a 400 naming
``personalizations.N.to.M.email``; each email gets its own ``sg_message_id`` (the request's
``X-Message-Id`` plus a per-email suffix) and its own signed events with its personalization's
``custom_args``.

Test-only endpoints live under ``/__sim``:

- ``GET /__sim/messages`` (optional ``?to=``), ``DELETE /__sim/messages``
- ``GET /__sim/stats``: how many send requests arrived, how many were accepted, and how many
  were validated in sandbox mode (``mail_settings.sandbox_mode.enable``: like SendGrid, the
  request is validated and answered 200 with no message id; nothing is recorded or delivered
  and no event webhook follows)
- ``POST /__sim/reset``: forget messages, counters and faults
- ``GET|POST|DELETE /__sim/faults``: fault injection, e.g. ``{"latency_ms": 500}``,
  ``{"fail_addresses": {"a@example.com": 400}}``, ``{"status": 503, "count": 2}``,
  ``{"status": 429, "count": 1, "retry_after": 7}``; also a window of failures
  ``{"status": 503, "for_seconds": 5}``, ``{"reset_count": 2}`` (the connection is dropped
  before any answer, nothing recorded) and ``{"accept_then_hang": 3, "hang_seconds": 5}``
  (the message IS accepted and recorded, then no answer comes: the ambiguous case) and
  ``{"lose_then_hang": 2}`` (the request is read but lost before acceptance: nothing recorded, no
  event, and no answer: the ambiguous case the other way round)
- ``GET /__sim/requests``: every send request's arrival (monotonic seconds) and answer

Run it with ``python -m devhost.sendgrid_sim --port 3030``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

DEFAULT_PORT = 3030
MAX_BODY_BYTES = 30 * 1024 * 1024
MAX_PERSONALIZATIONS = 1000
MAX_RECIPIENTS = 1000
# Per personalization: custom_args merged with the message's, and substitutions (UTF-8 bytes).
MAX_CUSTOM_ARGS_BYTES = 10_000
MAX_SUBSTITUTIONS_BYTES = 10_000
RECIPIENT_KINDS = ("to", "cc", "bcc")
HELP = "http://sendgrid.com/docs/API_Reference/Web_API_v3/Mail/errors.html"
RESERVED_HEADERS = frozenset({
    "x-sg-id", "x-sg-eid", "received", "dkim-signature", "content-type",
    "content-transfer-encoding", "to", "from", "subject", "reply-to", "cc", "bcc",
})
_EMAIL_RE = re.compile(
    r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+"
    r"@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$"
)

MSG_AUTH = "The provided authorization grant is invalid, expired, or revoked"
MSG_PERSONALIZATIONS_REQUIRED = (
    "The personalizations field is required and must have at least one personalization."
)
MSG_FROM_REQUIRED = (
    "The from object must be provided for every email send. It is an object that requires "
    'the email parameter, but may also contain a name parameter.  e.g. {"email" : '
    '"example@example.com"}  or {"email" : "example@example.com", "name" : '
    '"Example Recipient"}.'
)
MSG_SUBJECT_REQUIRED = (
    "The subject is required. You can get around this requirement if you use a template "
    "with a subject defined or if every personalization has a subject defined."
)
MSG_CONTENT_REQUIRED = (
    "Unless a valid template_id is provided, the content parameter is required. There must "
    "be at least one defined content block. We typically suggest both text/plain and "
    "text/html blocks are included, but only one block is required."
)
MSG_CONTENT_ORDER = (
    "Following RFC 1341, section 7.2, if either text/html or text/plain are to be sent in "
    "your email: text/plain needs to be first, followed by text/html, followed by any "
    "other content."
)
MSG_SENDER_IDENTITY = (
    "The from address does not match a verified Sender Identity. Mail cannot be sent until "
    "this error is resolved."
)


def _error(message: str, field_: str | None, anchor: str | None) -> dict[str, Any]:
    """One entry of SendGrid's ``errors`` array."""
    return {"message": message, "field": field_, "help": f"{HELP}#{anchor}" if anchor else None}


def _errors_response(status: int, errors: list[dict[str, Any]],
                     headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"errors": errors}, status_code=status, headers=headers)


def is_valid_email(value: Any) -> bool:
    """Syntactic check close to SendGrid's: a dotted domain and at most 320 characters."""
    return isinstance(value, str) and len(value) <= 320 and bool(_EMAIL_RE.match(value))


def _check_string_map(value: Any, path: str, what: str) -> list[dict[str, Any]]:
    """``custom_args`` and ``headers``: an object of string values."""
    scope = "personalizations." if path.startswith("personalizations") else ""
    anchor = f"message.{scope}{what}"
    if not isinstance(value, dict):
        return [_error(f"The {what} must be an object.", path, anchor)]
    out: list[dict[str, Any]] = []
    if what == "custom_args" and not value:
        out.append(_error("custom_args cannot be empty.", path, anchor))
    if not all(isinstance(v, str) for v in value.values()):
        message = ("All values of custom arguments object must be strings"
                   if what == "custom_args" else "The header values must be strings.")
        out.append(_error(message, path, anchor))
    if what == "headers":
        for key in value:
            if not key.isascii() or " " in key or not key:
                out.append(_error("Header keys cannot contain non-ASCII characters and empty "
                                  "spaces.", path, anchor))
            elif key.lower() in RESERVED_HEADERS:
                out.append(_error("Header can not be one of the reserved keys.", path, anchor))
    return out


def validate_mail_send(body: Any) -> list[dict[str, Any]]:
    """Every problem SendGrid would report for this body (it reports them all at once)."""
    if not isinstance(body, dict):
        return [_error("Bad Request", None, None)]
    errors: list[dict[str, Any]] = []
    has_template = isinstance(body.get("template_id"), str) and bool(body["template_id"])

    personalizations = body.get("personalizations")
    if not isinstance(personalizations, list) or not personalizations:
        errors.append(_error(MSG_PERSONALIZATIONS_REQUIRED, "personalizations",
                             "-Personalizations-Errors"))
        personalizations = []
    elif len(personalizations) > MAX_PERSONALIZATIONS:
        errors.append(_error(
            f"The personalization block is limited to {MAX_PERSONALIZATIONS} personalizations "
            f"per API request. You have provided {len(personalizations)} personalizations. "
            "Please consider splitting this into multiple requests and resending your request.",
            "personalizations", "message.personalizations"))
    seen: set[str] = set()
    total = 0
    message_args = body.get("custom_args") if isinstance(body.get("custom_args"), dict) else {}
    for i, p in enumerate(personalizations):
        path = f"personalizations.{i}"
        if not isinstance(p, dict):
            errors.append(_error("The to parameter is required for all personalization objects.",
                                 path, "message.personalizations"))
            continue
        if not isinstance(p.get("to"), list) or not p.get("to"):
            errors.append(_error("The to parameter is required for all personalization objects.",
                                 f"{path}.to", "message.personalizations.to"))
        for kind in RECIPIENT_KINDS:
            listed = p.get(kind) if isinstance(p.get(kind), list) else []
            total += len(listed)
            for j, recipient in enumerate(listed):
                address = recipient.get("email") if isinstance(recipient, dict) else None
                if not is_valid_email(address):
                    errors.append(_error("Does not contain a valid address.",
                                         f"{path}.{kind}.{j}.email", f"message.personalizations.{kind}"))
                    continue
                if address.lower() in seen:
                    errors.append(_error(
                        "Each unique email address in the personalizations array should only be "
                        f"included once. You have included {address} more than once.",
                        f"{path}.{kind}.{j}.email", "message.personalizations"))
                seen.add(address.lower())
        if "custom_args" in p:
            errors += _check_string_map(p["custom_args"], f"{path}.custom_args", "custom_args")
            if isinstance(p["custom_args"], dict) and _json_bytes({**message_args, **p["custom_args"]}) > (
                MAX_CUSTOM_ARGS_BYTES
            ):
                errors.append(_error(
                    f"The custom_args of a personalization, merged with the message's custom_args, "
                    f"may not exceed {MAX_CUSTOM_ARGS_BYTES:,} bytes.",
                    f"{path}.custom_args", "message.personalizations.custom_args"))
        if "substitutions" in p:
            errors += _check_substitutions(p["substitutions"], f"{path}.substitutions")
        if "headers" in p:
            errors += _check_string_map(p["headers"], f"{path}.headers", "headers")
        if "subject" in p and (not isinstance(p["subject"], str) or not p["subject"]):
            errors.append(_error("The subject of your email must be a string at least one "
                                 "character in length.", f"{path}.subject",
                                 "message.personalizations.subject"))
    if total > MAX_RECIPIENTS:
        errors.append(_error("There is a limit of 1000 total recipients (to + cc + bcc) per "
                             "request.", "personalizations", "message.personalizations"))

    sender = body.get("from")
    if not isinstance(sender, dict) or not sender.get("email"):
        errors.append(_error(MSG_FROM_REQUIRED, "from.email", "message.from"))
    elif not is_valid_email(sender["email"]):
        errors.append(_error("The from email does not contain a valid address.", "from.email",
                             "message.from"))

    if "reply_to" in body:
        reply_to = body["reply_to"]
        if not isinstance(reply_to, dict) or not is_valid_email(reply_to.get("email")):
            errors.append(_error("The reply_to email does not contain a valid address.",
                                 "reply_to.email", "message.reply_to"))

    top_subject = body.get("subject")
    if top_subject is not None and (not isinstance(top_subject, str) or not top_subject):
        errors.append(_error("The subject of your email must be a string at least one "
                             "character in length.", "subject", "message.subject"))
    elif not top_subject and not has_template and not all(
        isinstance(p, dict) and p.get("subject") for p in personalizations
    ):
        errors.append(_error(MSG_SUBJECT_REQUIRED, "subject", "message.subject"))

    errors += _check_content(body.get("content"), has_template)
    errors += _check_mail_settings(body.get("mail_settings"))
    if "custom_args" in body:
        errors += _check_string_map(body["custom_args"], "custom_args", "custom_args")
    if "headers" in body:
        errors += _check_string_map(body["headers"], "headers", "headers")
    return errors


def _json_bytes(value: dict[str, Any]) -> int:
    """The size SendGrid counts for custom_args and substitutions: their JSON in UTF-8."""
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode())


def _check_substitutions(value: Any, path: str) -> list[dict[str, Any]]:
    """``substitutions``: an object of string values, at most 10,000 bytes per personalization."""
    anchor = "message.personalizations.substitutions"
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        return [_error("The substitutions must be an object of string values.", path, anchor)]
    if _json_bytes(value) > MAX_SUBSTITUTIONS_BYTES:
        return [_error(f"The substitutions of a personalization may not exceed "
                       f"{MAX_SUBSTITUTIONS_BYTES:,} bytes.", path, anchor)]
    return []


def substitute(text: str, substitutions: dict[str, str]) -> str:
    """SendGrid's legacy substitutions: every occurrence of each key replaced by its value.

    Keys are replaced longest first in one pass, so a value is never substituted again and
    a key that is a prefix of another (``-name-`` and ``-name-full-``) cannot cut it short.
    """
    if not substitutions or not text:
        return text
    keys = sorted(substitutions, key=len, reverse=True)
    pattern = re.compile("|".join(re.escape(k) for k in keys if k))
    return pattern.sub(lambda m: substitutions[m.group(0)], text)


def _check_mail_settings(settings: Any) -> list[dict[str, Any]]:
    """``mail_settings``: an object; ``sandbox_mode.enable`` a boolean."""
    if settings is None:
        return []
    sandbox = settings.get("sandbox_mode") if isinstance(settings, dict) else None
    if not isinstance(settings, dict) or (sandbox is not None and not (
            isinstance(sandbox, dict) and isinstance(sandbox.get("enable", False), bool))):
        return [_error("The mail_settings.sandbox_mode.enable must be a boolean.",
                       "mail_settings.sandbox_mode.enable", "message.mail_settings.sandbox_mode.enable")]
    return []


def in_sandbox_mode(body: dict[str, Any]) -> bool:
    """SendGrid's sandbox mode: validate the request, deliver nothing."""
    settings = body.get("mail_settings") or {}
    return bool(((settings.get("sandbox_mode") or {}) if isinstance(settings, dict) else {}).get("enable"))


def _check_content(content: Any, has_template: bool) -> list[dict[str, Any]]:
    """Required unless templated; typed, non-empty, text/plain then text/html first."""
    if content is None and has_template:
        return []
    if not isinstance(content, list) or not content:
        return [_error(MSG_CONTENT_REQUIRED, "content", "message.content")]
    errors: list[dict[str, Any]] = []
    types: list[str] = []
    for i, item in enumerate(content):
        item = item if isinstance(item, dict) else {}
        kind, value = item.get("type"), item.get("value")
        if not isinstance(kind, str) or not kind:
            errors.append(_error("A content type is required, this tells email clients how to "
                                 "display the email.", f"content.{i}.type",
                                 "message.content.type"))
        elif ";" in kind or "\r" in kind or "\n" in kind:
            errors.append(_error("Cannot contain ';', or CRLF characters.",
                                 f"content.{i}.type", "message.content.type"))
        types.append(kind if isinstance(kind, str) else "")
        if not isinstance(value, str) or not value:
            errors.append(_error("The content value must be a string at least one character "
                                 "in length.", f"content.{i}.value", "message.content.value"))
    has_plain = "text/plain" in types
    if (has_plain and types.index("text/plain") != 0) or (
        "text/html" in types and types.index("text/html") != (1 if has_plain else 0)
    ):
        errors.append(_error(MSG_CONTENT_ORDER, "content", "message.content.value"))
    return errors


def _fault_errors(status: int, field_: str | None = None) -> list[dict[str, Any]]:
    """A SendGrid-shaped body for an injected failure."""
    if status == 400:
        return [_error("Does not contain a valid address.", field_, "message.personalizations.to")]
    if status == 401:
        return [_error(MSG_AUTH, None, None)]
    if status == 403:
        return [_error(MSG_SENDER_IDENTITY, "from", None)]
    if status == 413:
        return [_error("Payload Too Large", None, None)]
    if status == 429:
        return [_error("too many requests", None, None)]
    return [_error("internal error" if status < 503 else "service unavailable", None, None)]


class FaultsIn(BaseModel):
    """Body of ``POST /__sim/faults``; only the fields given are changed."""

    latency_ms: int | None = Field(None, ge=0, le=120_000)
    fail_addresses: dict[str, int] | None = None
    status: int | None = Field(None, ge=400, le=599)
    count: int = Field(1, ge=1)
    retry_after: int | None = Field(None, ge=0)
    for_seconds: float | None = Field(None, gt=0, le=3600)
    reset_count: int | None = Field(None, ge=0)
    accept_then_hang: int | None = Field(None, ge=0)
    lose_then_hang: int | None = Field(None, ge=0)
    hang_seconds: float | None = Field(None, ge=0, le=600)


@dataclass
class Faults:
    """What the simulator should do wrong. ``count`` is how many more ``status`` answers."""

    latency_ms: int = 0
    fail_addresses: dict[str, int] = field(default_factory=dict)
    status: int | None = None
    count: int = 0
    retry_after: int | None = None
    status_until: float | None = None  # monotonic end of a ``for_seconds`` window
    reset_count: int = 0
    accept_then_hang: int = 0
    lose_then_hang: int = 0
    hang_seconds: float = 30.0

    def apply(self, faults: FaultsIn) -> None:
        """Merge the fields ``faults`` gives (same shape as the HTTP body). Callers hold the lock."""
        if faults.latency_ms is not None:
            self.latency_ms = faults.latency_ms
        if faults.fail_addresses is not None:
            self.fail_addresses = {k.lower(): v for k, v in faults.fail_addresses.items()}
        if faults.status is not None:
            self.status, self.count, self.retry_after = faults.status, faults.count, faults.retry_after
            self.status_until = time.monotonic() + faults.for_seconds if faults.for_seconds else None
        if faults.reset_count is not None:
            self.reset_count = faults.reset_count
        if faults.accept_then_hang is not None:
            self.accept_then_hang = faults.accept_then_hang
        if faults.lose_then_hang is not None:
            self.lose_then_hang = faults.lose_then_hang
        if faults.hang_seconds is not None:
            self.hang_seconds = faults.hang_seconds

    def take_status(self) -> tuple[int | None, int | None]:
        """Consume one ``status`` answer (window or count): (status, retry-after) or (None, None).

        Callers hold the simulator's lock.
        """
        if self.status is not None and self.status_until is not None:
            if time.monotonic() < self.status_until:
                return self.status, self.retry_after
            self.status = self.retry_after = self.status_until = None
        elif self.status is not None and self.count > 0:
            answer = self.status, self.retry_after
            self.count -= 1
            if self.count == 0:
                self.status = self.retry_after = None
            return answer
        return None, None

    def as_dict(self) -> dict[str, Any]:
        return {"latency_ms": self.latency_ms, "fail_addresses": dict(self.fail_addresses),
                "status": self.status, "count": self.count, "retry_after": self.retry_after,
                "status_until": self.status_until, "reset_count": self.reset_count,
                "accept_then_hang": self.accept_then_hang, "lose_then_hang": self.lose_then_hang,
                "hang_seconds": self.hang_seconds}


class SendGridSimulator:
    """The simulator's state and its FastAPI ``app``; every method is thread-safe.

    Tests that run the app in-process can read ``messages()`` and call ``set_faults()``
    directly; everything is also reachable over HTTP under ``/__sim``.
    """

    def __init__(self, api_key: str | None = None) -> None:
        """``api_key``: the only key accepted; ``None`` accepts any non-empty bearer key."""
        self.api_key = api_key
        self._lock = threading.Lock()
        self._messages: list[dict[str, Any]] = []
        self._requests = 0
        self._accepted = 0
        self._sandboxed = 0
        self._faults = Faults()
        self._request_log: list[dict[str, Any]] = []
        # Called with each accepted request's records (outside the lock); must not block or raise.
        # devhost.sendgrid_events.EventFeedback listens here to post webhook events back.
        self.listeners: list[Any] = []
        self.app = self._build_app()

    # -- state ------------------------------------------------------------------------

    def messages(self, to: str | None = None) -> list[dict[str, Any]]:
        """Copies of the accepted per-recipient records, oldest first."""
        with self._lock:
            found = [dict(m) for m in self._messages]
        if to is not None:
            found = [m for m in found if m["to"].lower() == to.lower()]
        return found

    def clear_messages(self) -> None:
        with self._lock:
            self._messages.clear()

    def stats(self) -> dict[str, int]:
        """Requests received on ``/v3/mail/send`` (any outcome) and how many were accepted."""
        with self._lock:
            return {"requests": self._requests, "accepted": self._accepted,
                    "messages": len(self._messages), "sandboxed": self._sandboxed}

    def set_faults(self, faults: FaultsIn | dict[str, Any]) -> dict[str, Any]:
        """Merge ``faults`` into the active ones (same shape as the HTTP body); returns them."""
        if not isinstance(faults, FaultsIn):
            faults = FaultsIn.model_validate(faults)
        with self._lock:
            f = self._faults
            f.apply(faults)
            return f.as_dict()

    def clear_faults(self) -> None:
        with self._lock:
            self._faults = Faults()

    def faults(self) -> dict[str, Any]:
        with self._lock:
            return self._faults.as_dict()

    def reset(self) -> None:
        """Forget messages, counters and faults: a fresh simulator without a restart."""
        with self._lock:
            self._messages.clear()
            self._requests = self._accepted = self._sandboxed = 0
            self._faults = Faults()
            self._request_log.clear()

    def request_log(self) -> list[dict[str, Any]]:
        """Each send request: ``at`` (monotonic seconds on arrival) and the ``status`` answered."""
        with self._lock:
            return [dict(entry) for entry in self._request_log]

    def _log_answer(self, at: float, status: int | str) -> None:
        with self._lock:
            self._request_log.append({"at": at, "status": status})

    def _take_connection_fault(self) -> str | None:
        """Consume one ``reset`` or ``hang`` fault, if any is armed."""
        with self._lock:
            f = self._faults
            if f.reset_count > 0:
                f.reset_count -= 1
                return "reset"
            if f.accept_then_hang > 0:
                f.accept_then_hang -= 1
                return "hang"
            if f.lose_then_hang > 0:
                f.lose_then_hang -= 1
                return "lose"
            return None

    def _begin_request(self) -> tuple[int, int | None, int | None]:
        """Count the request and consume one ``status`` fault: (latency, status, retry)."""
        with self._lock:
            self._requests += 1
            f = self._faults
            status, retry_after = f.take_status()
            return f.latency_ms, status, retry_after

    def _failing_addresses(self, body: dict[str, Any]) -> tuple[int, list[str]] | None:
        """The first failing address's status and the field of every address failing with it.

        Like SendGrid, one bad address refuses the whole request, and its 400 names them all.
        """
        with self._lock:
            fail = dict(self._faults.fail_addresses)
        if not fail:
            return None
        found: list[tuple[int, str]] = []
        for i, p in enumerate(body["personalizations"]):
            for kind in RECIPIENT_KINDS:
                for j, recipient in enumerate(p.get(kind) or []):
                    status = fail.get(recipient["email"].lower())
                    if status:
                        found.append((status, f"personalizations.{i}.{kind}.{j}.email"))
        if not found:
            return None
        status = found[0][0]
        return status, [field_ for code, field_ in found if code == status]

    def _record(self, body: dict[str, Any], message_id: str) -> None:
        """One record per recipient (to, cc, bcc), with its personalization merged over the top.

        Each email gets SendGrid's ``sg_message_id`` shape: the request's ``X-Message-Id``, a
        filter part, and the email's position in the request (0, 1, ...), so one request's
        emails share the prefix and differ in the suffix. Substitutions are applied to the
        subject and both bodies, as SendGrid applies them.
        """
        now = datetime.now(UTC).isoformat()
        content = body.get("content") or []
        text = next((c["value"] for c in content if c["type"] == "text/plain"), "")
        html = next((c["value"] for c in content if c["type"] == "text/html"), "")
        records = []
        for p in body["personalizations"]:
            values = p.get("substitutions") or {}
            for kind in RECIPIENT_KINDS:
                for recipient in p.get(kind) or []:
                    records.append({
                        "message_id": message_id,
                        "sg_message_id": f"{message_id}.filter0001.sim.{len(records)}",
                        "to": recipient["email"],
                        "kind": kind,
                        "to_name": recipient.get("name", ""),
                        "from": body["from"]["email"],
                        "from_name": body["from"].get("name", ""),
                        "reply_to": (body.get("reply_to") or {}).get("email", ""),
                        "subject": substitute(p.get("subject") or body.get("subject", ""), values),
                        "custom_args": {**body.get("custom_args", {}), **p.get("custom_args", {})},
                        "headers": {**body.get("headers", {}), **p.get("headers", {})},
                        "text": substitute(text, values),
                        "html": substitute(html, values),
                        "received_at": now,
                    })
        with self._lock:
            self._messages.extend(records)
            self._accepted += 1
        for listener in list(self.listeners):
            listener(records)

    def _authorized(self, header: str) -> bool:
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            return False
        return self.api_key is None or secrets.compare_digest(key.strip(), self.api_key)

    # -- HTTP -------------------------------------------------------------------------

    def _build_app(self) -> FastAPI:
        app = FastAPI(title="SendGrid simulator", docs_url=None, redoc_url=None)
        app.state.simulator = self

        @app.post("/v3/mail/send")
        async def mail_send(request: Request) -> Response:
            # Read the body first: latency models a server that got the request and is slow.
            raw = await request.body()
            arrived = time.monotonic()
            connection_fault = self._take_connection_fault()
            if connection_fault == "lose":
                # Read, never accepted, never answered in time: the client cannot tell it from "hang".
                self._log_answer(arrived, "lost")
                await asyncio.sleep(self.faults()["hang_seconds"])
                _drop_connection(request)
                return Response(status_code=500)
            if connection_fault == "reset":
                self._log_answer(arrived, "reset")
                _drop_connection(request)
                return Response(status_code=500)  # never reaches the client
            latency_ms, status, retry_after = self._begin_request()
            if latency_ms:
                await asyncio.sleep(latency_ms / 1000)
            if not self._authorized(request.headers.get("authorization", "")):
                self._log_answer(arrived, 401)
                return _errors_response(401, [_error(MSG_AUTH, None, None)])
            if status is not None:
                self._log_answer(arrived, status)
                headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
                return _errors_response(status, _fault_errors(status), headers)
            if len(raw) > MAX_BODY_BYTES:
                return _errors_response(413, _fault_errors(413))
            try:
                body = json.loads(raw)
            except (ValueError, UnicodeDecodeError):
                return _errors_response(400, [_error("Bad Request", None, None)])
            errors = validate_mail_send(body)
            if errors:
                return _errors_response(400, errors)
            failing = self._failing_addresses(body)
            if failing is not None:
                fail_status, fail_fields = failing
                self._log_answer(arrived, fail_status)
                return _errors_response(
                    fail_status, [e for f in fail_fields for e in _fault_errors(fail_status, f)]
                )
            if in_sandbox_mode(body):
                with self._lock:
                    self._sandboxed += 1
                self._log_answer(arrived, 200)
                return Response(status_code=200)  # valid; nothing recorded, delivered or posted back
            message_id = secrets.token_urlsafe(16)  # 22 characters, like SendGrid's ids
            self._record(body, message_id)
            if connection_fault == "hang":
                # Accepted and recorded, but the answer never comes in time: the ambiguous case.
                self._log_answer(arrived, "hang")
                await asyncio.sleep(self.faults()["hang_seconds"])
                _drop_connection(request)
                return Response(status_code=500)
            self._log_answer(arrived, 202)
            return Response(status_code=202, headers={"X-Message-Id": message_id})

        @app.get("/__sim/messages")
        async def list_messages(to: str | None = None) -> dict[str, Any]:
            return {"messages": self.messages(to)}

        @app.delete("/__sim/messages", status_code=204)
        async def delete_messages() -> Response:
            self.clear_messages()
            return Response(status_code=204)

        @app.get("/__sim/requests")
        async def get_requests() -> dict[str, Any]:
            return {"requests": self.request_log()}

        @app.get("/__sim/stats")
        async def get_stats() -> dict[str, int]:
            return self.stats()

        @app.post("/__sim/reset", status_code=204)
        async def reset() -> Response:
            self.reset()
            return Response(status_code=204)

        @app.get("/__sim/faults")
        async def get_faults() -> dict[str, Any]:
            return self.faults()

        @app.post("/__sim/faults")
        async def post_faults(faults: FaultsIn) -> dict[str, Any]:
            return self.set_faults(faults)

        @app.delete("/__sim/faults", status_code=204)
        async def delete_faults() -> Response:
            self.clear_faults()
            return Response(status_code=204)

        return app


def _drop_connection(request: Request) -> None:
    """Close the client's TCP connection without an answer (a reset, as the client sees it).

    ASGI has no verb for this; uvicorn's ``receive`` is a method of the request cycle that
    owns the transport, so the simulator reaches it there.
    """
    cycle = getattr(request.receive, "__self__", None)
    transport = getattr(cycle, "transport", None)
    if transport is not None:
        transport.abort()


def create_app(api_key: str | None = None) -> FastAPI:
    """A fresh simulator's app (``app.state.simulator`` holds its state)."""
    return SendGridSimulator(api_key).app


def run_sendgrid_simulator(host: str = "127.0.0.1", port: int = DEFAULT_PORT,
                           api_key: str | None = None) -> None:
    """Serve the simulator until interrupted (blocks)."""
    uvicorn.run(create_app(api_key), host=host, port=port, log_level="info")


def main(argv: list[str] | None = None) -> None:
    """``python -m devhost.sendgrid_sim [--host H] [--port N] [--api-key K]``."""
    parser = argparse.ArgumentParser(description="SendGrid v3 Mail Send simulator")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--api-key", default=None,
                        help="accept only this key (default: any non-empty bearer key)")
    args = parser.parse_args(argv)
    run_sendgrid_simulator(args.host, args.port, args.api_key)


if __name__ == "__main__":
    main()
