"""The one status vocabulary (DESIGN §4)."""

from __future__ import annotations

from enum import StrEnum


class CampaignStatus(StrEnum):
    DRAFT = "draft"
    SCHEDULED = "scheduled"
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    FAILED = "failed"


class JobStatus(StrEnum):
    QUEUED = "queued"
    EXPANDING = "expanding"
    SENDING = "sending"
    PAUSED = "paused"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    FAILED = "failed"

    @property
    def is_final(self) -> bool:
        return self in FINAL_JOB_STATUSES


FINAL_JOB_STATUSES = frozenset({JobStatus.COMPLETED, JobStatus.CANCELLED, JobStatus.FAILED})


class TaskStatus(StrEnum):
    PENDING = "pending"  # written, not yet claimed
    SENDING = "sending"  # claimed by a host under a lease
    RETRYING = "retrying"  # some recipients wait for a re-queued attempt
    DONE = "done"  # every recipient terminal
    PAUSED = "paused"  # the job is paused; resumes where it stopped
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in (TaskStatus.DONE, TaskStatus.CANCELLED)


class DeliveryStatus(StrEnum):
    # terminal
    SENT = "sent"
    DELIVERED = "delivered"
    BOUNCED = "bounced"
    DROPPED = "dropped"
    COMPLAINED = "complained"
    FAILED = "failed"
    SUPPRESSED = "suppressed"
    SKIPPED = "skipped"
    UNKNOWN = "unknown"
    CANCELLED = "cancelled"
    # not terminal
    PENDING = "pending"
    SENDING = "sending"
    RETRYING = "retrying"
    DEFERRED = "deferred"

    @property
    def is_terminal(self) -> bool:
        return self not in NON_TERMINAL_DELIVERY_STATUSES


NON_TERMINAL_DELIVERY_STATUSES = frozenset(
    {DeliveryStatus.PENDING, DeliveryStatus.SENDING, DeliveryStatus.RETRYING, DeliveryStatus.DEFERRED}
)
TERMINAL_DELIVERY_STATUSES = frozenset(set(DeliveryStatus) - NON_TERMINAL_DELIVERY_STATUSES)


def zero_counts() -> dict[str, int]:
    """Every delivery status with a zero, in vocabulary order (API: all fourteen, always)."""
    return {status.value: 0 for status in DeliveryStatus}


def add_counts(total: dict[str, int], part: dict[str, int]) -> dict[str, int]:
    """Add ``part`` into ``total`` in place and return it."""
    for key, value in part.items():
        total[key] = total.get(key, 0) + int(value)
    return total
