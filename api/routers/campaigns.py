"""Campaigns: create, read, edit while draft/scheduled, schedule, preview, test send (API.md "Campaigns").

Pause, resume and cancel live in ``api.routers.control``.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body

from api.auth import PrincipalDep, TenantDep
from api.campaign_records import (
    as_utc,
    campaign_public,
    dry_run_schedule_entity,
    ensure_editable,
    job_summaries,
    load_campaign,
    schedule_entity,
    set_send_at,
    set_template,
    sync_schedule,
    touch,
    validate_content,
    with_template,
)
from api.dependencies import SettingsDep, StorageDep
from api.errors import forbidden
from api.preview import render_preview
from api.routers.conventions import (
    DEFAULT_PAGE_LIMIT,
    ERROR_RESPONSES,
    STATE_RESPONSES,
    Limit,
    TenantPageCursor,
)
from api.schemas import (
    CampaignCreate,
    CampaignEstimateRequest,
    CampaignPublic,
    CampaignUpdate,
    EstimatePublic,
    EstimateRequest,
    Page,
    PreviewPublic,
    PreviewRequest,
    ScheduleRequest,
    TestSendAccepted,
    TestSendRequest,
)
from core.clock import parse_iso, utcnow
from core.criteria import parse_criteria
from core.ids import job_id_for, new_id
from core.job_state import open_campaign, write_campaign
from core.models import Campaign
from core.sender_checks import require_passing_sender
from core.status import CampaignStatus, zero_counts
from core.storage import CAMPAIGNS, SCHEDULE
from core.tenant_settings import require_allowed_sender
from job_manager.campaign_test_send import send_test
from job_manager.estimate import AudienceEstimate, estimate_audience, estimate_campaign

router = APIRouter(tags=["campaigns"], responses=ERROR_RESPONSES)


@router.post("/campaigns", status_code=201, response_model=CampaignPublic)
def create_campaign(
    body: CampaignCreate, tenant: TenantDep, storage: StorageDep, principal: PrincipalDep
) -> CampaignPublic:
    criteria = validate_content(body.template, body.criteria, check_criteria=True) or {}
    require_allowed_sender(tenant, body.template.from_email, "template.from_email")
    campaign = Campaign(
        id=new_id(), tenant_id=tenant.id, name=body.name, template={},
        criteria=criteria, status=CampaignStatus.DRAFT.value, counts=zero_counts(),
        actors={"created_by": principal.key_id},
    )
    set_template(storage, campaign, body.template)
    touch(campaign)
    campaign.created_at = campaign.updated_at
    if body.send_at is not None:
        set_send_at(campaign, body.send_at)
        campaign.actors["scheduled_by"] = principal.key_id
    open_campaign(storage, campaign)
    if campaign.schedule_key:  # after the campaign: an index row never points at nothing
        storage.table(SCHEDULE).upsert(schedule_entity(campaign))
    return campaign_public(campaign, [])


@router.post("/campaigns/estimate", response_model=EstimatePublic)
def estimate_unsaved_campaign(
    body: EstimateRequest, tenant: TenantDep, storage: StorageDep, settings: SettingsDep
) -> EstimatePublic:
    """Who an unsaved campaign's criteria would reach, and when a run would finish."""
    criteria = validate_content(None, body.criteria, check_criteria=True) or {}
    send_at = as_utc(body.send_at) if body.send_at is not None else None
    return _estimate_public(estimate_audience(storage, settings, tenant, parse_criteria(criteria), criteria,
                                              send_at))


@router.post("/campaigns/{campaign_id}/estimate", response_model=EstimatePublic)
def estimate_saved_campaign(
    campaign_id: str, tenant: TenantDep, storage: StorageDep, settings: SettingsDep,
    body: Annotated[CampaignEstimateRequest | None, Body()] = None,
) -> EstimatePublic:
    """Count the campaign's audience now (exact up to ESTIMATE_EXACT_LIMIT contacts) and forecast it.

    Always 200 with the answer: past the limit the counts are extrapolated (``exact: false``,
    with bounds), so the call stays about as long as scanning ESTIMATE_EXACT_LIMIT contacts.
    """
    campaign = load_campaign(storage, tenant.id, campaign_id)
    send_at = as_utc(body.send_at) if body is not None and body.send_at is not None else None
    return _estimate_public(estimate_campaign(storage, settings, tenant, campaign, send_at))


@router.get("/campaigns/{campaign_id}/estimate", response_model=EstimatePublic)
def get_campaign_estimate(
    campaign_id: str, tenant: TenantDep, storage: StorageDep, settings: SettingsDep
) -> EstimatePublic:
    """The same as the POST, for readers (support keys, the console)."""
    campaign = load_campaign(storage, tenant.id, campaign_id)
    return _estimate_public(estimate_campaign(storage, settings, tenant, campaign))


def _estimate_public(estimate: AudienceEstimate) -> EstimatePublic:
    return EstimatePublic.model_validate(estimate.as_dict())


@router.get("/campaigns", response_model=Page[CampaignPublic])
def list_campaigns(
    tenant: TenantDep, storage: StorageDep, cursor: TenantPageCursor,
    limit: Limit = DEFAULT_PAGE_LIMIT,
) -> Page[CampaignPublic]:
    page = storage.table(CAMPAIGNS).query_page(
        "PartitionKey eq @t", {"t": tenant.id}, limit=limit, continuation=cursor.position
    )
    campaigns = [with_template(storage, Campaign.from_entity(e)) for e in page.items]
    jobs = job_summaries(storage, tenant.id, [c.id for c in campaigns if c.job_count or c.current_job_id])
    return Page[CampaignPublic](
        items=[campaign_public(c, jobs.get(c.id, [])) for c in campaigns],
        continuation=cursor.next_token(page.continuation),
    )


