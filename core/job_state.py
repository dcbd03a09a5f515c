"""The one owner of a job's and a campaign's ``status`` (and of the campaign's copy of its job's counts).

Every status a job or a campaign moves to goes through this module: the allowed moves are the
two tables below, every write is ETag-guarded (``If-Match``), and a move the tables do not
allow raises ``IllegalTransition`` (a ``StateConflict``: the API answers 409). Other modules
decide *when* (the Job Manager when a roster is expanded, the Status Manager when every task
is terminal, a person through the API); this module decides *whether*, and writes.

Two ways to write, both checked against the tables:

- ``change_job`` / ``change_campaign``: read, decide, write under the ETag, and on a 412
  read and decide again (``decide`` sees the row as it is now, so a cancel that landed
  meanwhile is decided on, never overwritten);
- ``write_job`` / ``write_campaign``: one attempt with the ETag the caller read; a
  ``Conflict`` goes back to the caller, whose next pass decides again.

A campaign follows its current job (``campaign_follows_job``): its status (running, paused,
then the job's final status) and its counts, so ``GET /campaigns/{id}`` moves with the job.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from core.clock import Clock, iso, utcnow
from core.counts import counts_from_json, counts_json
from core.errors import AlreadyExists, Conflict, NotFound, StateConflict
from core.models import ACTOR_COLUMNS, ESTIMATE_COLUMN, ActiveJob, Campaign, Job
from core.status import CampaignStatus, JobStatus, zero_counts
from core.storage import ACTIVE_JOBS, CAMPAIGNS, JOBS, Entity, Storage

log = logging.getLogger("mailroom.job_state")
R = TypeVar("R", Job, Campaign)

_J, _C = JobStatus, CampaignStatus

#: Where a job may go from each status. ``paused`` sits between the running states; the
#: three final states go nowhere.
JOB_TRANSITIONS: Mapping[JobStatus, frozenset[JobStatus]] = {
    _J.QUEUED: frozenset({_J.EXPANDING, _J.PAUSED, _J.CANCELLED, _J.FAILED}),
    _J.EXPANDING: frozenset({_J.SENDING, _J.PAUSED, _J.CANCELLED, _J.FAILED}),
    _J.SENDING: frozenset({_J.COMPLETED, _J.PAUSED, _J.CANCELLED, _J.FAILED}),
    _J.PAUSED: frozenset({_J.QUEUED, _J.EXPANDING, _J.SENDING, _J.CANCELLED, _J.FAILED}),
    _J.COMPLETED: frozenset(),
    _J.CANCELLED: frozenset(),
    _J.FAILED: frozenset(),
}

#: A job is born queued (a campaign run, a retry-failed run) or sending (a transactional
#: email: one task, already expanded).
JOB_INITIAL = frozenset({_J.QUEUED, _J.SENDING})

#: Where a campaign may go. Draft and scheduled are edited by people; running onwards
#: follows the current job.
CAMPAIGN_TRANSITIONS: Mapping[CampaignStatus, frozenset[CampaignStatus]] = {
    _C.DRAFT: frozenset({_C.SCHEDULED}),
    _C.SCHEDULED: frozenset({_C.DRAFT, _C.RUNNING, _C.CANCELLED}),
    _C.RUNNING: frozenset({_C.PAUSED, _C.COMPLETED, _C.CANCELLED, _C.FAILED}),
    _C.PAUSED: frozenset({_C.RUNNING, _C.COMPLETED, _C.CANCELLED, _C.FAILED}),
    _C.COMPLETED: frozenset(),
    _C.CANCELLED: frozenset(),
    _C.FAILED: frozenset(),
}

CAMPAIGN_INITIAL = frozenset({_C.DRAFT, _C.SCHEDULED})

#: The campaign's status while its current job is in each status.
CAMPAIGN_FOR_JOB: Mapping[JobStatus, CampaignStatus] = {
    _J.QUEUED: _C.RUNNING,
    _J.EXPANDING: _C.RUNNING,
    _J.SENDING: _C.RUNNING,
    _J.PAUSED: _C.PAUSED,
    _J.COMPLETED: _C.COMPLETED,
    _J.CANCELLED: _C.CANCELLED,
    _J.FAILED: _C.FAILED,
}

_FOLLOWING = frozenset({_C.RUNNING, _C.PAUSED})
_WRITE_TRIES = 5


class IllegalTransition(StateConflict):
    """A status change the transition tables do not allow (the API answers 409)."""

    def __init__(self, kind: str, current: str, target: str) -> None:
        super().__init__(f"a {current} {kind} cannot become {target}")
        self.kind, self.current, self.target = kind, current, target


def actor_columns(current: str, target: str, actor: str) -> Entity:
    """Who made a status move (key id, never the key): the ``*_by`` column the move names.

    Paused → ``paused_by``, cancelled → ``cancelled_by``, paused back to running (any of the
    running statuses) → ``resumed_by``, scheduled → ``scheduled_by``. Moves the system makes on
    its own (no ``actor``), and moves no person makes, leave the columns as they are.
    """
    if not actor or current == target:
        return {}
    if target in (_J.PAUSED, _C.PAUSED):
        return {"paused_by": actor}
    if target in (_J.CANCELLED, _C.CANCELLED):
        return {"cancelled_by": actor}
    if target == _C.SCHEDULED:
        return {"scheduled_by": actor}
    if current in (_J.PAUSED, _C.PAUSED):
        return {"resumed_by": actor}
    return {}


def check_job_move(current: str, target: str) -> None:
    """Raise ``IllegalTransition`` unless a job may go from ``current`` to ``target``."""
    if current != target and JobStatus(target) not in JOB_TRANSITIONS[JobStatus(current)]:
        raise IllegalTransition("job", current, target)


def check_campaign_move(current: str, target: str) -> None:
    """Raise ``IllegalTransition`` unless a campaign may go from ``current`` to ``target``."""
    if current != target and CampaignStatus(target) not in CAMPAIGN_TRANSITIONS[CampaignStatus(current)]:
        raise IllegalTransition("campaign", current, target)


# -- jobs ------------------------------------------------------------------------------------------


def load_job(storage: Storage, tenant_id: str, job_id: str) -> Job:
    return Job.from_entity(storage.table(JOBS).get(tenant_id, job_id))


def open_job(storage: Storage, job: Job) -> Job:
    """Insert a new job and index it as active; the job already there wins (idempotent).

    Every creator (a campaign run, a retry-failed run, a transactional email) comes here, so
    a job is born in one of ``JOB_INITIAL`` and the Status Manager always finds it.
    """
    if JobStatus(job.status) not in JOB_INITIAL:
        raise IllegalTransition("job", "new", job.status)
    try:
        job.etag = storage.table(JOBS).insert(job.to_entity())
    except AlreadyExists:
        job = load_job(storage, job.tenant_id, job.id)
        if JobStatus(job.status).is_final:
            return job  # closed long ago: the Status Manager has nothing left to do with it
    storage.table(ACTIVE_JOBS).upsert(ActiveJob(job.tenant_id, job.id, since=job.created_at).to_entity())
    return job


def write_job(storage: Storage, job: Job, changes: Entity, actor: str = "") -> Job:
    """One ETag-guarded write of ``changes`` to ``job`` (as the caller read it).

    ``Conflict`` when the row moved since; ``IllegalTransition`` when ``changes`` carries a
    status the job may not take. On success ``job`` holds the new values and ETag. ``actor``:
    the key id of the person behind a status move, recorded in its ``*_by`` column.
    """
    if "status" in changes:
        check_job_move(job.status, changes["status"])
        changes = {**changes, **actor_columns(job.status, changes["status"], actor)}
    job.etag = storage.table(JOBS).update(Job.changes((job.tenant_id, job.id), **changes), etag=job.etag)
    _apply(job, changes)
    return job


def change_job(
    storage: Storage, tenant_id: str, job_id: str, decide: Callable[[Job], Entity | None],
    tries: int = _WRITE_TRIES, actor: str = "",
) -> Job:
    """Read the job, ``decide`` the changes, write them under the ETag; on 412 read and decide again.

    ``decide`` returns the columns to change, or ``None`` for nothing to do; it may raise
    ``StateConflict`` to refuse. Raises ``NotFound`` for a missing job and ``StateConflict``
    when the row kept changing ``tries`` times.
    """
    return _read_decide_write(
        "job", lambda: load_job(storage, tenant_id, job_id), decide,
        lambda job, changes: write_job(storage, job, changes, actor), tries,
    )


def fail_job(
    storage: Storage, tenant_id: str, job_id: str, reason: str, clock: Clock = utcnow, **columns: Any
) -> Job | None:
    """Give a job that has not ended ``failed`` with ``reason`` (a final job is left as it is).

    The job then closes like any other (the Status Manager accounts for what its tasks hold).
    """

    def decide(job: Job) -> Entity | None:
        if JobStatus(job.status).is_final:
            return None
        return {"status": JobStatus.FAILED.value, "failure_reason": reason, **columns}

    try:
        job = change_job(storage, tenant_id, job_id, decide)
    except NotFound:
        return None
    campaign_follows_job(storage, job, clock)
    return job


def pause_job_for(
    storage: Storage, tenant_id: str, job_id: str, reason: str, clock: Clock = utcnow
) -> Job | None:
    """Pause a running job on the system's own account (the provider refused as a whole).

    A job a person paused, cancelled or that ended meanwhile is left as it is: the cancel wins.
    """

    def decide(job: Job) -> Entity | None:
        if JobStatus.PAUSED not in JOB_TRANSITIONS[JobStatus(job.status)]:
            return None
        return {"status": JobStatus.PAUSED.value, "failure_reason": reason}

    try:
        job = change_job(storage, tenant_id, job_id, decide)
    except NotFound:
        return None
    campaign_follows_job(storage, job, clock)
    return job


# -- campaigns -------------------------------------------------------------------------------------


def load_campaign(storage: Storage, tenant_id: str, campaign_id: str) -> Campaign:
    return Campaign.from_entity(storage.table(CAMPAIGNS).get(tenant_id, campaign_id))


def open_campaign(storage: Storage, campaign: Campaign) -> Campaign:
    """Insert a new campaign (draft, or scheduled when it has a ``send_at``)."""
    if CampaignStatus(campaign.status) not in CAMPAIGN_INITIAL:
        raise IllegalTransition("campaign", "new", campaign.status)
    campaign.etag = storage.table(CAMPAIGNS).insert(campaign.to_entity())
    return campaign


def write_campaign(
    storage: Storage, campaign: Campaign, changes: Entity | None = None, *, was: str = "", actor: str = ""
) -> Campaign:
    """One ETag-guarded write: ``changes``, or with none the whole record as the caller edited it.

    A whole-record write names the status the caller read (``was``); the ETag proves the row
    still holds it, and the move from it to ``campaign.status`` is checked like any other.
    ``actor``: the key id behind a status move, recorded in its ``*_by`` column.
    """
    table = storage.table(CAMPAIGNS)
    if changes is None:
        check_campaign_move(was or campaign.status, campaign.status)
        campaign.actors.update(actor_columns(was or campaign.status, campaign.status, actor))
        campaign.etag = table.update(campaign.to_entity(), etag=campaign.etag)
        return campaign
    if "status" in changes:
        check_campaign_move(campaign.status, changes["status"])
        changes = {**changes, **actor_columns(campaign.status, changes["status"], actor)}
    campaign.etag = table.update(
        Campaign.changes((campaign.tenant_id, campaign.id), **changes), etag=campaign.etag
    )
    _apply(campaign, changes)
    return campaign


def change_campaign(
    storage: Storage, tenant_id: str, campaign_id: str, decide: Callable[[Campaign], Entity | None],
    tries: int = _WRITE_TRIES, actor: str = "",
) -> Campaign:
    """Read, decide, write under the ETag; on 412 read and decide again (like ``change_job``)."""
    return _read_decide_write(
        "campaign", lambda: load_campaign(storage, tenant_id, campaign_id), decide,
        lambda campaign, changes: write_campaign(storage, campaign, changes, actor=actor), tries,
    )


def campaign_follows_job(
    storage: Storage, job: Job, clock: Clock = utcnow, actor: str = ""
) -> Campaign | None:
    """Give the job's campaign the job's status and counts, if this job is its current run.

    The status follows only while the campaign runs (running or paused); the counts follow
    whenever the job is the campaign's current run, so a closed campaign's counts keep up
    with provider events. Returns the campaign as written (``None``: not this job's to follow).
    ``actor``: the key id whose pause, resume or cancel of the job the campaign follows.
    """
    if not job.campaign_id:
        return None
    counts = {**zero_counts(), **job.counts}
    target = CAMPAIGN_FOR_JOB[JobStatus(job.status)]

    def decide(campaign: Campaign) -> Entity | None:
        if campaign.current_job_id != job.id:
            return None
        changes: Entity = {}
        if campaign.status in _FOLLOWING and campaign.status != target:
            changes["status"] = target.value
            if JobStatus(job.status).is_final:
                changes["completed_at"] = job.completed_at or iso(clock())
        if {**zero_counts(), **campaign.counts} != counts:
            changes["counts"] = counts_json(counts)
        if changes:
            changes["updated_at"] = iso(clock())
        return changes or None

    try:
        return change_campaign(storage, job.tenant_id, job.campaign_id, decide, actor=actor)
    except NotFound:
        return None
    except StateConflict:
        log.warning("campaign kept changing; it follows its job at the next pass job=%s", job.id)
        return None


def begin_campaign_run(storage: Storage, campaign: Campaign, job_id: str, clock: Clock = utcnow) -> bool:
    """A scheduled campaign starts its run ``job_id``: running, with the job as its current one.

    ``False`` when the campaign changed since it was read (patched, or started by another host).
    """
    changes: Entity = {
        "status": CampaignStatus.RUNNING.value, "current_job_id": job_id,
        "job_count": campaign.job_count + 1, "updated_at": iso(clock()),
    }
    try:
        write_campaign(storage, campaign, changes)
    except Conflict:
        return False
    return True


def _read_decide_write(
    kind: str, load: Callable[[], R], decide: Callable[[R], Entity | None],
    write: Callable[[R, Entity], R], tries: int,
) -> R:
    """The one loop behind ``change_job`` and ``change_campaign``: decide on the row as it is now."""
    for _ in range(tries):
        record = load()
        changes = decide(record)
        if not changes:
            return record
        try:
            return write(record, changes)
        except Conflict:
            continue
    raise StateConflict(f"the {kind} kept changing while we tried to update it; try again")


def _apply(record: Any, changes: Mapping[str, Any]) -> None:
    for name, value in changes.items():
        if name in ACTOR_COLUMNS and isinstance(getattr(record, "actors", None), dict):
            record.actors[name] = value
            continue
        if name == ESTIMATE_COLUMN and isinstance(value, str):
            value = json.loads(value) if value else {}
        if name.startswith("count_") and isinstance(getattr(record, "counts", None), dict):
            record.counts[name.removeprefix("count_")] = value
            continue
        if name == "counts" and isinstance(value, str):
            value = counts_from_json(value)  # the column holds JSON; the record a dict
        if hasattr(record, name):
            setattr(record, name, value)
