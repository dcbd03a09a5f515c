"""Campaign reads and writes the campaign routes share: validation, schedule index, summaries.

A scheduled campaign has a row in ``Schedule`` (PartitionKey ``due``, RowKey
``{send_at}|{tenant}|{campaign}``) that the Campaign Manager range-scans; the campaign
keeps that RowKey in ``schedule_key``. Writes go campaign first, then the new index row,
then removal of the old one: a crash in between leaves at worst a stale index row whose key
no longer matches the campaign (the manager drops it), never a scheduled campaign without one.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from api.errors import not_found
from api.schemas import CampaignPublic, JobSummary
from core.clock import iso, utcnow
from core.criteria import parse_criteria
from core.errors import FieldProblem, InvalidInput, MailroomError, StateConflict
from core.models import (
    ACTOR_COLUMNS,
    SCHEDULE_PARTITION,
    Campaign,
    ScheduleEntry,
    schedule_key,
)
from core.status import CampaignStatus, zero_counts
from core.storage import CAMPAIGNS, JOBS, SCHEDULE, Entity, Storage
from core.telemetry import current_traceparent
from core.template_store import load_template, store_template
from core.templates import TemplateSpec, compile_template
from core.timing import time_to_send_seconds

EDITABLE = frozenset({CampaignStatus.DRAFT.value, CampaignStatus.SCHEDULED.value})
# Azure Tables allows 15 comparisons per filter: PartitionKey plus 14 campaign ids.
_IDS_PER_QUERY = 14
MAX_JOBS_IN_SUMMARY = 50


def as_utc(moment: datetime) -> datetime:
    """A naive ``send_at`` is read as UTC (API.md: timestamps are UTC)."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def validate_content(
    template: TemplateSpec | None, criteria: Any, check_criteria: bool
) -> dict[str, Any] | None:
    """Compile the template and parse the criteria, reporting every problem of both at once.

    Returns the normalized criteria to store (``None`` when not checked).
    """
    problems: list[FieldProblem] = []
    first: MailroomError | None = None
    normalized: dict[str, Any] | None = None
    if check_criteria:
        try:
            normalized = parse_criteria(criteria, path="criteria").to_dict()
        except InvalidInput as err:
            problems.extend(err.problems)
            first = err
    if template is not None:
        try:
            compile_template(template, path="template")
        except InvalidInput as err:
            problems.extend(err.problems)
            first = first or err
    if problems:
        raise InvalidInput("the campaign is invalid", problems) from first
    return normalized


def load_campaign(storage: Storage, tenant_id: str, campaign_id: str) -> Campaign:
    entity = storage.table(CAMPAIGNS).find(tenant_id, campaign_id)
    if entity is None:
        raise not_found("campaign")
    return with_template(storage, Campaign.from_entity(entity))


def with_template(storage: Storage, campaign: Campaign) -> Campaign:
    """The campaign with its whole template in memory, read from its blob when it has one."""
    campaign.template = load_template(storage, campaign.template, campaign.template_ref)
    return campaign


def set_template(storage: Storage, campaign: Campaign, template: TemplateSpec) -> None:
    """Give the campaign a new template, in its row or (too large for a column) in a new blob."""
    campaign.template = template.model_dump()
    campaign.template_ref = store_template(storage, campaign.tenant_id, campaign.id, campaign.template)


def ensure_editable(campaign: Campaign) -> None:
    if campaign.status not in EDITABLE:
        raise StateConflict(f"a {campaign.status} campaign can no longer be changed")


def set_send_at(campaign: Campaign, send_at: datetime | None) -> None:
    """Schedule (or, with ``None``, unschedule) a draft or scheduled campaign in memory."""
    if send_at is None:
        campaign.status = CampaignStatus.DRAFT.value
        campaign.send_at = ""
        campaign.schedule_key = ""
        return
    campaign.status = CampaignStatus.SCHEDULED.value
    campaign.send_at = iso(as_utc(send_at))
    campaign.schedule_key = schedule_key(campaign.send_at, campaign.tenant_id, campaign.id)


