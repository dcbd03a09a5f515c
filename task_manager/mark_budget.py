"""Recipients a host has named in flight and not yet recorded: bounded host-wide, taken in turn.

Why. What a crash leaves ``unknown`` is exactly what its runs' in-flight rows name
(``core/in_flight.py``): per running task, the send group in the provider's hands (or answered,
its outcomes not yet written). A host runs up to ``batchSize`` + ``newBatchThreshold`` task
messages at once (host.json: 8 + 4), so with a group of 50 per task a killed host could leave
~600 recipients ``unknown``. Here a host has a budget of ``2 × max(SEND_CONCURRENCY,
SEND_GROUP_SIZE)`` recipients (``mark_budget_size``; 100 with the defaults): a task takes its
share before its first hand-over is recorded and gives it back once its last outcomes are
written, so at any moment the recipients the host's in-flight rows name are at most the budget.

Why twice a group (or twice the sending threads, whichever is larger). One task's group is in
the provider's hands while another task writes its previous outcomes and next in-flight row, so the
sending threads do not idle at every table batch; a budget of one group would (each batch
then stalls the whole host: measured with ``bench.providers_latency`` in the README). Groups
are not cut smaller to fit more tasks: each group is one table batch, so smaller groups would
cost more storage requests per email.

Why a share per task, taken once, before the claim. A task's batch records group k's outcomes
and names group k+1 in flight in one write, so the share (its largest group: ``SEND_GROUP_SIZE``, cut to
the task's size once it is claimed) covers every group it sends without giving anything back in
between. A task waits only while it holds nothing, so no two tasks can wait on each other (no
deadlock), and a share is at most half the budget, so a waiting task is always served once
others finish. It waits before it claims the task (``task_manager.manager.send_task``): a
waiting task holds no lease, so there is no heartbeat to pay while it waits, and another host
with room may claim the task meanwhile.

Fair. Waiting tasks are served tenant by tenant in turn (like ``send_pool.FairSendPool``'s
threads), so a tenant with many tasks on the host does not queue ahead of a neighbour's one.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque

# What a killed host may leave ``unknown`` per task run: a send group's outcomes and the run's
# in-flight row naming the next group share one table batch (≤100 rows, so up to 99 would fit;
# 50 keeps the bound where it was when each recipient carried its own mark).
MAX_SEND_GROUP = 50


def mark_budget_size(send_concurrency: int, send_group_size: int) -> int:
    """Recipients one host may have in flight at once: what a killed host leaves ``unknown``."""
    group = max(1, min(send_group_size, MAX_SEND_GROUP))
    return 2 * max(send_concurrency, group)


class _Wait:
    __slots__ = ("recipients",)

    def __init__(self, recipients: int) -> None:
        self.recipients = recipients


class MarkBudget:
    """A host's budget of marked-but-unrecorded recipients, handed out to waiting tenants in turn."""

    def __init__(self, capacity: int) -> None:
        self.capacity = max(1, capacity)
        self._free = self.capacity
        self._lines: OrderedDict[str, deque[_Wait]] = OrderedDict()
        self._changed = threading.Condition()

    def take(self, tenant_id: str, recipients: int) -> int:
        """Wait for ``recipients`` of the budget (at most half of it); returns how many were taken."""
        wait = _Wait(max(1, min(recipients, max(1, self.capacity // 2))))
        with self._changed:
            self._lines.setdefault(tenant_id, deque()).append(wait)
            while not (self._is_next(wait) and self._free >= wait.recipients):
                self._changed.wait()
            line = self._lines[tenant_id]
            line.popleft()
            if line:
                self._lines.move_to_end(tenant_id)  # this tenant's next task waits for the others' turn
            else:
                del self._lines[tenant_id]
            self._free -= wait.recipients
            self._changed.notify_all()
        return wait.recipients

    def give_back(self, recipients: int) -> None:
        with self._changed:
            self._free = min(self.capacity, self._free + recipients)
            self._changed.notify_all()

    def in_use(self) -> int:
        """Recipients taken and not given back (for tests and diagnostics)."""
        with self._changed:
            return self.capacity - self._free

    def waiting(self) -> dict[str, int]:
        """Tasks waiting for a share, per tenant (for tests and diagnostics)."""
        with self._changed:
            return {tenant: len(line) for tenant, line in self._lines.items()}

    def _is_next(self, wait: _Wait) -> bool:
        _, line = next(iter(self._lines.items()))
        return line[0] is wait


class MarkShare:
    """One task's share of its host's ``MarkBudget``: taken before its first mark, given back at its end."""

    def __init__(self, budget: MarkBudget, tenant_id: str, recipients: int) -> None:
        self.budget, self.tenant_id, self.recipients = budget, tenant_id, recipients
        self.held = 0

    def hold(self) -> None:
        """Before a group is named in flight: wait for the share unless it is held already."""
        if not self.held:
            self.held = self.budget.take(self.tenant_id, self.recipients)

    def resize(self, recipients: int) -> None:
        """The task's largest group is now known: a share held larger gives the surplus back."""
        self.recipients = recipients
        if self.held > recipients:
            self.budget.give_back(self.held - recipients)
            self.held = recipients

    def give_back(self) -> None:
        """Once this run's in-flight row names nobody (or the run ended)."""
        if self.held:
            self.budget.give_back(self.held)
            self.held = 0
