"""Before you press send: who a campaign would reach, and when it would be done.

**The audience** is counted with the Job Manager's own code: ``stream_roster`` (the same
criteria over the same contacts, in the same order) and the same checks the Task Manager
makes per recipient (a suppression by the hash of the address, ``core.suppressions``; an
address it would not hand over, ``core.ids.is_sendable_address``), so ``matching`` is the
``roster_size`` a job would expand, ``suppressed`` its ``suppressed`` count by reason and
``invalid`` its ``skipped`` ones.

**Exact, or an estimate with bounds.** The scan stops after ``ESTIMATE_EXACT_LIMIT``
contacts. Contact ids are keyed hashes, so contacts in RowKey order are a uniform sample of
the tenant's list, and the last id scanned says which share of the id space the scan
covered: beyond the limit the counts are that share scaled up, marked ``exact: false``, with
±3σ bounds for ``matching`` (a Poisson interval on the matches seen; never below them).

**The send-time forecast** divides the recipients by the slowest of what bounds a real run:
the tenant's ``rate_limit_per_minute``, the ``PROVIDER_RATE_LIMITS`` of the provider its runs
go to first, and the throughput this tenant's recent campaign runs measured (recipients over
time-to-send of its last completed real runs of ≥500 recipients); with none of them known, a
nominal rate measured by ``make bench`` on one host. ``bound`` says which one applies.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from core.clock import Clock, iso, parse_iso, utcnow
from core.criteria import Criteria, parse_criteria
from core.errors import NotFound, StateConflict
from core.ids import email_hash, is_sendable_address
from core.job_state import change_campaign
from core.models import ESTIMATE_COLUMN, Campaign, Tenant
from core.settings import Settings
from core.storage import JOBS, Storage
from core.suppressions import active_suppression_reasons
from job_manager.manager import stream_roster
from providers.factory import provider_order
from providers.rate_limits import parse_rates

SAMPLE_SIZE = 10
#: Emails per second of one host when nothing else is known (``make bench``: 413/s at 10k, one host).
NOMINAL_EMAILS_PER_SECOND = 400.0
#: Completed real runs the measured throughput averages over, and the smallest that counts.
MEASURED_RUNS = 10
MEASURED_MIN_ROSTER = 500
_ID_HEX = 8  # leading hex digits of a contact id read as its place in the id space


@dataclass
class SendForecast:
    """When a run of ``recipients`` would finish, and which limit decides it."""

    recipients: int
    start_at: str
    finish_at: str
    seconds: float
    emails_per_second: float
    bound: str  # tenant_rate_limit | provider_rate_limit | measured_throughput | nominal
    provider: str
    limits: dict[str, float] = field(default_factory=dict)  # every bound known, emails per second


@dataclass
class AudienceEstimate:
    matching: int
    suppressed: dict[str, int]
    invalid: int
    over_limit: int
    recipients: int  # what a real run would hand to a provider (0 when over max_roster: refused)
    sample: list[str]
    exact: bool
    scanned: int
    bounds: dict[str, int] | None  # ``{low, high}`` of ``matching`` when not exact
    max_roster: int | None
    forecast: SendForecast
    estimated_at: str
    criteria_hash: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def cached(self) -> dict[str, Any]:
        """What the campaign keeps (its ``estimate`` column) for the operator's forecast."""
        return {"matching": self.matching, "recipients": self.recipients, "exact": self.exact,
                "estimated_at": self.estimated_at, "criteria_hash": self.criteria_hash,
                "provider": self.forecast.provider, "emails_per_second": self.forecast.emails_per_second}


def criteria_hash(criteria: dict[str, Any]) -> str:
    """Names the criteria an estimate was made for: a cached estimate of other criteria is stale."""
    return hashlib.sha256(json.dumps(criteria or {}, sort_keys=True).encode()).hexdigest()[:16]


def estimate_audience(
    storage: Storage, settings: Settings, tenant: Tenant, criteria: Criteria, criteria_json: dict[str, Any],
    send_at: datetime | None = None, clock: Clock = utcnow,
) -> AudienceEstimate:
    """Count (or, past ``ESTIMATE_EXACT_LIMIT`` contacts, estimate) a run's audience and forecast it."""
    reasons = active_suppression_reasons(storage, tenant.id)
    matching = invalid = scanned = 0
    suppressed: dict[str, int] = {}
    sample: list[str] = []
    last_key = ""
    exact = True
    for row_key, recipient in stream_roster(storage, tenant.id, criteria, ""):
        if scanned >= settings.estimate_exact_limit:
            exact = False
            break
        scanned += 1
        last_key = row_key
        if recipient is None:
            continue
        matching += 1
        if len(sample) < SAMPLE_SIZE:
            sample.append(recipient.contact_id)
        reason = reasons.get(email_hash(recipient.email))
        if reason is not None:
            suppressed[reason] = suppressed.get(reason, 0) + 1
        elif not is_sendable_address(recipient.email):
            invalid += 1
    bounds = None
    if not exact:
        share = id_space_share(last_key)
        bounds = {"low": matching, "high": matching}
        if share:
            low, high = poisson_bounds(matching)
            bounds = {"low": max(matching, round(low / share)), "high": max(matching, round(high / share))}
            matching, invalid = round(matching / share), round(invalid / share)
            suppressed = {r: round(n / share) for r, n in suppressed.items()}
    over_limit = max(0, matching - tenant.max_roster) if tenant.max_roster else 0
    recipients = 0 if over_limit else max(0, matching - sum(suppressed.values()) - invalid)
    now = clock()
    return AudienceEstimate(
        matching=matching, suppressed=suppressed, invalid=invalid, over_limit=over_limit,
        recipients=recipients, sample=sample, exact=exact, scanned=scanned, bounds=bounds,
        max_roster=tenant.max_roster,
        forecast=forecast_send(storage, settings, tenant, recipients, max(send_at or now, now)),
        estimated_at=iso(now), criteria_hash=criteria_hash(criteria_json),
    )


