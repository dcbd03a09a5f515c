"""The operator's volume forecast: emails scheduled per hour for the next 7 days, per provider.

Read from the ``Schedule`` index (what the Campaign Manager will start) and each campaign's
audience estimate: the one cached on the campaign (``estimate`` column, written by every
``POST /campaigns/{id}/estimate``) while it was made for the campaign's current criteria, else
a fresh one (``job_manager.estimate``, bounded by ``ESTIMATE_EXACT_LIMIT``), which is cached in
turn. Each run's recipients are spread over the hours from its ``send_at`` at the rate its
send-time forecast found (the tenant's rate limit, the provider's, or measured throughput), and
counted against the provider its tenant sends through first. Dry runs are left out: they
deliver nothing and spend no provider quota. A run already due but not yet started counts
from the current hour.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from core.clock import Clock, iso, parse_iso, utcnow
from core.models import DRY_RUN_SUFFIX, SCHEDULE_PARTITION, TENANT_PARTITION, Campaign, Tenant
from core.settings import Settings
from core.status import CampaignStatus
from core.storage import CAMPAIGNS, SCHEDULE, TENANTS, Storage
from job_manager.estimate import NOMINAL_EMAILS_PER_SECOND, criteria_hash, estimate_campaign

HORIZON = timedelta(days=7)
HOUR = timedelta(hours=1)


@dataclass
class ScheduledRun:
    tenant_id: str
    campaign_id: str
    send_at: str
    recipients: int
    exact: bool
    provider: str
    emails_per_second: float


@dataclass
class VolumeForecast:
    start: str
    end: str
    hours: list[dict[str, Any]]  # ``{hour, emails, providers: {name: n}}``, one per hour of the horizon
    providers: dict[str, int] = field(default_factory=dict)
    emails: int = 0
    runs: list[ScheduledRun] = field(default_factory=list)


def volume_forecast(
    storage: Storage, settings: Settings, tenant_id: str | None = None, clock: Clock = utcnow
) -> VolumeForecast:
    """Every scheduled run of the next 7 days (of one tenant, if named), spread over its hours."""
    start = clock().replace(minute=0, second=0, microsecond=0)
    end = start + HORIZON
    hours = [start + HOUR * i for i in range(int(HORIZON / HOUR))]
    buckets: dict[str, dict[str, Any]] = {
        iso(h): {"hour": iso(h), "emails": 0, "providers": {}} for h in hours
    }
    forecast = VolumeForecast(start=iso(start), end=iso(end), hours=list(buckets.values()))
    tenants: dict[str, Tenant | None] = {}
    for row in storage.table(SCHEDULE).query(
        "PartitionKey eq @pk and RowKey lt @end", {"pk": SCHEDULE_PARTITION, "end": iso(end)}
    ):
        if tenant_id is not None and row.get("tenant_id") != tenant_id:
            continue
        run = scheduled_run(storage, settings, row, tenants, clock)
        if run is None:
            continue
        forecast.runs.append(run)
        for hour, emails in spread_over_hours(run, max(parse_iso(run.send_at), start), end):
            bucket = buckets[iso(hour)]
            bucket["emails"] += emails
            bucket["providers"][run.provider] = bucket["providers"].get(run.provider, 0) + emails
            forecast.providers[run.provider] = forecast.providers.get(run.provider, 0) + emails
            forecast.emails += emails
    return forecast


def scheduled_run(
    storage: Storage, settings: Settings, row: dict[str, Any], tenants: dict[str, Tenant | None], clock: Clock
) -> ScheduledRun | None:
    """A Schedule row as a run with its recipients; ``None`` for a dry run or a stale row."""
    if row.get("dry_run") or row["RowKey"].endswith(DRY_RUN_SUFFIX):
        return None
    tenant_id, campaign_id = row["tenant_id"], row["campaign_id"]
    entity = storage.table(CAMPAIGNS).find(tenant_id, campaign_id)
    if entity is None:
        return None
    campaign = Campaign.from_entity(entity)
    if campaign.schedule_key != row["RowKey"] or campaign.status != CampaignStatus.SCHEDULED:
        return None  # the Campaign Manager will drop this row
    if tenant_id not in tenants:
        found = storage.table(TENANTS).find(TENANT_PARTITION, tenant_id)
        tenants[tenant_id] = Tenant.from_entity(found) if found else None
    tenant = tenants[tenant_id]
    if tenant is None:
        return None
    cached = campaign.estimate
    if not cached or cached.get("criteria_hash") != criteria_hash(campaign.criteria):
        cached = estimate_campaign(storage, settings, tenant, campaign, clock=clock).cached()
    return ScheduledRun(
        tenant_id=tenant_id, campaign_id=campaign_id, send_at=campaign.send_at,
        recipients=int(cached.get("recipients", 0)), exact=bool(cached.get("exact", True)),
        provider=str(cached.get("provider", "")),
        emails_per_second=float(cached.get("emails_per_second") or NOMINAL_EMAILS_PER_SECOND),
    )


def spread_over_hours(run: ScheduledRun, begin: datetime, end: datetime) -> list[tuple[datetime, int]]:
    """``run``'s recipients per hour from ``begin`` at its rate, cut at ``end`` (whole emails)."""
    out: list[tuple[datetime, int]] = []
    remaining, moment = run.recipients, begin
    while remaining > 0 and moment < end:
        hour = moment.replace(minute=0, second=0, microsecond=0)
        capacity = int((hour + HOUR - moment).total_seconds() * run.emails_per_second)
        emails = min(remaining, max(1, capacity))
        out.append((hour, emails))
        remaining -= emails
        moment = hour + HOUR
    return out
