"""A job's compliance with the bulk-sender rules Gmail and Yahoo enforce (since 2024).

Three promises, shown in ``GET /jobs/{id}`` (``compliance``) and the console:

- **one-click unsubscribe on every message**: the Task Manager renders every message of a
  job with ``List-Unsubscribe`` and ``List-Unsubscribe-Post: List-Unsubscribe=One-Click``
  (``task_manager.sending.render_email``, no code path without them), so this holds by
  construction and a test checks it on the messages the provider received;
- **unsubscribes honoured within 48 h**, measured from the provider's unsubscribe event to
  the suppression written for it: the event processor records, per job, how many such
  events it applied and the longest time between the event and its suppression
  (``Compliance`` table, PartitionKey the tenant, RowKey the job). A one-click ``POST`` to
  ``/unsubscribe/{token}`` suppresses within the request itself;
- **complaint rate** from the job's own counts: complained / handed over, against Gmail's
  0.3 % ceiling (and its 0.1 % recommendation).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from core.clock import Clock, parse_iso, utcnow
from core.errors import Conflict
from core.models import ComplianceTally, Job
from core.provider_events import ProviderEvent, suppression_reason
from core.status import DeliveryStatus
from core.storage import COMPLIANCE, Entity, Storage

log = logging.getLogger("mailroom.compliance")

UNSUBSCRIBE_DEADLINE_SECONDS = 48 * 3600
COMPLAINT_RATE_CEILING = 0.003  # Gmail/Yahoo: keep spam complaints below 0.3 % (aim for 0.1 %)
#: Statuses of recipients whose message the provider took: the complaint rate's denominator.
HANDED_OVER = (DeliveryStatus.SENT, DeliveryStatus.DEFERRED, DeliveryStatus.DELIVERED,
               DeliveryStatus.BOUNCED, DeliveryStatus.DROPPED, DeliveryStatus.COMPLAINED)
_WRITE_TRIES = 8


@dataclass(frozen=True)
class ComplianceReport:
    one_click_unsubscribe: bool
    unsubscribes: int
    unsubscribe_max_seconds: float | None
    unsubscribes_within_48h: bool
    complaints: int
    complaint_rate: float
    complaint_rate_within_limit: bool


def record_unsubscribe_lags(storage: Storage, events: Iterable[ProviderEvent], clock: Clock = utcnow) -> None:
    """For each unsubscribe event that just suppressed its address: count it and its lag, per job."""
    per_job: dict[tuple[str, str], list[float]] = {}
    now = clock()
    for event in events:
        if suppression_reason(event) != "unsubscribed" or not (event.tenant_id and event.job_id):
            continue
        try:
            lag = max(0.0, (now - parse_iso(event.at)).total_seconds())
        except ValueError:
            continue
        per_job.setdefault((event.tenant_id, event.job_id), []).append(lag)
    for (tenant_id, job_id), lags in per_job.items():
        try:
            add_unsubscribes(storage, tenant_id, job_id, lags)
        except Conflict:
            log.warning("compliance row kept changing job=%s", job_id)


def add_unsubscribes(storage: Storage, tenant_id: str, job_id: str, lags: list[float]) -> None:

    def add(row: Entity | None) -> Entity:
        tally = ComplianceTally.from_entity(row) if row else ComplianceTally(tenant_id, job_id)
        tally.unsubscribes += len(lags)
        tally.unsubscribe_max_lag_seconds = max(float(tally.unsubscribe_max_lag_seconds), *lags)
        return tally.to_entity()

    storage.table(COMPLIANCE).modify(tenant_id, job_id, add, tries=_WRITE_TRIES)


def compliance_report(storage: Storage, job: Job) -> ComplianceReport:
    """The job's report: its counts plus its ``Compliance`` row (one point read)."""
    row = storage.table(COMPLIANCE).find(job.tenant_id, job.id) or {}
    unsubscribes = int(row.get("unsubscribes", 0) or 0)
    lag = float(row["unsubscribe_max_lag_seconds"]) if unsubscribes else None
    handed_over = sum(int(job.counts.get(status.value, 0)) for status in HANDED_OVER)
    complaints = int(job.counts.get(DeliveryStatus.COMPLAINED.value, 0))
    rate = complaints / handed_over if handed_over else 0.0
    return ComplianceReport(
        one_click_unsubscribe=True,
        unsubscribes=unsubscribes,
        unsubscribe_max_seconds=round(lag, 3) if lag is not None else None,
        unsubscribes_within_48h=lag is None or lag <= UNSUBSCRIBE_DEADLINE_SECONDS,
        complaints=complaints,
        complaint_rate=round(rate, 6),
        complaint_rate_within_limit=rate < COMPLAINT_RATE_CEILING,
    )