def estimate_campaign(
    storage: Storage, settings: Settings, tenant: Tenant, campaign: Campaign, send_at: datetime | None = None,
    clock: Clock = utcnow,
) -> AudienceEstimate:
    """Estimate a saved campaign (at ``send_at``, else its own) and cache it on the campaign.

    The cache (``estimate`` column) is what ``GET /forecast`` reads; it names the criteria it was
    made for, so an edited campaign's old estimate is not used. A lost race to write it is harmless.
    """
    when = send_at or (parse_iso(campaign.send_at) if campaign.send_at else None)
    estimate = estimate_audience(storage, settings, tenant, parse_criteria(campaign.criteria or {}),
                                 campaign.criteria, when, clock)
    cached = json.dumps(estimate.cached(), separators=(",", ":"))
    try:
        change_campaign(storage, tenant.id, campaign.id, lambda _c: {ESTIMATE_COLUMN: cached})
    except (NotFound, StateConflict):
        pass  # deleted or busy meanwhile: the next estimate caches it
    return estimate


def id_space_share(last_key: str) -> float | None:
    """The share of the contact-id space up to ``last_key`` (``c`` + hex), or ``None`` if unknown."""
    digits = last_key[1:1 + _ID_HEX]
    if not last_key.startswith("c") or len(digits) < _ID_HEX:
        return None
    try:
        share = (int(digits, 16) + 1) / 16**_ID_HEX
    except ValueError:
        return None
    return share if share > 0 else None


def poisson_bounds(seen: int) -> tuple[float, float]:
    """A ±3σ interval (≈99.7%) for the expected count behind ``seen`` events (normal approximation)."""
    spread = 3.0 * math.sqrt(seen) if seen else 0.0
    return max(0.0, seen - spread), seen + spread + 3.0


def forecast_send(
    storage: Storage, settings: Settings, tenant: Tenant, recipients: int, start: datetime
) -> SendForecast:
    """When ``recipients`` sends starting at ``start`` would be done, at the slowest known bound."""
    deployed = provider_order(settings)  # a tenant's provider the hosts do not run is skipped
    provider = ([name for name in tenant.providers if name in deployed] or deployed)[0]
    limits: dict[str, float] = {}
    if tenant.rate_limit_per_minute:
        limits["tenant_rate_limit"] = tenant.rate_limit_per_minute / 60.0
    provider_rate = parse_rates(settings.provider_rate_limits).get(provider)
    if provider_rate:
        limits["provider_rate_limit"] = provider_rate
    measured = measured_throughput(storage, tenant.id)
    if measured:
        limits["measured_throughput"] = measured
    bound, rate = ("nominal", NOMINAL_EMAILS_PER_SECOND)
    if limits:
        bound, rate = min(limits.items(), key=lambda item: item[1])
    seconds = round(recipients / rate, 1) if rate > 0 else 0.0
    return SendForecast(
        recipients=recipients, start_at=iso(start), finish_at=iso(start + timedelta(seconds=seconds)),
        seconds=seconds, emails_per_second=round(rate, 3), bound=bound, provider=provider,
        limits={name: round(value, 3) for name, value in limits.items()},
    )


def measured_throughput(storage: Storage, tenant_id: str) -> float | None:
    """Recipients per second of the tenant's last completed real campaign runs (≥500 recipients).

    Start to close, so expansion, retries and the Status Manager's close are in it, as they are
    in the forecast's finish. Dry runs and test sends are left out: they do not pace like sends.
    """
    rows = storage.table(JOBS).query(
        "PartitionKey eq @t and status eq @s and roster_size ge @n",
        {"t": tenant_id, "s": "completed", "n": MEASURED_MIN_ROSTER},
        select=["roster_size", "started_at", "completed_at", "dry_run", "test_of"],
    )
    runs = sorted(
        (row for row in rows if not row.get("dry_run") and not row.get("test_of")
         and row.get("started_at") and row.get("completed_at")),
        key=lambda row: row["completed_at"],
    )[-MEASURED_RUNS:]
    recipients = sum(int(row["roster_size"]) for row in runs)
    seconds = sum((parse_iso(row["completed_at"]) - parse_iso(row["started_at"])).total_seconds()
                  for row in runs)
    return recipients / seconds if runs and seconds > 0 else None
