"""One documented exception tree for the whole project.

``MailroomError`` is the root. HTTP status codes never appear here: the API maps these
classes to responses at its edge (``api/errors.py``), the managers map them to recipient
and job outcomes, and the trigger adapters map them to poison-queue decisions.

::

    MailroomError
    ├── SettingsError            a setting is missing or malformed (the host stops)
    ├── StorageError             Table/Queue/Blob storage failed or is unreachable
    │   ├── NotFound             the entity does not exist
    │   ├── AlreadyExists        an insert met an existing entity
    │   ├── Conflict             an If-Match (ETag) update lost a race
    │   └── StorageRefused       storage refused the request for good (a value too large):
    │                            the input is at fault, retrying cannot help
    ├── InvalidInput             input is well-formed but wrong (field-level details)
    │   ├── InvalidCriteria
    │   ├── InvalidTemplate
    │   └── InvalidContinuation  a page token this API did not issue for this list
    ├── StateConflict            the resource's state forbids the action
    ├── BadMessage               a queue message cannot be decoded (goes to -poison)
    ├── RenderError              a template failed for one recipient (recipient skipped)
    └── SendError                a provider call failed; the subclass says what to do
        ├── TransientSendError       retry with backoff (5xx, connect errors): spends an attempt
        │   └── Throttled            nothing was sent: the provider asked us to slow down (429);
        │       │                    deferred, never an attempt (THROTTLE_HORIZON_SECONDS bounds it)
        │       └── ProviderHeld     nothing was sent: every provider is held or unhealthy
        ├── RecipientRejected        permanent for this recipient → failed
        ├── ProviderUnavailable      permanent for the provider (401/403, quota) → pause job
        └── AmbiguousSendError       the request may have been accepted → unknown, never resent
"""

from __future__ import annotations

from dataclasses import dataclass, field


class MailroomError(Exception):
    """Root of every error Mailroom raises on purpose."""


class SettingsError(MailroomError):
    """A setting is missing or malformed; the message names it."""


class StorageError(MailroomError):
    """Storage failed or could not be reached."""


class NotFound(StorageError):
    """The entity does not exist."""


class AlreadyExists(StorageError):
    """An insert met an existing entity."""


class Conflict(StorageError):
    """An ETag-guarded update lost a race with another writer."""


class StorageRefused(StorageError):
    """Storage answered that this request can never succeed (a 400-class refusal).

    A property over 64 KiB, an entity over 1 MiB or a queue message over 64 KiB is the
    input's fault, not an outage: callers must not retry it and the API must not answer 503.
    ``too_large`` says it was a size limit; ``column`` names the stored property when it
    could be told (``""`` otherwise); ``code`` is the service's error code.
    """

    def __init__(self, message: str, code: str = "", too_large: bool = False, column: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.too_large = too_large
        self.column = column


@dataclass
class FieldProblem:
    """One invalid field: ``field`` is a dotted path into the request body."""

    field: str
    message: str


class InvalidInput(MailroomError):
    """Well-formed input that breaks a rule; carries field-level problems."""

    def __init__(self, message: str, problems: list[FieldProblem] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.problems: list[FieldProblem] = problems or []


class InvalidCriteria(InvalidInput):
    """Recipient criteria that do not parse or break a limit."""


class InvalidTemplate(InvalidInput):
    """A template that does not compile or reaches for what the sandbox forbids."""


class InvalidContinuation(InvalidInput):
    """A ``continuation`` token that is forged, altered or issued for another list or tenant."""


class StateConflict(MailroomError):
    """The resource's current state forbids the requested action."""


class BadMessage(MailroomError):
    """A queue message that cannot be decoded; it belongs in the poison queue."""


class RenderError(MailroomError):
    """A template failed while rendering for one recipient."""


@dataclass
class SendError(MailroomError):
    """A provider call failed. ``reason`` is for people; no addresses in it."""

    reason: str
    provider: str = ""
    code: str = ""
    extra: dict = field(default_factory=dict)

    def __str__(self) -> str:
        return self.reason


@dataclass
class TransientSendError(SendError):
    """Worth retrying; ``retry_after`` is the provider's hint in seconds, if any."""

    retry_after: float | None = None


class Throttled(TransientSendError):
    """The provider asked us to slow down (429, ``Retry-After``): it refused before accepting.

    Throttling is a pace, not a failure: waiting for it never spends one of the recipient's
    ``MAX_SEND_ATTEMPTS`` (a storm of 429s would otherwise fail people who were never tried),
    so a throttled recipient is deferred, for ``THROTTLE_HORIZON_SECONDS`` at most.
    """


class ProviderHeld(Throttled):
    """Nothing was sent: the provider asked to wait (``Retry-After``) or its breaker is open.

    Waiting for it does not spend one of the recipient's attempts.
    """


class DomainDeferred(Throttled):
    """Nothing was sent: the recipient's domain asked us to slow down, or its pace is spent.

    A temporary refusal (SMTP 421/450/451/452/454, "try again later") or a per-domain pace
    with no token now (``providers/pacing.py``). Unlike a 429 it is not waited out in the
    sending thread (that would hold a thread other domains need): the recipient goes back as
    ``retrying`` at once and the task is re-queued after ``retry_after``. No attempt is spent.
    """


@dataclass
class WarmupDeferred(Throttled):
    """Nothing was sent: the sending domain's warm-up allowance for today (UTC) is used up.

    Not the recipient's fault and not the provider's: the recipient goes back as ``retrying``
    without spending an attempt, its task waits until the next UTC day (``retry_after``), and no
    throttle horizon runs (a ramp that takes weeks must not fail anyone). ``continues_at`` is
    when the next day's allowance opens; ``allowances_ahead`` the allowances of the days from then
    on (past their end the domain is warmed up: no cap), from which a job's ETA is worked out.
    """

    continues_at: str = ""
    allowances_ahead: tuple[int, ...] = ()


class RecipientRejected(SendError):
    """Permanent for this recipient (invalid address, rejected content)."""


class ProviderUnavailable(SendError):
    """Permanent for the provider (bad credentials, suspended, quota): stop the job."""


@dataclass
class NotBatchable(MailroomError):
    """The provider a batch would go to now takes one message per request, so nothing was sent.

    Failover chose a provider without personalizations (SMTP, ACS), or a dry run validates
    locally: the caller renders each recipient whole and sends them one by one through it.
    """

    provider: str = ""


class AmbiguousSendError(SendError):
    """The provider may have accepted the message: record ``unknown``, never resend."""