@router.get("/campaigns/{campaign_id}", response_model=CampaignPublic)
def get_campaign(campaign_id: str, tenant: TenantDep, storage: StorageDep) -> CampaignPublic:
    campaign = load_campaign(storage, tenant.id, campaign_id)
    jobs = job_summaries(storage, tenant.id, [campaign.id])
    return campaign_public(campaign, jobs[campaign.id])


@router.patch("/campaigns/{campaign_id}", response_model=CampaignPublic,
              responses=STATE_RESPONSES)
def update_campaign(
    campaign_id: str, body: CampaignUpdate, tenant: TenantDep, storage: StorageDep, principal: PrincipalDep
) -> CampaignPublic:
    campaign = load_campaign(storage, tenant.id, campaign_id)
    ensure_editable(campaign)
    was = campaign.status
    given = body.model_fields_set
    criteria = validate_content(body.template, body.criteria, check_criteria="criteria" in given)
    if body.template is not None:
        require_allowed_sender(tenant, body.template.from_email, "template.from_email")
    old_key = campaign.schedule_key
    if body.name is not None:
        campaign.name = body.name
    if body.template is not None:
        set_template(storage, campaign, body.template)
    if criteria is not None:
        campaign.criteria = criteria
    if "send_at" in given:
        set_send_at(campaign, body.send_at)
    touch(campaign)
    write_campaign(storage, campaign, was=was, actor=principal.key_id)
    sync_schedule(storage, campaign, old_key)
    return campaign_public(campaign, job_summaries(storage, tenant.id, [campaign.id])[campaign.id])


@router.post("/campaigns/{campaign_id}/schedule", response_model=CampaignPublic,
             responses=STATE_RESPONSES)
def schedule_campaign(
    campaign_id: str, tenant: TenantDep, storage: StorageDep, settings: SettingsDep,
    principal: PrincipalDep, body: Annotated[ScheduleRequest | None, Body()] = None,
) -> CampaignPublic:
    """Schedule the campaign's run, or with ``dry_run`` a dry run of it (any campaign status).

    A dry run has its own Schedule row and its own job id (``core.ids.job_id_for``); the
    campaign's status, ``send_at`` and counts do not change, so its real run is unaffected.
    With ``SENDER_CHECKS`` on, a from_email domain failing SPF, DKIM or DMARC is 422 naming the
    record; the operator (admin key) may override with ``override_sender_checks``.
    """
    override = body is not None and body.override_sender_checks
    if override and principal.role != "admin":
        raise forbidden("only the operator may override sender checks")
    campaign = load_campaign(storage, tenant.id, campaign_id)
    dry_run = body is not None and body.dry_run
    if not dry_run:
        ensure_editable(campaign)
    was = campaign.status
    from_email = campaign.template.get("from_email", "")
    require_allowed_sender(tenant, from_email, "template.from_email")
    if settings.sender_checks and not override:
        require_passing_sender(from_email, settings, "template.from_email")
    send_at = as_utc(body.send_at if body is not None and body.send_at is not None else utcnow())
    if dry_run:
        row = dry_run_schedule_entity(campaign, send_at, principal.key_id)
        storage.table(SCHEDULE).upsert(row)
        view = campaign_public(campaign, job_summaries(storage, tenant.id, [campaign.id])[campaign.id])
        view.dry_run_job_id = job_id_for(campaign.id, parse_iso(row["send_at"]), dry_run=True)
        return view
    old_key = campaign.schedule_key
    set_send_at(campaign, send_at)
    campaign.actors["scheduled_by"] = principal.key_id
    touch(campaign)
    write_campaign(storage, campaign, was=was, actor=principal.key_id)
    sync_schedule(storage, campaign, old_key)
    return campaign_public(campaign, job_summaries(storage, tenant.id, [campaign.id])[campaign.id])


@router.post("/campaigns/{campaign_id}/preview", response_model=PreviewPublic)
def preview_campaign(
    campaign_id: str, tenant: TenantDep, storage: StorageDep, settings: SettingsDep,
    body: Annotated[PreviewRequest | None, Body()] = None,
) -> PreviewPublic:
    campaign = load_campaign(storage, tenant.id, campaign_id)
    return render_preview(storage, settings, tenant, campaign, body or PreviewRequest())


@router.post("/campaigns/{campaign_id}/test", status_code=202, response_model=TestSendAccepted)
def test_send_campaign(
    campaign_id: str, body: TestSendRequest, tenant: TenantDep, storage: StorageDep
) -> TestSendAccepted:
    """Send the campaign to up to 5 addresses now, subject marked ``[Test]``, outside any job.

    Rendered for the tenant's contact of each address (else sample data), suppressions
    honoured, not counted in the campaign; follow it with ``GET /emails/{id}``. Any status.
    """
    campaign = load_campaign(storage, tenant.id, campaign_id)
    require_allowed_sender(tenant, campaign.template.get("from_email", ""), "template.from_email")
    return TestSendAccepted(id=send_test(storage, tenant, campaign, body.to))
