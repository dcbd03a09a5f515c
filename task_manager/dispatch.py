"""Hands rendered messages to a provider with bounded concurrency and the retry policy.

Each message ends in exactly one ``Outcome``: ``sent`` (accepted), ``failed`` (rejected,
or transient errors outlasted the policy), ``unknown`` (the provider may have accepted
it: never resent), or ``halted`` when the provider refused as a whole (bad key,
suspended account): the caller pauses the job and the recipient stays unattempted.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from core.errors import (
    AmbiguousSendError,
    ProviderUnavailable,
    RecipientRejected,
    SendError,
    TransientSendError,
)
from core.retry import Attempts, RetryPolicy, call_with_retries
from core.status import DeliveryStatus
from providers.base import EmailProvider, OutboundEmail

HALTED = "halted"


@dataclass(frozen=True)
class Outcome:
    status: str
    reason: str = ""
    provider: str = ""
    message_id: str = ""
    attempts: int = 0


class Dispatcher:
    """Sends with up to ``concurrency`` calls in flight; safe to share across tasks."""

    def __init__(self, provider: EmailProvider, policy: RetryPolicy, concurrency: int = 8) -> None:
        self.provider = provider
        self.policy = policy
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="send")

    def send_all(self, emails: list[OutboundEmail]) -> list[Outcome]:
        """One outcome per email, in order."""
        if len(emails) <= 1:
            return [self.send_one(e) for e in emails]
        return list(self._pool.map(self.send_one, emails))

    def send_one(self, email: OutboundEmail) -> Outcome:
        attempts = Attempts()
        name = self.provider.name
        try:
            result = call_with_retries(lambda: self.provider.send(email), self.policy, attempts)
        except RecipientRejected as err:
            return Outcome(
                DeliveryStatus.FAILED, f"rejected by provider: {err.reason}", name, "", attempts.count
            )
        except TransientSendError as err:
            reason = f"gave up after {attempts.count} attempts: {err.reason}"
            return Outcome(DeliveryStatus.FAILED, reason, name, "", attempts.count)
        except AmbiguousSendError as err:
            reason = f"outcome unknown, not resent: {err.reason}"
            return Outcome(DeliveryStatus.UNKNOWN, reason, name, "", attempts.count)
        except ProviderUnavailable as err:
            return Outcome(HALTED, err.reason, name, "", attempts.count)
        except SendError as err:  # an adapter's own subclass we do not know: be safe
            return Outcome(DeliveryStatus.UNKNOWN, f"outcome unknown: {err.reason}", name, "", attempts.count)
        return Outcome(DeliveryStatus.SENT, "", result.provider or name, result.message_id, attempts.count)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self.provider.close()
