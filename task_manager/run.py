"""One task run's state, shared by the pipeline's steps: the run itself and how it ended.

The steps live in modules named for what they do, in one import order: ``run`` ← ``outcomes``
(delivery rows and the task's end) ← ``claim`` (taking the task, recovering an earlier owner's
rows) and ``sending`` (deciding, rendering, marking and handing over send groups) ← ``stops``
(pause, cancel, re-queue, provider refusal, poison failure) ← ``manager`` (the pipeline).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from core.clock import Clock
from core.errors import WarmupDeferred
from core.models import Job, Recipient, Task
from core.settings import Settings
from core.status import DeliveryStatus
from core.storage import Storage
from task_manager.dispatch import HALTED, Outcome
from task_manager.job_cache import JobCache
from task_manager.lease import TaskLease

# Recipients rendered at once, and the step at which a pause or cancel of the job is noticed.
CHUNK = 200


class TaskOutcome(StrEnum):
    DONE = "done"
    ALREADY_DONE = "already_done"
    BUSY = "busy"  # another host holds a live lease (or a retry is not due yet)
    RETRYING = "retrying"  # some recipients wait for a re-queued attempt
    LOST = "lost"  # our lease was taken over mid-task; we stopped sending
    PAUSED = "paused"  # job paused (by a person, or the provider refused)
    CANCELLED = "cancelled"
    MISSING = "missing"


@dataclass
class TaskRun:
    """Everything one task run needs, passed around instead of a dozen arguments."""

    storage: Storage
    settings: Settings
    job: Job
    task: Task
    recipients: list[Recipient]
    clock: Clock
    jobs: JobCache
    was_retrying: set[int] = field(default_factory=set)  # rows that said ``retrying`` at the claim
    erased: set[str] = field(default_factory=set)  # contacts deleted since the job started
    lease: TaskLease | None = None  # the owner's hold on the task row (None: no running owner)
    throttled_since: dict[int, str] = field(default_factory=dict)  # leftovers deferred by throttling
    resumed: bool = False  # an earlier owner stopped mid-task: its delivery rows are recovered first
    recorded_leftover: set[int] = field(default_factory=set)  # leftovers whose outcome is on record


@dataclass
class Backlog:
    """What a run has yet to finish, kept up as its chunks go by: it becomes the task's ``leftover``."""

    waiting: list[int]  # earlier leftovers not yet handed to a group
    retry_later: list[int] = field(default_factory=list)  # answered ``retrying``: for a re-queue
    retry_after: int = 0  # the longest delay a provider asked for
    only_domain_deferred: bool = True  # every ``retrying`` one was deferred by its recipient domain
    warmup: WarmupDeferred | None = None  # the sending domain's warm-up allowance ran out

    @property
    def parks(self) -> bool:
        """What is left waits only for recipient domains: the task may hand its window slot on."""
        return bool(self.retry_later) and self.only_domain_deferred and not self.waiting

    def take(self, chunk: list[int]) -> None:
        """The chunk's earlier leftovers are about to be handed over: no longer waiting."""
        in_chunk = set(chunk)
        self.waiting = [i for i in self.waiting if i not in in_chunk]

    def note_sent(self, task: Task, chunk: list[int], outcomes: list[Outcome]) -> list[int]:
        """Keep the chunk's ``retrying`` recipients, move the task past it; the recipients ``HALTED``."""
        halted = [i for i, o in zip(chunk, outcomes, strict=True) if o.status == HALTED]
        for index, outcome in zip(chunk, outcomes, strict=True):
            if outcome.status == DeliveryStatus.RETRYING:
                self.retry_later.append(index)
                self.retry_after = max(self.retry_after, outcome.retry_after)
                self.only_domain_deferred = self.only_domain_deferred and outcome.domain_deferred
                self.warmup = outcome.warmup or self.warmup
        task.leftover = self.waiting + self.retry_later
        task.cursor = max(task.cursor, chunk[-1] + 1)
        return halted


def in_chunks(items: list[int], size: int) -> list[list[int]]:
    return [items[i : i + size] for i in range(0, len(items), size)]
