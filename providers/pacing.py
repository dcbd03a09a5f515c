"""Per-domain pacing that listens to deferrals (AIMD), across hosts.

Receiving mail systems meter each sender: Gmail, Microsoft and Yahoo answer a sender that is
too fast with temporary refusals (SMTP 421/450/451/452, "try again later", SendGrid
``deferred`` events). Mailroom paces every (tenant, sending domain, recipient domain group)
on its own, so a slow Yahoo never slows Gmail, and one tenant's pace never spends another's:

- **groups**: recipient domains are grouped by the mail system behind them (gmail.com and
  googlemail.com are ``gmail``; outlook.com, hotmail.com, live.com, msn.com are
  ``microsoft``; …); any other domain is its own group;
- **rate**: a group named in ``PACING_RATES`` starts at that rate (sends per second, across
  all hosts); any other is unpaced until it defers;
- **multiplicative decrease**: a deferral multiplies the scope's rate by
  ``PACING_DECREASE_FACTOR`` (0.5), at most once a second (a burst of answers to one pace is
  one signal), never below ``PACING_MIN_RATE``; an unpaced scope starts from the rate this
  host was sending it at;
- **additive increase**: every ``PACING_INCREASE_SECONDS`` of successes without a deferral
  adds ``PACING_INCREASE_STEP``, until the scope is back at its ceiling (its configured
  rate, or the rate it had before its first deferral) and is unpaced again;
- **deferred, never failed early**: a refusal, or no token within a second, raises
  ``DomainDeferred`` (a ``Throttled``): the recipient is ``retrying`` without spending an
  attempt and the task is re-queued after ``PACING_RETRY_SECONDS``; only
  ``THROTTLE_HORIZON_SECONDS`` of it ends ``failed``.

Shared state: one ``Pacing`` row per scope (PartitionKey the scope, RowKey ``rate``) with the
current ``rate`` (0: unpaced), its ``ceiling`` and the last change, written with ETags; hosts
re-read it at most once a second. The tokens themselves come from ``providers.rate_limits``
(scope ``pace:<scope>``), the same one-second windows the tenant and provider limits use.
"""

from __future__ import annotations

import re
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from core.errors import (
    Conflict,
    DomainDeferred,
    NotBatchable,
    SendError,
    StorageError,
    Throttled,
    TransientSendError,
)
from core.models import PacingRow
from core.settings import Settings
from core.storage import PACING, Entity, Storage
from providers.base import EmailProvider, OutboundEmail, SendResult
from providers.rate_limits import RateLimiter, parse_rates
from providers.warmup import WarmupGate

ROW = "rate"
SYNC_SECONDS = 1.0
DECREASE_COOLDOWN_SECONDS = 1.0
TOKEN_WAIT_SECONDS = 0.25  # a thread waits at most this for a paced token, then defers the recipient
DEFERRAL_CODES = frozenset({"421", "450", "451", "452", "454"})
_TRY_LATER = re.compile(r"try (again )?later|throttl|rate limit|too many (messages|connections)", re.I)
_WRITE_TRIES = 6
PACED, SLOWED = "paced", "slowed"  # a ``DomainDeferred`` without a token: at the ceiling, or slowed

GROUPS: dict[str, str] = {
    **dict.fromkeys(("gmail.com", "googlemail.com"), "gmail"),
    **dict.fromkeys(("outlook.com", "hotmail.com", "live.com", "msn.com", "outlook.fr", "hotmail.co.uk"),
                    "microsoft"),
    **dict.fromkeys(("yahoo.com", "ymail.com", "rocketmail.com", "aol.com", "yahoo.co.uk", "yahoo.fr"),
                    "yahoo"),
    **dict.fromkeys(("icloud.com", "me.com", "mac.com"), "apple"),
}


def domain_group(domain: str) -> str:
    """The mail system behind a recipient domain (the domain itself when not a known one)."""
    domain = domain.lower().rstrip(".")
    return GROUPS.get(domain, domain)


def scope_of(tenant_id: str, from_email: str, to_email: str) -> str:
    """``{tenant}|{sending domain}|{recipient group}``: the unit one pace applies to."""
    sending = from_email.rpartition("@")[2].lower()
    return f"{tenant_id}|{sending}|{domain_group(to_email.rpartition('@')[2])}"


def is_deferral_answer(code: str, text: str) -> bool:
    """An SMTP answer that means "not now, you are too fast" (421/450/451/452/454, try again later)."""
    return code in DEFERRAL_CODES or bool(_TRY_LATER.search(text))


def is_deferral(err: TransientSendError) -> bool:
    """A temporary refusal by the receiving side: slow that domain down, retry later."""
    return isinstance(err, DomainDeferred) or (
        not isinstance(err, Throttled) and (err.code in DEFERRAL_CODES or bool(_TRY_LATER.search(err.reason)))
    )


