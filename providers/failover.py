"""Sends through the first healthy provider of an ordered list (a tenant's, or the default).

Per attempt: walk the providers in order, skip one whose breaker is open (``providers.health``)
or that asked everyone to wait (a 429's ``Retry-After`` holds the provider for the whole
host, not only for the thread that got it), take a token of its rate limit
(``providers.rate_limits``), send, and tell the health board how it went. A transient failure is
raised for the retry policy to back off; the next attempt picks again, so once the
breaker opens traffic moves to the next provider. When every provider is held or open,
``ProviderHeld`` says how long until one may be tried: waiting spends no attempt.

What counts against health: 5xx, connect failures and ambiguous timeouts. A recipient's
rejection (4xx) is a healthy provider answering; a 429 is a pace, not an outage.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

from core.errors import (
    AmbiguousSendError,
    NotBatchable,
    ProviderHeld,
    ProviderUnavailable,
    RecipientRejected,
    SendError,
    Throttled,
    TransientSendError,
)
from providers.base import EmailProvider, OutboundEmail, SendResult
from providers.health import BreakerState, HealthBoard, Permit
from providers.rate_limits import RateLimiter


class FailoverSender:
    """An ``EmailProvider`` over several, in order, with shared health and rate limits."""

    name = "failover"

    def __init__(
        self,
        providers: dict[str, EmailProvider],
        order: Sequence[str],
        health: HealthBoard | None = None,
        limiter: RateLimiter | None = None,
        rates: dict[str, float] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.providers = providers
        self.order = [name for name in order if name in providers] or list(providers)
        self.health = health
        self.limiter = limiter
        self.rates = rates or {}
        self.clock = clock
        self._held_until: dict[str, float] = {}
        self._lock = threading.Lock()

    def send(self, email: OutboundEmail) -> SendResult:
        return self.send_via(email, self.order)

    def send_via(self, email: OutboundEmail, order: Sequence[str] | None) -> SendResult:
        """Send through the first provider of ``order`` that may take it now."""
        names = [n for n in (order or self.order) if n in self.providers] or self.order
        waits: list[float] = []
        for name in names:
            held = self._held_for(name)
            if held > 0:
                waits.append(held)
                continue
            permit = self.health.permit(name) if self.health else Permit(name)
            if permit is None:
                waits.append(self.health.reopens_in(name) if self.health else 1.0)
                continue
            return self._send_one(name, permit, email)
        raise ProviderHeld(
            "every provider is unhealthy or asked to wait", provider=names[0] if names else "",
            code="held", retry_after=max(0.05, min(waits, default=1.0)),
        )

    def send_batch_via(
        self, messages: Sequence[OutboundEmail], order: Sequence[str] | None
    ) -> list[SendResult | SendError]:
        """A batch of one body (``SendGridProvider.send_batch``) through the first provider of
        ``order`` that may take it now: the whole batch moves on together, never split.

        ``NotBatchable`` when that provider sends one message per request (nothing was sent: the
        caller sends each recipient through it and the ones after it). One request is one health
        sample, and the provider's rate limit is spent per recipient.
        """
        names = [n for n in (order or self.order) if n in self.providers] or self.order
        waits: list[float] = []
        for name in names:
            held = self._held_for(name)
            if held > 0:
                waits.append(held)
                continue
            send_batch = getattr(self.providers[name], "send_batch", None)
            if send_batch is None:
                raise NotBatchable(provider=name)
            permit = self.health.permit(name) if self.health else Permit(name)
            if permit is None:
                waits.append(self.health.reopens_in(name) if self.health else 1.0)
                continue
            if self.limiter is not None:
                for _ in messages:
                    self.limiter.acquire(f"provider:{name}", self.rates.get(name))
            results: list[SendResult | SendError] = send_batch(messages)
            self._record_batch(name, permit, results)
            return results
        raise ProviderHeld(
            "every provider is unhealthy or asked to wait", provider=names[0] if names else "",
            code="held", retry_after=max(0.05, min(waits, default=1.0)),
        )

    def _record_batch(self, name: str, permit: Permit, results: list[SendResult | SendError]) -> None:
        """A batch's answer is the provider's answer to one request: a 429 holds it, a 5xx or no
        answer counts one failure, anything it answered for recipients counts one success."""
        first = results[0] if results else None
        whole = isinstance(first, SendError) and all(r is first for r in results)
        if whole and isinstance(first, Throttled):
            self._hold(name, first.retry_after)
            if permit.probe:
                self._record(permit, ok=True)
        elif whole and isinstance(first, ProviderUnavailable):
            return
        else:
            failed = whole and isinstance(first, (TransientSendError, AmbiguousSendError))
            self._record(permit, ok=not failed)

    def would_route(self, order: Sequence[str] | None) -> str:
        """The provider ``send_via`` would pick now, decided without writing anything.

        For dry runs: health and holds are read as this host last saw them, no probe is
        claimed and no rate-limit token taken. ``ProviderHeld`` when every provider waits.
        """
        names = [n for n in (order or self.order) if n in self.providers] or self.order
        waits: list[float] = []
        for name in names:
            held = self._held_for(name)
            if held <= 0 and self.health is not None and self.health.state(name) != BreakerState.CLOSED:
                held = self.health.reopens_in(name)  # past the cool-down a real send would probe it
            if held > 0:
                waits.append(held)
                continue
            return name
        raise ProviderHeld(
            "every provider is unhealthy or asked to wait", provider=names[0] if names else "",
            code="held", retry_after=max(0.05, min(waits, default=1.0)),
        )

    def _send_one(self, name: str, permit: Permit, email: OutboundEmail) -> SendResult:
        if self.limiter is not None:
            self.limiter.acquire(f"provider:{name}", self.rates.get(name))
        try:
            result = self.providers[name].send(email)
        except TransientSendError as err:
            if isinstance(err, Throttled):
                self._hold(name, err.retry_after)
                if permit.probe:
                    self._record(permit, ok=True)  # it answered: up, only busy
            else:
                self._record(permit, ok=False)
            raise
        except AmbiguousSendError:
            self._record(permit, ok=False)
            raise
        except RecipientRejected:
            self._record(permit, ok=True)
            raise
        except ProviderUnavailable:
            raise
        self._record(permit, ok=True)
        return result

    def _record(self, permit: Permit, ok: bool) -> None:
        if self.health is not None:
            self.health.record(permit, ok)

    def _hold(self, name: str, seconds: float | None) -> None:
        if not seconds:
            return
        with self._lock:
            self._held_until[name] = max(self._held_until.get(name, 0.0), self.clock() + seconds)

    def _held_for(self, name: str) -> float:
        with self._lock:
            return max(0.0, self._held_until.get(name, 0.0) - self.clock())

    def close(self) -> None:
        for provider in self.providers.values():
            provider.close()
