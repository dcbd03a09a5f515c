"""A task run's in-flight mark: one row per run in the task's Deliveries partition.

Why a row per run and not a ``sending`` status on every recipient's row. Before a send group
goes to the provider its recipients must be on record as handed over, so that a host killed
mid-request leaves them ``unknown`` and never sends them twice. Writing that on each recipient's
own row cost a second write per recipient (the mark, then the outcome), and on Azurite a row
write costs time proportional to the table's size (LokiJS keeps sorted index arrays on
PartitionKey and RowKey and splices them on every insert and update; an update first scans
them). One row (``core.models.InFlightRow``) listing the group's contact ids rides in the same
table batch (same partition: one entity-group transaction) as the previous group's outcomes,
so a recipient's row is written once, with its outcome, and the guarantee is the same: what
the row lists was handed over.

Why a row per *run* (``task.attempt``), not per task. A host that lost its lease may still
land one late batch; with one shared row it could overwrite the new owner's list and a crash of
the new owner would then resend what that list named. Each run writes only its own row;
recovery reads them all (``listed_in_flight``) and clears the ones it settled.

The rows sort after every contact id (``~``), so readers of delivery rows bound their
queries with ``DELIVERY_ROWS_ONLY`` (or skip ``is_in_flight_row``); the row has no ``status``
column, so status-filtered queries never see it. A person reading the partition in the portal
sees ``~in-flight-000003`` with the contact ids and a note saying what they are.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

#: RowKey prefix of in-flight rows; ``~`` sorts after every contact id (``c`` + hex, ``core.ids``).
IN_FLIGHT_PREFIX = "~in-flight-"
#: Filter clause that keeps a query to recipients' delivery rows.
DELIVERY_ROWS_ONLY = "RowKey lt '~'"
IN_FLIGHT_NOTE = "recipients handed to the provider whose answers are not recorded yet (empty: none)"


def in_flight_row_key(attempt: int) -> str:
    """The row of a task's run ``attempt`` (the claim count, ``Task.attempt``)."""
    return f"{IN_FLIGHT_PREFIX}{attempt:06d}"


def is_in_flight_row(row: Mapping[str, Any]) -> bool:
    return str(row.get("RowKey", "")).startswith(IN_FLIGHT_PREFIX)


def listed_in_flight(row: Mapping[str, Any]) -> list[str]:
    """The contact ids an in-flight row names."""
    raw = row.get("in_flight") or "[]"
    return [str(contact_id) for contact_id in json.loads(str(raw))]


def only_delivery_rows(query: str) -> str:
    """``query`` kept to recipients' rows (no in-flight rows)."""
    return f"{query} and {DELIVERY_ROWS_ONLY}"


__all__ = [
    "DELIVERY_ROWS_ONLY", "IN_FLIGHT_NOTE", "IN_FLIGHT_PREFIX", "in_flight_row_key", "is_in_flight_row",
    "listed_in_flight", "only_delivery_rows",
]
