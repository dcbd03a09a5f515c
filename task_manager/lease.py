"""A running task's lease: kept alive while its sends are in flight, and proven before it writes.

Why a heartbeat. A task's lease (``TASK_LEASE_SECONDS``) used to be renewed only by the
task-row write at each chunk boundary, so a chunk whose provider calls took longer than
the lease (a slow provider, a long ``Retry-After``) let another host take the task over while
its first owner was still sending: recipients ended ``unknown`` and the first owner's late
writes landed on a task someone else had finished. While a chunk's sends are in flight a
background thread now renews ``lease_until`` every third of the lease (an ETag-guarded merge
of that one column on the task row, and only when no other write renewed it meanwhile), so the
lease can be short (a dead host's task is taken over within it) and a send may take as long as
it takes. Cost: at most one task write per ``lease/3`` seconds per running task, and none when
the task finishes faster than that (the claim's write set the lease).

Why one ETag. The owner writes the task row with the ETag of its own last write; the heartbeat
writes it too, so both go through this object's lock and the heartbeat hands its new ETag to
the task the owner writes with next. The heartbeat only runs while a chunk's send groups run
(``task_manager.sending.GroupSender.send_chunk``), when the owner itself writes nothing to the task row.

Fencing (DESIGN §4, invariant 2). Every task-row write is ETag-guarded, so a stale owner's
counts, re-queue and finish writes fail. Outcome rows live in the Deliveries table, which
no task-row ETag can guard in the same batch, so before a chunk's outcomes are written the owner
shows it still holds the lease (``still_ours``): the lease it last wrote is at least two thirds
of ``TASK_LEASE_SECONDS`` from running out, so nobody can have claimed it (a claim needs an
expired lease; clock skew between hosts must stay below that margin) — or, when that is not
certain, or when the chunk has non-terminal outcomes (``retrying``), an ETag-guarded renewal
proves it. A renewal that fails means another host owns the task: the stale owner then writes
only terminal facts it observed (a provider's 202 is ``sent``) where no better row exists, never
a non-terminal state, and asks for a recount (``task_manager.outcomes.record_as_stale_owner``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from core.clock import Clock, later
from core.errors import Conflict, StorageError
from core.models import Task
from core.storage import TASKS, Storage

log = logging.getLogger("mailroom.task_manager")

# Seconds between heartbeat attempts after a storage error (the lease may still be saved).
_RETRY_AFTER_ERROR = 0.5


class TaskLease:
    """The current owner's hold on one task row: its ETag, its last renewal, whether it was lost."""

    def __init__(
        self,
        storage: Storage,
        task: Task,
        lease_seconds: float,
        clock: Clock,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.storage = storage
        self.task = task
        self.lease_seconds = float(lease_seconds)
        self.clock = clock
        self.monotonic = monotonic
        self.lost = threading.Event()
        self.renewals = 0  # heartbeat and proof writes (for tests and diagnostics)
        self._lock = threading.Lock()
        self._confirmed = monotonic()

    @property
    def renew_every(self) -> float:
        """A third of the lease: two thirds of it are always left for storage hiccups and skew."""
        return self.lease_seconds / 3

    def confirmed(self) -> None:
        """The owner's own ETag-guarded task write just succeeded (and set ``lease_until``)."""
        with self._lock:
            self._confirmed = self.monotonic()

    def age(self) -> float:
        """Seconds since the lease was last written by us."""
        with self._lock:
            return self.monotonic() - self._confirmed

    def renew(self) -> bool:
        """Extend ``lease_until`` with an ETag-guarded merge; False (and ``lost``) if someone else wrote."""
        task = self.task
        with self._lock:
            if self.lost.is_set():
                return False
            lease_until = later(self.clock, self.lease_seconds)
            entity = Task.changes((task.job_id, task.row_key), lease_until=lease_until)
            try:
                task.etag = self.storage.table(TASKS).update(entity, etag=task.etag)
            except Conflict:
                self.lost.set()
                log.warning("task lease lost job=%s task=%d", task.job_id, task.index)
                return False
            task.lease_until = lease_until
            self._confirmed = self.monotonic()
            self.renewals += 1
            return True

    def still_ours(self, prove: bool = False) -> bool:
        """Whether this host may write the task's rows now.

        Without ``prove``, a lease renewed less than a third of it ago answers yes without a
        request (nobody may claim it for two thirds of a lease yet). With ``prove`` (before
        non-terminal rows, or a cancel), or when the lease is older, an ETag-guarded renewal
        answers, which also extends the lease over the writes that follow.
        """
        if self.lost.is_set():
            return False
        if not prove and self.age() < self.renew_every:
            return True
        try:
            return self.renew()
        except StorageError:
            log.warning("could not prove the task lease job=%s task=%d", self.task.job_id, self.task.index)
            return False

    @contextmanager
    def kept_alive(self) -> Iterator[TaskLease]:
        """Renew the lease in the background while the ``with`` body (the provider calls) runs."""
        stop = threading.Event()
        name = f"lease-{self.task.job_id[:8]}-{self.task.index}"
        thread = threading.Thread(target=self._beat, args=(stop,), name=name, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join()

    def _beat(self, stop: threading.Event) -> None:
        wait = max(0.05, self.renew_every - self.age())
        while not stop.wait(wait):
            if self.age() < self.renew_every:  # someone renewed it meanwhile
                wait = max(0.05, self.renew_every - self.age())
                continue
            try:
                if not self.renew():
                    return  # lost: the owner sees ``lost`` before it writes anything
            except StorageError as err:
                log.warning("task lease renewal failed job=%s task=%d error=%s",
                            self.task.job_id, self.task.index, type(err).__name__)
                wait = _RETRY_AFTER_ERROR
                continue
            wait = self.renew_every
