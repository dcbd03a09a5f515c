"""The one path for counts: delivery rows → task counts → job counts → campaign counts.

- A **task's** counts are what its delivery rows say (``count_delivery_rows``); while it runs
  the Task Manager keeps them current with ``tally`` (+1 per outcome written), and recounts
  the rows when the task finishes and whenever provider events changed them.
- A **job's** counts are the sum of its tasks' (``sum_task_counts``), with ``pending`` making
  up the rest of ``roster_size`` (``balance_pending``): recipients of tasks not written yet,
  or written and not yet sent. So the fourteen counts add up to ``roster_size`` at every
  moment, during the expansion too (``roster_size`` grows as tasks are written, and the Job
  Manager adds each task's recipients to ``pending`` in the same ETag-guarded write).
- A **campaign's** counts are its current job's (``core.job_state.campaign_follows_job``).

Counts are always snapshots of rows, never +1/−1 moves across tables, so a retried write or
a replayed event cannot push a sum past the roster.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from core.clock import Clock, iso, utcnow
from core.in_flight import only_delivery_rows
from core.status import DeliveryStatus, zero_counts
from core.storage import DELIVERIES, RECOUNTS, Entity, Storage

PENDING = DeliveryStatus.PENDING.value
RECOUNT_PARTITION = "due"  # Recounts: one partition the Status Manager walks each pass


def count_column(status: str) -> str:
    """Job counts are one column per status (``count_sent``…), readable in the portal."""
    return f"count_{status}"


def count_columns(counts: Mapping[str, int]) -> Entity:
    """The job row's count columns for ``counts`` (every status, zeros included)."""
    full = zero_counts()
    full.update({k: int(v) for k, v in counts.items() if k in full})
    return {count_column(k): v for k, v in full.items()}


def counts_from_columns(entity: Mapping[str, object]) -> dict[str, int]:
    """A job row's count columns back as a dict of every status."""
    counts = zero_counts()
    for status in counts:
        counts[status] = int(entity.get(count_column(status), 0) or 0)  # type: ignore[call-overload]
    return counts


def counts_from_json(raw: object) -> dict[str, int]:
    """Counts stored as JSON (a task's ``counts`` column, a campaign's)."""
    if not raw:
        return {}
    return {k: int(v) for k, v in json.loads(str(raw)).items()}


def counts_json(counts: Mapping[str, int]) -> str:
    """Counts as the JSON a task's or a campaign's ``counts`` column holds."""
    return json.dumps(dict(counts), separators=(",", ":"))


def count_delivery_rows(storage: Storage, delivery_partition: str) -> dict[str, int]:
    """A task's counts as its delivery rows say them now (one partition scan, status only)."""
    rows = storage.table(DELIVERIES).query(
        only_delivery_rows("PartitionKey eq @pk"), {"pk": delivery_partition}, select=["status"]
    )
    return dict(Counter(row["status"] for row in rows))


#: In a task's ``resolutions``: rows still ``unknown`` whose fate is settled (no event feed, or
#: resent and ambiguous again); the other unknown rows are awaiting reconciliation.
SETTLED_UNKNOWN = "settled_unknown"


def tally_delivery_rows(storage: Storage, delivery_partition: str) -> tuple[dict[str, int], dict[str, int]]:
    """A task's counts and its ``resolutions`` (rows per ``resolution``) from one partition scan.

    Used where resolutions may have changed (after provider events and reconciliation); the
    plain ``count_delivery_rows`` stays the cheaper path everywhere else.
    """
    rows = storage.table(DELIVERIES).query(
        only_delivery_rows("PartitionKey eq @pk"), {"pk": delivery_partition}, select=["status", "resolution"]
    )
    counts: Counter[str] = Counter()
    resolutions: Counter[str] = Counter()
    for row in rows:
        counts[row["status"]] += 1
        if row.get("resolution"):
            resolutions[row["resolution"]] += 1
            if row["status"] == DeliveryStatus.UNKNOWN:
                resolutions[SETTLED_UNKNOWN] += 1
    return dict(counts), dict(resolutions)


def unknown_report(counts: Mapping[str, int], resolutions: Mapping[str, int]) -> dict[str, int]:
    """How a job's (or task's) ``unknown`` recipients were resolved, for ``GET /jobs/{id}``.

    ``awaiting``: rows still ``unknown`` with no resolution yet (inside the window, or not yet
    looked at); the rest come from the rows' ``resolution`` column (``core.reconciliation``).
    """
    from core.reconciliation import RESOLUTIONS  # builds on this module: import when used

    report = {name: int(resolutions.get(name, 0)) for name in RESOLUTIONS}
    settled = int(resolutions.get(SETTLED_UNKNOWN, 0))
    report["awaiting"] = max(0, int(counts.get(DeliveryStatus.UNKNOWN.value, 0)) - settled)
    return report


def counts_of_statuses(statuses: Iterable[str]) -> dict[str, int]:
    """A running task's counts from its rows' statuses; a ``sending`` mark is not counted (its outcome is)."""
    return dict(Counter(s for s in statuses if s != DeliveryStatus.SENDING))


def tally(counts: dict[str, int], status: str, replaces: str | None = None) -> None:
    """A running task's counts after one more outcome row (``replaces``: the row's old status)."""
    counts[status] = counts.get(status, 0) + 1
    if replaces:
        counts[replaces] = max(0, counts.get(replaces, 0) - 1)


def balance_pending(counts: Mapping[str, int], roster_size: int) -> dict[str, int]:
    """Every status, with ``pending`` set so the counts add up to ``roster_size``."""
    full = zero_counts()
    full.update({k: int(v) for k, v in counts.items() if k in full})
    full[PENDING] = 0
    full[PENDING] = max(0, roster_size - sum(full.values()))
    return full


@dataclass
class TaskTotals:
    """What a job's task rows add up to."""

    counts: dict[str, int] = field(default_factory=zero_counts)  # recorded outcomes + unrecorded as pending
    resolutions: dict[str, int] = field(default_factory=dict)  # rows per ``resolution``, summed
    tasks: int = 0  # task rows
    roster: int = 0  # recipients in those rows


def sum_task_counts(task_rows: Iterable[Mapping[str, object]]) -> TaskTotals:
    """Sum the ``counts`` of task rows; a task's recipients without an outcome count ``pending``."""
    totals = TaskTotals()
    for row in task_rows:
        size = int(row.get("size", 0) or 0)  # type: ignore[call-overload]
        recorded = counts_from_json(row.get("counts"))
        for status, n in recorded.items():
            totals.counts[status] = totals.counts.get(status, 0) + n
        totals.counts[PENDING] += max(0, size - sum(recorded.values()))
        for name, n in counts_from_json(row.get("resolutions")).items():
            totals.resolutions[name] = totals.resolutions.get(name, 0) + n
        totals.tasks += 1
        totals.roster += size
    return totals


def mark_for_recount(storage: Storage, tasks: Iterable[tuple[str, str, str]], clock: Clock = utcnow) -> None:
    """Ask the next Status Manager pass to recount these (tenant, job, task) from their rows.

    Whoever changes a finished task's delivery rows (the event processor, a host that lost its
    task and records what it saw) marks it here; ``status_manager/recounts.py`` recounts.
    """
    from core.models import Recount  # the records module builds on this one: import when used

    now = iso(clock())
    marks = [
        Recount(tenant_id, job_id, task_id, marked_at=now).to_entity()
        for tenant_id, job_id, task_id in sorted(set(tasks))
    ]
    if marks:
        storage.table(RECOUNTS).batch_upsert(marks, replace=True)
