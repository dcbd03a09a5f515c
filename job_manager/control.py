"""Steering a job by hand: pause, resume and cancel (DESIGN §4: ``paused`` sits in between).

Each change is one ETag-guarded write of the job's status, so it never races the Status
Manager or a Task Manager into a lost update; the rest follows from what the other managers
already do with that status:

- **pause**: the Task Manager leaves a paused job's tasks alone at claim (the message is
  acked, the task stays as it was) and stops a running task at its next chunk boundary; the
  Job Manager stops expanding. Nothing is lost: every unfinished task is still in ``Tasks``.
- **resume**: puts the job back to where it was and re-enqueues its unfinished tasks inside
  the job's window (and the expansion, if the roster was not complete).
- **cancel**: the job turns ``cancelled`` at once; the Status Manager then gives every
  never-attempted recipient ``cancelled`` (``status_manager.cancelled``), lets a task that was
  mid-chunk be recovered by the Task Manager, and closes the job once every task is terminal,
  so the counts still add up to the roster.

The campaign follows its current job: ``paused``, back to ``running``, ``cancelled``.
"""

from __future__ import annotations

import logging

from core.clock import Clock, iso, later, parse_iso, utcnow
from core.errors import Conflict, NotFound, StateConflict
from core.job_state import campaign_follows_job, change_job, load_campaign, load_job, write_campaign
from core.messages import JobTicket
from core.models import (
    SCHEDULE_PARTITION,
    TASK_SUMMARY_COLUMNS,
    Campaign,
    Job,
)
from core.settings import Settings
from core.status import CampaignStatus, JobStatus, TaskStatus
from core.storage import JOB_QUEUE, SCHEDULE, TASKS, Entity, Storage
from core.task_window import enqueue_task, in_window

log = logging.getLogger("mailroom.status_manager")

RUNNING_JOB_STATUSES = frozenset({JobStatus.QUEUED, JobStatus.EXPANDING, JobStatus.SENDING})


# -- jobs ------------------------------------------------------------------------------------------


def pause_job(storage: Storage, tenant_id: str, job_id: str, clock: Clock = utcnow, actor: str = "") -> Job:
    """Pause a queued, expanding or sending job; ``StateConflict`` otherwise. ``actor``: who (key id)."""

    def decide(job: Job) -> Entity:
        if job.status not in RUNNING_JOB_STATUSES:
            raise StateConflict(f"a {job.status} job cannot be paused")
        return {"status": JobStatus.PAUSED.value}

    job = change_job(storage, tenant_id, job_id, decide, actor=actor)
    campaign_follows_job(storage, job, clock, actor)
    log.info("job paused job=%s", job.id)
    return job


def resume_job(
    storage: Storage, settings: Settings, tenant_id: str, job_id: str, clock: Clock = utcnow, actor: str = ""
) -> Job:
    """Continue a paused job where it stopped; ``StateConflict`` if it is not paused."""

    def decide(job: Job) -> Entity:
        if job.status != JobStatus.PAUSED:
            raise StateConflict(f"a {job.status} job cannot be resumed")
        changes: Entity = {"status": status_after_pause(job).value, "failure_reason": "",
                           "progress_at": iso(clock())}
        if not job.expanded:
            # Any host may take the expansion now; the one that stopped meets a new ETag.
            changes.update(lease_owner="", lease_until=later(clock, settings.lease_seconds))
        return changes

    job = change_job(storage, tenant_id, job_id, decide, actor=actor)
    if not job.expanded:
        storage.queue(JOB_QUEUE).send(JobTicket(tenant_id=job.tenant_id, job_id=job.id).to_text())
    requeued = requeue_unfinished_tasks(storage, job, settings.task_window, clock)
    campaign_follows_job(storage, job, clock, actor)
    log.info("job resumed job=%s tasks_requeued=%d", job.id, requeued)
    return job


def cancel_job(storage: Storage, tenant_id: str, job_id: str, clock: Clock = utcnow, actor: str = "") -> Job:
    """Cancel a job that has not ended; the Status Manager accounts for the rest."""

    def decide(job: Job) -> Entity:
        if JobStatus(job.status).is_final:
            raise StateConflict(f"a {job.status} job cannot be cancelled")
        return {"status": JobStatus.CANCELLED.value, "failure_reason": "cancelled"}

    job = change_job(storage, tenant_id, job_id, decide, actor=actor)
    campaign_follows_job(storage, job, clock, actor)
    log.info("job cancelled job=%s", job.id)
    return job


