"""Steering campaigns and jobs: pause, resume, cancel and retry-failed (API.md "Campaigns and jobs").

The state changes live in ``job_manager.control`` and ``job_manager.retry_failed``; this router
only maps them onto HTTP. A support key is refused (403) by ``TenantDep`` before any state is
read, another tenant's id is 404, and a state that forbids the action is 409.
"""

from __future__ import annotations

from fastapi import APIRouter

from api.auth import Principal, PrincipalDep, TenantDep
from api.campaign_records import campaign_public, job_summaries, load_campaign, with_template
from api.dependencies import SettingsDep, StorageDep
from api.errors import forbidden, not_found
from api.routers.conventions import ERROR_RESPONSES, STATE_RESPONSES
from api.routers.jobs import job_public
from api.schemas import CampaignPublic, JobPublic
from core.models import Campaign, Job
from core.storage import JOBS, Entity, Storage
from job_manager import control
from job_manager.retry_failed import start_retry_job
from status_manager.reputation import BRAKE_REASON_PREFIX

router = APIRouter(responses={**ERROR_RESPONSES, **STATE_RESPONSES})


def _campaign_view(storage: Storage, campaign: Campaign) -> CampaignPublic:
    jobs = job_summaries(storage, campaign.tenant_id, [campaign.id])[campaign.id]
    return campaign_public(with_template(storage, campaign), jobs)


def _own_job(storage: Storage, tenant_id: str, job_id: str) -> None:
    if storage.table(JOBS).find(tenant_id, job_id) is None:
        raise not_found("job")


@router.post("/campaigns/{campaign_id}/pause", response_model=CampaignPublic, tags=["campaigns"])
def pause_campaign(
    campaign_id: str, tenant: TenantDep, storage: StorageDep, principal: PrincipalDep
) -> CampaignPublic:
    """Pause the running job at its next chunk boundary; nothing queued is lost."""
    load_campaign(storage, tenant.id, campaign_id)
    return _campaign_view(storage, control.pause_campaign(storage, tenant.id, campaign_id,
                                                          actor=principal.key_id))


@router.post("/campaigns/{campaign_id}/resume", response_model=CampaignPublic, tags=["campaigns"])
def resume_campaign(
    campaign_id: str, tenant: TenantDep, storage: StorageDep, settings: SettingsDep, principal: PrincipalDep
) -> CampaignPublic:
    """Continue the paused job where it stopped (one the reputation brake paused: the operator only)."""
    campaign = load_campaign(storage, tenant.id, campaign_id)
    if campaign.current_job_id:
        _resumable_by(principal, storage.table(JOBS).find(tenant.id, campaign.current_job_id))
    return _campaign_view(storage, control.resume_campaign(storage, settings, tenant.id, campaign_id,
                                                           actor=principal.key_id))


@router.post("/campaigns/{campaign_id}/cancel", response_model=CampaignPublic, tags=["campaigns"])
def cancel_campaign(
    campaign_id: str, tenant: TenantDep, storage: StorageDep, principal: PrincipalDep
) -> CampaignPublic:
    """End the running job (or a scheduled run); never-attempted recipients end ``cancelled``."""
    load_campaign(storage, tenant.id, campaign_id)
    return _campaign_view(storage, control.cancel_campaign(storage, tenant.id, campaign_id,
                                                           actor=principal.key_id))


@router.post("/jobs/{job_id}/pause", response_model=JobPublic, tags=["jobs"])
def pause_job(job_id: str, tenant: TenantDep, storage: StorageDep, principal: PrincipalDep) -> JobPublic:
    _own_job(storage, tenant.id, job_id)
    return job_public(_fresh(storage, control.pause_job(storage, tenant.id, job_id, actor=principal.key_id)))


@router.post("/jobs/{job_id}/resume", response_model=JobPublic, tags=["jobs"])
def resume_job(
    job_id: str, tenant: TenantDep, storage: StorageDep, settings: SettingsDep, principal: PrincipalDep
) -> JobPublic:
    """Continue the paused job where it stopped (one the reputation brake paused: the operator only)."""
    _own_job(storage, tenant.id, job_id)
    _resumable_by(principal, storage.table(JOBS).find(tenant.id, job_id))
    return job_public(_fresh(storage, control.resume_job(storage, settings, tenant.id, job_id,
                                                         actor=principal.key_id)))


@router.post("/jobs/{job_id}/cancel", response_model=JobPublic, tags=["jobs"])
def cancel_job(job_id: str, tenant: TenantDep, storage: StorageDep, principal: PrincipalDep) -> JobPublic:
    _own_job(storage, tenant.id, job_id)
    return job_public(_fresh(storage, control.cancel_job(storage, tenant.id, job_id, actor=principal.key_id)))


@router.post("/jobs/{job_id}/retry-failed", status_code=202, response_model=JobPublic, tags=["jobs"])
def retry_failed(job_id: str, tenant: TenantDep, storage: StorageDep, principal: PrincipalDep) -> JobPublic:
    """A new job for the recipients that ended ``failed``; asking again returns the same job."""
    _own_job(storage, tenant.id, job_id)
    return job_public(start_retry_job(storage, tenant.id, job_id, actor=principal.key_id))


def _resumable_by(principal: Principal, job_row: Entity | None) -> None:
    """A job the reputation brake paused is resumed by the operator, not by its own tenant."""
    reason = (job_row or {}).get("failure_reason", "") or ""
    if reason.startswith(BRAKE_REASON_PREFIX) and principal.role != "admin":
        raise forbidden("the reputation brake paused this job; only the operator may resume it")


def _fresh(storage: Storage, job: Job) -> Job:
    return control.load_job(storage, job.tenant_id, job.id)
