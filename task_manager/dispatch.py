"""Hands rendered messages to a provider with bounded concurrency and the retry policy.

Each message ends in exactly one ``Outcome``: ``sent`` (accepted), ``failed`` (rejected,
or its last attempt failed), ``retrying`` (a transient failure outlasted this task's time
budget while attempts remain, or the provider kept throttling it (``throttled``: no attempt
spent): the caller re-queues it with ``retry_after``), ``unknown``
(the provider may have accepted it: never resent, unless the tenant chose at-least-once),
or ``halted`` when the provider refused as a whole (bad key, suspended account): the
caller pauses the job and the recipient stays unattempted.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from core.errors import (
    AmbiguousSendError,
    DomainDeferred,
    ProviderUnavailable,
    RecipientRejected,
    SendError,
    Throttled,
    TransientSendError,
    WarmupDeferred,
)
from core.retry import Attempts, RetryPolicy, call_with_retries
from core.status import DeliveryStatus
from providers.base import EmailProvider, OutboundEmail, SendResult
from providers.dry_run import DryRunSender
from providers.pacing import PACED
from providers.rate_limits import RateLimiter
from task_manager.mark_budget import MAX_SEND_GROUP, MarkBudget, mark_budget_size
from task_manager.send_pool import FairSendPool

R = TypeVar("R")

HALTED = "halted"
NOT_ATTEMPTED = "not attempted: the provider refused this task's earlier sends"


@dataclass(frozen=True)
class Outcome:
    status: str
    reason: str = ""
    provider: str = ""
    message_id: str = ""
    attempts: int = 0
    retry_after: int = 0  # seconds, for ``retrying``
    throttled: bool = False  # ``retrying`` because the provider asked to slow down, not an error
    # ``retrying`` because the recipient's domain refused it for now, or is slowed after refusing
    # (not the ordinary pace at its ceiling): the task may park off its job's window
    domain_deferred: bool = False
    warmup: WarmupDeferred | None = None  # ``retrying`` until the sending domain's next warm-up day


@dataclass(frozen=True)
class Route:
    """How one task's messages go out: the tenant's providers, pace and semantics."""

    providers: tuple[str, ...] = ()
    tenant_id: str = ""
    tenant_per_second: float | None = None
    resend_ambiguous: bool = False  # the tenant chose at-least-once
    deadline: float | None = None  # ``time.monotonic()`` instant that ends this task's retrying


class Dispatcher:
    """Sends with up to ``concurrency`` calls in flight; safe to share across tasks.

    The calls in flight are shared between tenants in turn (``FairSendPool``), so one tenant's
    many tasks on this host do not queue ahead of another tenant's few. ``marks`` is the host's
    budget of recipients named in flight (``mark_budget.py``), shared by the same tasks.
    """

    def __init__(
        self,
        provider: EmailProvider,
        policy: RetryPolicy,
        concurrency: int = 8,
        limiter: RateLimiter | None = None,
        pool: FairSendPool | None = None,
        marks: MarkBudget | None = None,
    ) -> None:
        self.provider = provider
        self.policy = policy
        self.limiter = limiter
        self._pool = pool or FairSendPool(concurrency, name="send")
        self.marks = marks or MarkBudget(mark_budget_size(concurrency, MAX_SEND_GROUP))
        self._dry_run: Dispatcher | None = None
        self._dry_run_lock = threading.Lock()

    def dry_run(self) -> Dispatcher:
        """This dispatcher for dry-run jobs: the same provider routing, retry policy and sending
        threads (tenants still take turns), but each message is validated instead of delivered
        (``providers/dry_run.py``) and no tenant rate-limit token is spent."""
        with self._dry_run_lock:
            if self._dry_run is None:
                self._dry_run = Dispatcher(DryRunSender(self.provider), self.policy, pool=self._pool,
                                           marks=self.marks)
            return self._dry_run

    def send_all(
        self, emails: list[OutboundEmail], route: Route | None = None, prior: Sequence[int] | None = None
    ) -> list[Outcome]:
        """One outcome per email, in order; ``prior``: attempts each recipient already had."""
        route = route or Route()
        prior = list(prior) if prior is not None else [0] * len(emails)
        halt = threading.Event()  # the provider refused as a whole: attempt nothing more
        pairs = list(zip(emails, prior, strict=True))
        if len(emails) <= 1:
            return [self.send_one(e, route, p, halt) for e, p in pairs]
        return self._pool.map(
            route.tenant_id, lambda pair: self.send_one(pair[0], route, pair[1], halt), pairs
        )

    def send_one(
        self,
        email: OutboundEmail,
        route: Route | None = None,
        prior: int = 0,
        halt: threading.Event | None = None,
    ) -> Outcome:
        route = route or Route()
        attempts = Attempts(count=prior)
        name = getattr(self.provider, "name", "")
        if halt is not None and halt.is_set():
            return Outcome(HALTED, NOT_ATTEMPTED, name)
        try:
            result = call_with_retries(lambda: self._attempt(email, route), self.policy, attempts,
                                       deadline=route.deadline)
        except SendError as err:
            return self.outcome_of(err, attempts.count, route, name, halt)
        return Outcome(DeliveryStatus.SENT, "", result.provider or name, result.message_id, attempts.count)

    def outcome_of(
        self, err: SendError, attempts: int, route: Route, name: str = "", halt: threading.Event | None = None
    ) -> Outcome:
        """What a recipient's send ended in when the provider (after any retries) raised ``err``;
        ``attempts``: the real attempts it has had, earlier runs included."""
        provider = err.provider or name
        if isinstance(err, RecipientRejected):
            reason = f"rejected by provider: {err.reason}"
            return Outcome(DeliveryStatus.FAILED, reason, provider, "", attempts)
        if isinstance(err, WarmupDeferred):  # nothing was sent; no attempt spent, no throttle horizon
            return Outcome(DeliveryStatus.RETRYING, err.reason, provider, "", attempts,
                           max(1, math.ceil(err.retry_after or 1)), warmup=err)
        if isinstance(err, Throttled):  # nothing was sent: deferred, and no attempt is spent
            wait = self.policy.requeue_after(1, err.retry_after)
            return Outcome(DeliveryStatus.RETRYING, f"throttled by the provider, will retry: {err.reason}",
                           provider, "", attempts, wait, throttled=True,
                           domain_deferred=isinstance(err, DomainDeferred) and err.code != PACED)
        if isinstance(err, TransientSendError):
            if not self.policy.exhausted(attempts):
                wait = self.policy.requeue_after(max(1, attempts), err.retry_after)
                reason = f"will retry: {err.reason}"
                return Outcome(DeliveryStatus.RETRYING, reason, provider, "", attempts, wait)
            reason = f"gave up after {attempts} attempts: {err.reason}"
            return Outcome(DeliveryStatus.FAILED, reason, provider, "", attempts)
        if isinstance(err, AmbiguousSendError):
            if route.resend_ambiguous and not self.policy.exhausted(attempts):
                wait = self.policy.requeue_after(attempts)
                return Outcome(DeliveryStatus.RETRYING, f"outcome unknown, will resend (at-least-once): "
                               f"{err.reason}", provider, "", attempts, wait)
            return Outcome(DeliveryStatus.UNKNOWN, f"outcome unknown, not resent: {err.reason}", provider, "",
                           attempts)
        if isinstance(err, ProviderUnavailable):
            if halt is not None:
                halt.set()
            return Outcome(HALTED, err.reason, provider, "", attempts)
        # an adapter's own subclass we do not know: be safe
        return Outcome(DeliveryStatus.UNKNOWN, f"outcome unknown: {err.reason}", provider, "", attempts)

    def in_turn(self, tenant_id: str, work: Callable[[], R], weight: int) -> R:
        """Run ``work`` on a sending thread in ``tenant_id``'s line, counted as ``weight`` sends
        (a batch of n recipients takes n sends' share of the threads, not one)."""
        return self._pool.map(tenant_id, lambda _: work(), [None], weight=weight)[0]

    def _attempt(self, email: OutboundEmail, route: Route) -> SendResult:
        if self.limiter is not None and route.tenant_per_second:
            self.limiter.acquire(f"tenant:{route.tenant_id}", route.tenant_per_second)
        send_via = getattr(self.provider, "send_via", None)
        if send_via is not None and route.providers:
            return send_via(email, route.providers)
        return self.provider.send(email)

    def close(self) -> None:
        self._pool.shutdown()
        self.provider.close()
