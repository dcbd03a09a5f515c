"""Dry runs: the provider a real send would use validates the message, and nobody delivers it.

A dry-run job (``POST /campaigns/{id}/schedule {"dry_run": true}``) runs the whole pipeline:
roster, suppressions, rendering, headers, routing, the delivery log. Only the last step
differs, here: ``DryRunSender`` stands where the real sender stands and

- routes as the real sender would (the tenant's provider order, skipping a provider whose
  breaker is open or that asked this host to wait), reading provider health and holds but never
  writing them: a dry run's outcomes neither open nor close a breaker;
- takes no token from the rate limits of real sends (``providers/rate_limits.py``), so a dry
  run neither slows nor is slowed by the campaigns that deliver;
- asks the provider to validate where it can without delivering (SendGrid's
  ``mail_settings.sandbox_mode``: the provider's own 400 lands on that recipient), and checks
  locally where it cannot (SMTP, ACS): the address, sender, subject, a body, header values.

Its answers use the real send's vocabulary: a message the provider would have accepted is
``sent`` (with no message id), a rejected one ``failed`` with the reason, and so on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from core.errors import NotBatchable, RecipientRejected, SendError
from core.templates import is_email
from providers.base import EmailProvider, OutboundEmail, SendResult

NAME = "dry-run"
#: Largest message a provider takes, where it is documented and we cannot ask it (bytes).
LOCAL_SIZE_LIMITS = {"acs": 10 * 1024 * 1024}


def validate_locally(email: OutboundEmail, provider: str) -> SendResult:
    """What we can check without the provider; ``RecipientRejected`` naming the first problem."""
    problem = ""
    if not is_email(email.to_email):
        problem = "the recipient address is not valid"
    elif not is_email(email.from_email):
        problem = "the from address is not valid"
    elif not email.subject.strip():
        problem = "the subject is empty"
    elif not (email.html or email.text):
        problem = "the message has no body"
    elif any(_breaks_header(k) or _breaks_header(v) for k, v in email.headers.items()):
        problem = "a header contains a line break or control character"
    elif len(email.html.encode()) + len(email.text.encode()) > LOCAL_SIZE_LIMITS.get(provider, 1 << 62):
        problem = f"the message is larger than {provider} accepts"
    if problem:
        raise RecipientRejected(f"dry run: {problem}", provider=provider, code="dry_run")
    return SendResult(provider)


def _breaks_header(value: str) -> bool:
    return any(ord(ch) < 32 or ord(ch) == 127 for ch in value)


class DryRunSender:
    """An ``EmailProvider`` that validates through the provider a real send would pick."""

    name = NAME

    def __init__(self, sender: EmailProvider) -> None:
        self.sender = sender

    def send(self, email: OutboundEmail) -> SendResult:
        return self.send_via(email, None)

    def send_via(self, email: OutboundEmail, order: Sequence[str] | None) -> SendResult:
        name, provider = self._route(order)
        validate = getattr(provider, "validate", None)
        if validate is not None:
            result: SendResult = validate(email)
            return SendResult(result.provider or name)  # a sandboxed answer names no message
        return validate_locally(email, name)

    def send_batch_via(
        self, messages: Sequence[OutboundEmail], order: Sequence[str] | None
    ) -> list[SendResult | SendError]:
        """A batched job's dry run: the provider a real batch would use validates the batch as one
        request (SendGrid's sandbox mode); ``NotBatchable`` where it cannot (each is validated alone)."""
        name, provider = self._route(order)
        validate_batch = getattr(provider, "validate_batch", None)
        if validate_batch is None:
            raise NotBatchable(provider=name)
        results: list[SendResult | SendError] = validate_batch(messages)
        return [SendResult(r.provider or name) if isinstance(r, SendResult) else r for r in results]

    def _route(self, order: Sequence[str] | None) -> tuple[str, Any]:
        """The provider the real sender would use now (``FailoverSender.would_route``)."""
        would_route = getattr(self.sender, "would_route", None)
        if would_route is None:  # a single provider, not a failover list
            return getattr(self.sender, "name", ""), self.sender
        name = would_route(order)
        return name, self.sender.providers[name]  # type: ignore[attr-defined]

    def close(self) -> None:
        """Nothing of its own: the wrapped sender is closed by whoever built it."""