@dataclass
class PacingConfig:
    rates: dict[str, float]
    min_rate: float = 1.0
    decrease_factor: float = 0.5
    increase_step: float = 1.0
    increase_seconds: float = 2.0
    retry_seconds: int = 5

    @classmethod
    def from_settings(cls, settings: Settings) -> PacingConfig:
        return cls(
            parse_rates(settings.pacing_rates), settings.pacing_min_rate, settings.pacing_decrease_factor,
            settings.pacing_increase_step, settings.pacing_increase_seconds, settings.pacing_retry_seconds,
        )

    def configured(self, scope: str) -> float:
        """The scope's ceiling from ``PACING_RATES`` (0: unpaced)."""
        return self.rates.get(scope.rsplit("|", 1)[-1], 0.0)


# -- the shared row: every change is an ETag-guarded read-modify-write ------------------------------


def slow_down(storage: Storage, config: PacingConfig, scope: str, now: float, observed: float = 0.0) -> float:
    """Multiplicative decrease of ``scope`` (once per second at most); returns the rate now in force."""

    def change(row: Entity) -> Entity | None:
        rate = float(row.get("rate", 0) or 0)
        if rate and now - float(row.get("changed_at", 0) or 0) < DECREASE_COOLDOWN_SECONDS:
            return None  # the same burst: one signal
        ceiling = (float(row.get("ceiling", 0) or 0) or config.configured(scope) or observed
                   or config.min_rate * 10)
        current = rate or config.configured(scope) or observed or ceiling
        return {"rate": max(config.min_rate, current * config.decrease_factor), "ceiling": ceiling,
                "changed_at": now, "deferrals": int(row.get("deferrals", 0) or 0) + 1}

    return _change_row(storage, scope, change)


def speed_up(storage: Storage, config: PacingConfig, scope: str, now: float) -> float:
    """Additive increase after a quiet ``increase_seconds``; back at the ceiling the scope is unpaced."""

    def change(row: Entity) -> Entity | None:
        rate = float(row.get("rate", 0) or 0)
        if not rate or now - float(row.get("changed_at", 0) or 0) < config.increase_seconds:
            return None
        ceiling = float(row.get("ceiling", 0) or 0)
        raised = rate + config.increase_step
        return {"rate": 0.0 if raised >= ceiling else raised, "changed_at": now}

    return _change_row(storage, scope, change)


def _change_row(storage: Storage, scope: str, change: Callable[[Entity], Entity | None]) -> float:
    table = storage.table(PACING)
    decided: list[Entity] = []

    def write(row: Entity | None) -> Entity | None:
        decided.clear()
        changes = change(row or {})
        if changes is None:
            decided.append(row or {})
            return None
        return PacingRow.changes(PacingRow.key(scope), **changes)

    try:
        written = table.modify(scope, ROW, write, tries=_WRITE_TRIES)
    except Conflict:
        written = table.find(scope, ROW)  # busy: the rate someone else just wrote is in force
    in_force = written if written is not None else (decided[0] if decided else {})
    return float((in_force or {}).get("rate", 0) or 0)


# -- one host's view -----------------------------------------------------------------------------