def status_after_pause(job: Job) -> JobStatus:
    """Where a paused job goes back to: sending once expanded, else expanding (or queued)."""
    if job.expanded:
        return JobStatus.SENDING
    return JobStatus.EXPANDING if job.started_at else JobStatus.QUEUED


def requeue_unfinished_tasks(storage: Storage, job: Job, window: int, clock: Clock = utcnow) -> int:
    """Put a resumed job's unfinished tasks back on the queue, keeping its window.

    A pending task goes on the queue if it is inside the window (its index is below
    ``window`` or the task ``window`` places before it is terminal or parked); the others follow as
    tasks finish, exactly as before the pause. A task stopped by the pause (``paused``) or
    whose owner died (lease expired) goes back at once; one with a live lease is still
    running and needs nothing.
    """
    now = clock()
    rows = {int(e["RowKey"]): e for e in storage.table(TASKS).partition(job.id, select=TASK_SUMMARY_COLUMNS)}
    let_go = {i for i, e in rows.items()  # terminal or parked: no longer holding a window slot
              if TaskStatus(e.get("status", "pending")).is_terminal or e.get("parked")}
    count = 0
    for index in sorted(rows):
        status = TaskStatus(rows[index].get("status", "pending"))
        if status.is_terminal:
            continue
        lease = rows[index].get("lease_until", "")
        if status == TaskStatus.SENDING and lease and parse_iso(lease) > now:
            continue
        if status == TaskStatus.PENDING and not in_window(index, window, (index - window) in let_go):
            continue
        enqueue_task(storage, job.tenant_id, job.id, index)
        count += 1
    return count


# -- campaigns -------------------------------------------------------------------------------------

def current_job(storage: Storage, campaign: Campaign) -> Job | None:
    if not campaign.current_job_id:
        return None
    try:
        return load_job(storage, campaign.tenant_id, campaign.current_job_id)
    except NotFound:
        return None


def pause_campaign(
    storage: Storage, tenant_id: str, campaign_id: str, clock: Clock = utcnow, actor: str = ""
) -> Campaign:
    """Pause the campaign's running job."""
    campaign = load_campaign(storage, tenant_id, campaign_id)
    job = current_job(storage, campaign)
    if job is None or campaign.status != CampaignStatus.RUNNING:
        raise StateConflict(f"a {campaign.status} campaign has no running job to pause")
    pause_job(storage, tenant_id, job.id, clock, actor)
    return load_campaign(storage, tenant_id, campaign_id)


def resume_campaign(
    storage: Storage, settings: Settings, tenant_id: str, campaign_id: str, clock: Clock = utcnow,
    actor: str = "",
) -> Campaign:
    """Resume the campaign's paused job (paused by a person or by the provider)."""
    campaign = load_campaign(storage, tenant_id, campaign_id)
    job = current_job(storage, campaign)
    if job is None or campaign.status not in (CampaignStatus.RUNNING, CampaignStatus.PAUSED):
        raise StateConflict(f"a {campaign.status} campaign has no paused job to resume")
    resume_job(storage, settings, tenant_id, job.id, clock, actor)
    return load_campaign(storage, tenant_id, campaign_id)


def cancel_campaign(
    storage: Storage, tenant_id: str, campaign_id: str, clock: Clock = utcnow, actor: str = ""
) -> Campaign:
    """Cancel the running job, or a campaign that is scheduled but not started yet."""
    campaign = load_campaign(storage, tenant_id, campaign_id)
    if campaign.status == CampaignStatus.SCHEDULED:
        return cancel_scheduled_campaign(storage, campaign, clock, actor)
    job = current_job(storage, campaign)
    if job is None or campaign.status not in (CampaignStatus.RUNNING, CampaignStatus.PAUSED):
        raise StateConflict(f"a {campaign.status} campaign cannot be cancelled")
    cancel_job(storage, tenant_id, job.id, clock, actor)
    return load_campaign(storage, tenant_id, campaign_id)


def cancel_scheduled_campaign(
    storage: Storage, campaign: Campaign, clock: Clock, actor: str = ""
) -> Campaign:
    """Unschedule a campaign whose run has not started: campaign first, then its index row."""
    old_key = campaign.schedule_key
    try:
        write_campaign(storage, campaign, {"status": CampaignStatus.CANCELLED.value, "schedule_key": "",
                                           "updated_at": iso(clock())}, actor=actor)
    except Conflict as err:
        raise StateConflict("the campaign changed (it may have just started); try again") from err
    if old_key:
        storage.table(SCHEDULE).delete(SCHEDULE_PARTITION, old_key)
    return load_campaign(storage, campaign.tenant_id, campaign.id)
