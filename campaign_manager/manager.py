"""Turns due campaigns into jobs and job tickets.

It reads only the ``Schedule`` index (a range scan up to now), never the campaigns
table. Each step is idempotent, so overlapping timer runs, two hosts or a crash between
steps never make two jobs for one run: the job id is derived from the campaign and its
``send_at``, and the schedule row is deleted only after the ticket is on the queue.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from core.clock import Clock, iso, parse_iso, utcnow
from core.errors import NotFound
from core.ids import job_id_for
from core.job_state import begin_campaign_run, open_job
from core.messages import JobTicket
from core.models import SCHEDULE_PARTITION, Campaign, Job
from core.status import CampaignStatus, JobStatus
from core.storage import CAMPAIGNS, JOB_QUEUE, SCHEDULE, Entity, Storage

log = logging.getLogger("mailroom.campaign_manager")


@dataclass
class CampaignRunReport:
    started: int = 0
    stale: int = 0


def start_due_campaigns(storage: Storage, clock: Clock = utcnow, limit: int = 500) -> CampaignRunReport:
    """Start every campaign whose ``send_at`` has come. Safe to run concurrently."""
    report = CampaignRunReport()
    for row in due_schedule_rows(storage, clock, limit):
        if start_campaign_run(storage, row, clock):
            report.started += 1
        else:
            report.stale += 1
    if report.started or report.stale:
        log.info("campaign runs started=%d stale=%d", report.started, report.stale)
    return report


def due_schedule_rows(storage: Storage, clock: Clock, limit: int) -> list[Entity]:
    """Schedule rows due now: RowKeys sort by ``send_at``, so this is a range scan."""
    upper = iso(clock()) + "|~"
    rows = storage.table(SCHEDULE).query(
        "PartitionKey eq @pk and RowKey le @upper", {"pk": SCHEDULE_PARTITION, "upper": upper}
    )
    due: list[Entity] = []
    for row in rows:
        due.append(row)
        if len(due) >= limit:
            break
    return due


def start_campaign_run(storage: Storage, row: Entity, clock: Clock) -> bool:
    """Create the run's job, mark the campaign running, enqueue the ticket, drop the row.

    Returns ``False`` when the row was stale (campaign gone, rescheduled or already
    started elsewhere) and was only cleaned up.
    """
    tenant_id, campaign_id = row["tenant_id"], row["campaign_id"]
    try:
        campaign = Campaign.from_entity(storage.table(CAMPAIGNS).get(tenant_id, campaign_id))
    except NotFound:
        campaign = None
    send_at = parse_iso(row["send_at"])
    dry_run = bool(row.get("dry_run", False))
    job_id = job_id_for(campaign_id, send_at, dry_run=dry_run)
    if campaign is not None and dry_run:
        # A dry run leaves the campaign as it is: no status move, not its current job.
        create_job(storage, campaign, job_id, clock, dry_run=True, created_by=row.get("scheduled_by", ""))
    elif campaign is None or campaign.schedule_key != row["RowKey"]:
        storage.table(SCHEDULE).delete(SCHEDULE_PARTITION, row["RowKey"])
        return False
    elif campaign.status == CampaignStatus.SCHEDULED:
        create_job(storage, campaign, job_id, clock, created_by=campaign.actors.get("scheduled_by", ""))
        if not begin_campaign_run(storage, campaign, job_id, clock):
            return False
    elif campaign.current_job_id != job_id:
        storage.table(SCHEDULE).delete(SCHEDULE_PARTITION, row["RowKey"])
        return False
    # Enqueue (again, after a crash) before dropping the row: a duplicate ticket is harmless.
    # The API call that scheduled the run left its trace context on the row: the job joins that trace.
    ticket = JobTicket(tenant_id=tenant_id, job_id=job_id, traceparent=row.get("traceparent") or None)
    storage.queue(JOB_QUEUE).send(ticket.to_text())
    storage.table(SCHEDULE).delete(SCHEDULE_PARTITION, row["RowKey"])
    log.info("job created tenant=%s campaign=%s job=%s", tenant_id, campaign_id, job_id)
    return True


def create_job(
    storage: Storage, campaign: Campaign, job_id: str, clock: Clock, dry_run: bool = False,
    created_by: str = "",
) -> None:
    """Open the run's job: a snapshot of template and criteria, indexed as active.

    ``created_by``: the key id that scheduled the run (the job's creator, for "who did it").
    """
    now = iso(clock())
    open_job(storage, Job(
        id=job_id,
        tenant_id=campaign.tenant_id,
        campaign_id=campaign.id,
        campaign_name=campaign.name,
        template=campaign.template,
        template_ref=campaign.template_ref,  # the job keeps this blob even if the campaign is edited
        criteria=campaign.criteria,
        status=JobStatus.QUEUED.value,
        created_at=now,
        progress_at=now,
        dry_run=dry_run,
        actors={"created_by": created_by} if created_by else {},
    ))