class DomainPacer:
    """A host's pacing: cached rates per scope, tokens from the shared limiter, AIMD on answers."""

    def __init__(
        self, storage: Storage, config: PacingConfig, limiter: RateLimiter | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.storage, self.config, self.clock = storage, config, clock
        self.limiter = limiter or RateLimiter(storage)
        self._rates: dict[str, tuple[float, float]] = {}  # scope -> (read at, rate; 0 unpaced)
        self._sent: dict[str, deque[float]] = {}
        self._next_increase: dict[str, float] = {}  # a slowed scope's successes try an increase this often
        self._lock = threading.Lock()
        self._synced_at = float("-inf")

    def rate(self, scope: str) -> float:
        """The scope's rate in force (0: unpaced); the host's view of every paced scope is one
        query of the ``Pacing`` table at most once a second, however many domains it sends to.

        Only scopes that were ever slowed have a row, so the query reads a handful of rows; one
        request per host per second instead of one per recipient domain per second.
        """
        self._sync(self.clock())
        with self._lock:
            cached = self._rates.get(scope)
        rate = cached[1] if cached is not None else 0.0
        return rate or self.config.configured(scope)

    def _sync(self, now: float) -> None:
        with self._lock:
            if now - self._synced_at < SYNC_SECONDS:
                return
            self._synced_at = now  # one thread reads; the others use the view they have
        try:
            rows = list(self.storage.table(PACING).query(
                "RowKey eq @r", {"r": ROW}, select=["PartitionKey", "rate"]))
        except StorageError:
            return
        with self._lock:
            self._rates = {row["PartitionKey"]: (now, float(row.get("rate", 0) or 0)) for row in rows}

    def admit(self, scope: str) -> None:
        """Take a token of the scope's pace, or raise ``DomainDeferred`` (nothing was sent)."""
        rate = self.rate(scope)
        if rate and not self.limiter.try_acquire(f"pace:{scope}", rate, TOKEN_WAIT_SECONDS):
            # "slowed": the domain deferred lately and is below its ceiling (a burst: its recipients
            # wait off the job's window); "paced": at its ceiling, the pace doing its ordinary work.
            slowed = rate < (self.config.configured(scope) or float("inf"))
            raise DomainDeferred(f"paced at {rate:g}/s for this recipient domain; deferred",
                                 code=SLOWED if slowed else PACED, retry_after=self.config.retry_seconds)

    def deferred(self, scope: str) -> float:
        now = self.clock()
        rate = slow_down(self.storage, self.config, scope, now, self.observed_rate(scope, now))
        return self._remember(scope, rate or self.config.configured(scope), now)

    def succeeded(self, scope: str) -> None:
        now = self.clock()
        with self._lock:
            self._sent.setdefault(scope, deque(maxlen=2048)).append(now)
            due = now >= self._next_increase.get(scope, 0.0)
            if due:
                self._next_increase[scope] = now + self.config.increase_seconds / 2
        if due and self._is_slowed(scope):
            rate = speed_up(self.storage, self.config, scope, now)
            self._remember(scope, rate or self.config.configured(scope), now)

    def observed_rate(self, scope: str, now: float, span: float = 5.0) -> float:
        """Sends per second this host made to the scope over the last ``span`` seconds."""
        with self._lock:
            recent = [t for t in self._sent.get(scope, ()) if now - t <= span]
        return len(recent) / span

    def _is_slowed(self, scope: str) -> bool:
        rate = self.rate(scope)
        return bool(rate) and rate < (self.config.configured(scope) or float("inf"))

    def _remember(self, scope: str, rate: float, now: float) -> float:
        with self._lock:
            self._rates[scope] = (now, rate)
        return rate


class PacedSender:
    """An ``EmailProvider`` that paces every message by its (tenant, sending domain, recipient group)
    and, with a ``warmup`` gate, keeps a warming sending domain within its daily allowance."""

    name = "paced"

    def __init__(self, inner: EmailProvider, pacer: DomainPacer, warmup: WarmupGate | None = None) -> None:
        self.inner, self.pacer, self.warmup = inner, pacer, warmup
        self.name = getattr(inner, "name", "paced")

    def send(self, email: OutboundEmail) -> SendResult:
        return self.send_via(email, None)

    def send_via(self, email: OutboundEmail, order: Sequence[str] | None) -> SendResult:
        tenant_id = email.custom_args.get("tenant_id", "")
        scope = scope_of(tenant_id, email.from_email, email.to_email)
        self.pacer.admit(scope)
        if self.warmup is not None:  # after the pace: a paced-out recipient spends no allowance
            self.warmup.admit(tenant_id, email.from_email)
        try:
            send_via = getattr(self.inner, "send_via", None)
            result = send_via(email, order) if send_via is not None and order else self.inner.send(email)
        except TransientSendError as err:
            if not is_deferral(err):
                raise
            self.pacer.deferred(scope)
            raise DomainDeferred(f"deferred by the recipient's domain: {err.reason}", provider=err.provider,
                                 code=err.code, retry_after=err.retry_after or self.pacer.config.retry_seconds
                                 ) from err
        self.pacer.succeeded(scope)
        return result

    def send_batch_via(
        self, messages: Sequence[OutboundEmail], order: Sequence[str] | None
    ) -> list[SendResult | SendError]:
        """A batch, paced per recipient: each takes a token of its own domain's pace, then one of
        its sending domain's warm-up allowance (one refused either is ``DomainDeferred`` or
        ``WarmupDeferred`` and left out of the request, as ``send_via`` would refuse it alone), the
        rest go in one request, and each answer speeds up or slows down its own domain."""
        send_batch_via = getattr(self.inner, "send_batch_via", None)
        if send_batch_via is None:
            raise NotBatchable(provider=self.name)
        scopes = [scope_of(m.custom_args.get("tenant_id", ""), m.from_email, m.to_email) for m in messages]
        results: list[SendResult | SendError | None] = [None] * len(messages)
        admitted: list[int] = []
        for index, scope in enumerate(scopes):
            message = messages[index]
            try:
                self.pacer.admit(scope)
                if self.warmup is not None:  # after the pace: a paced-out recipient spends no allowance
                    self.warmup.admit(message.custom_args.get("tenant_id", ""), message.from_email)
                admitted.append(index)
            except Throttled as err:  # the pace, the warm-up allowance, or its row could not be counted
                results[index] = err
        if admitted:
            answers = send_batch_via([messages[i] for i in admitted], order)
            for index, answer in zip(admitted, answers, strict=True):
                if isinstance(answer, SendResult):
                    self.pacer.succeeded(scopes[index])
                elif isinstance(answer, TransientSendError) and is_deferral(answer):
                    self.pacer.deferred(scopes[index])
                    answer = DomainDeferred(f"deferred by the recipient's domain: {answer.reason}",
                                            provider=answer.provider, code=answer.code,
                                            retry_after=answer.retry_after or self.pacer.config.retry_seconds)
                results[index] = answer
        return [r for r in results if r is not None]

    def close(self) -> None:
        self.inner.close()
