"""The four facts every fault run ends with (issue 14, "Truth under faults").

Whatever was killed, slowed or throttled, a closed job must show: nobody lost (every roster
address was accepted by the provider, or its row says why not), nobody handed over twice
(the SendGrid simulator's record of accepted messages, not our own rows, is the witness), no
delivery row or task left in a non-terminal state, counts that add up to ``roster_size``, and
no more ``unknown`` than the recipients the dead host's in-flight rows named (``core/in_flight.py``,
read after the kill, when nothing can change them any more: exactly what a recovery turns into
``unknown``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from core.in_flight import IN_FLIGHT_PREFIX, is_in_flight_row, listed_in_flight, only_delivery_rows
from core.status import DeliveryStatus, TaskStatus
from core.storage import DELIVERIES, TASKS, Storage

# Outcomes that say why a roster address was not accepted by the provider (or may have been).
EXPLAINED_WITHOUT_ACCEPTANCE = {
    DeliveryStatus.UNKNOWN,
    DeliveryStatus.FAILED,
    DeliveryStatus.SUPPRESSED,
    DeliveryStatus.SKIPPED,
    DeliveryStatus.CANCELLED,
}


def delivery_rows(storage: Storage, job_id: str) -> list[dict[str, Any]]:
    """Every recipient's delivery row of the job, across its tasks' partitions (``{job}-{task}``)."""
    return list(storage.table(DELIVERIES).query(
        only_delivery_rows("PartitionKey ge @lo and PartitionKey lt @hi"),
        {"lo": f"{job_id}-", "hi": f"{job_id}."},
    ))


def recipients_in_flight(storage: Storage, job_id: str) -> int:
    """Recipients the job's in-flight rows name now: after a kill, what that host can leave ``unknown``."""
    rows = storage.table(DELIVERIES).query(
        "PartitionKey ge @lo and PartitionKey lt @hi and RowKey ge @mark",
        {"lo": f"{job_id}-", "hi": f"{job_id}.", "mark": IN_FLIGHT_PREFIX},
    )
    return sum(len(listed_in_flight(row)) for row in rows if is_in_flight_row(row))


def assert_every_recipient_accounted_for(
    storage: Storage, job: dict[str, Any], roster: Iterable[str], accepted: Counter[str], unknown_at_most: int
) -> Counter[str]:
    """Lost 0, duplicated 0, nothing non-terminal, counts add up, ``unknown`` within its bound.

    ``job`` is the API's view of the closed job, ``roster`` the addresses it was sent to,
    ``accepted`` how often the provider accepted each address. Returns the rows' statuses.
    """
    roster = list(roster)
    rows = delivery_rows(storage, job["id"])
    status_of = {row["email"]: row["status"] for row in rows}
    statuses = Counter(row["status"] for row in rows)

    duplicated = sorted(address for address, times in accepted.items() if times > 1)
    strangers = sorted(set(accepted) - set(roster))
    lost = sorted(
        address for address in roster
        if not accepted[address] and status_of.get(address) not in EXPLAINED_WITHOUT_ACCEPTANCE
    )
    sent_not_accepted = sorted(a for a, s in status_of.items() if s == DeliveryStatus.SENT
                               and not accepted[a])
    non_terminal = {s: n for s, n in statuses.items() if not DeliveryStatus(s).is_terminal}
    open_tasks = [t["RowKey"] for t in storage.table(TASKS).partition(job["id"], select=["RowKey", "status"])
                  if not TaskStatus(t["status"]).is_terminal]

    assert job["status"] in ("completed", "cancelled", "failed"), f"job not closed: {job['status']}"
    assert duplicated == [], f"{len(duplicated)} recipients handed to the provider twice"
    assert strangers == [], f"{len(strangers)} accepted addresses are not on the roster"
    assert lost == [], f"{len(lost)} recipients lost: never accepted and no outcome says why"
    assert sent_not_accepted == [], f"{len(sent_not_accepted)} rows say sent but the provider has no message"
    assert len(rows) == len(status_of) == len(roster), "a roster address has no row, or more than one"
    assert non_terminal == {} and open_tasks == [], f"non-terminal: rows {non_terminal}, tasks {open_tasks}"
    assert sum(job["counts"].values()) == job["roster_size"] == len(roster), job["counts"]
    assert job["counts"].get("unknown", 0) == statuses[DeliveryStatus.UNKNOWN] <= unknown_at_most, (
        f"unknown {statuses[DeliveryStatus.UNKNOWN]} > {unknown_at_most} (what was really outstanding)"
    )
    return statuses