def touch(campaign: Campaign) -> None:
    campaign.updated_at = iso(utcnow())


def sync_schedule(storage: Storage, campaign: Campaign, old_key: str) -> None:
    """Make the Schedule index match the (already saved) campaign: add new, then drop old."""
    table = storage.table(SCHEDULE)
    if campaign.schedule_key and campaign.schedule_key != old_key:
        table.upsert(schedule_entity(campaign))
    if old_key and old_key != campaign.schedule_key:
        table.delete(SCHEDULE_PARTITION, old_key)


def schedule_entity(campaign: Campaign) -> Entity:
    return ScheduleEntry(
        campaign.tenant_id, campaign.id, campaign.send_at,
        traceparent=current_traceparent() or "",  # the run's trace continues from this API call
    ).to_entity()


def dry_run_schedule_entity(campaign: Campaign, send_at: datetime, actor: str) -> Entity:
    """A dry run's own Schedule row: the campaign (its status, ``schedule_key``) is left alone.

    Its RowKey sorts with the due time like any other, with a ``|dry-run`` suffix so it never
    replaces (or is mistaken for) the campaign's real run at the same instant.
    """
    return ScheduleEntry(
        campaign.tenant_id, campaign.id, iso(as_utc(send_at)), traceparent=current_traceparent() or "",
        dry_run=True, scheduled_by=actor,
    ).to_entity()


def job_summaries(
    storage: Storage, tenant_id: str, campaign_ids: Iterable[str]
) -> dict[str, list[JobSummary]]:
    """``{id, status}`` of each campaign's jobs, newest last, with one query per 14 campaigns."""
    ids = list(dict.fromkeys(campaign_ids))
    found: dict[str, list[JobSummary]] = {cid: [] for cid in ids}
    table = storage.table(JOBS)
    for start in range(0, len(ids), _IDS_PER_QUERY):
        chunk = ids[start:start + _IDS_PER_QUERY]
        params = {"t": tenant_id} | {f"c{i}": cid for i, cid in enumerate(chunk)}
        clauses = " or ".join(f"campaign_id eq @c{i}" for i in range(len(chunk)))
        # The SDK substitutes only space-separated "@name" words: keep spaces inside the parentheses.
        for row in table.query(f"PartitionKey eq @t and ( {clauses} )", params,
                               select=["RowKey", "status", "campaign_id", "started_at", "completed_at",
                                       "dry_run"]):
            found[row["campaign_id"]].append(job_summary(row))
    return {cid: jobs[-MAX_JOBS_IN_SUMMARY:] for cid, jobs in found.items()}


def job_summary(row: Entity) -> JobSummary:
    """A job as its campaign lists it, with time-to-send once it completed."""
    status, started, completed = row.get("status", ""), row.get("started_at", ""), row.get("completed_at", "")
    return JobSummary(
        id=row["RowKey"], status=status, started_at=started or None, completed_at=completed or None,
        dry_run=bool(row.get("dry_run", False)),
        time_to_send_seconds=time_to_send_seconds(started, completed) if status == "completed" else None,
    )


def campaign_public(campaign: Campaign, jobs: list[JobSummary]) -> CampaignPublic:
    counts = zero_counts()
    counts.update({k: int(v) for k, v in (campaign.counts or {}).items() if k in counts})
    return CampaignPublic(
        id=campaign.id, name=campaign.name, status=campaign.status, template=campaign.template,
        criteria=campaign.criteria, send_at=campaign.send_at or None, counts=counts, jobs=jobs,
        current_job_id=campaign.current_job_id or None, job_count=campaign.job_count,
        created_at=campaign.created_at or None, updated_at=campaign.updated_at or None,
        completed_at=campaign.completed_at or None, estimate=campaign.estimate or None,
        **{column: campaign.actors.get(column) for column in ACTOR_COLUMNS},
    )
