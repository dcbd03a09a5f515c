"""Operator views: tenants with their running jobs, provider health, queues and dead letters.

For the operator (admin key) and operator-wide support keys only: these views cross tenants,
so a tenant key and a support key made for one tenant get 403. Support reads are audited like
every support read (``SupportAudit``, tenant ``*``). Replaying or discarding a dead letter is the
admin's alone and leaves its own audit row (key id, action, queue, message id, the job it names)
before anything is changed, so no action goes unrecorded.
"""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request, Response
from pydantic import BaseModel, Field

from api.audit import audit_entity
from api.auth import AdminDep, OperatorReaderDep, Principal
from api.dependencies import SettingsDep, StorageDep
from api.errors import forbidden, not_found, route_name
from api.routers.conventions import DEFAULT_PAGE_LIMIT, ERROR_RESPONSES, Limit, OperatorPageCursor
from api.routers.jobs import job_public
from api.schemas import Page
from core.clock import iso, parse_iso, utcnow
from core.errors import NotFound
from core.models import ACTIVE_PARTITION, TENANT_PARTITION, Job, Tenant
from core.poison_queues import PoisonMessage, check_queue, discard_poison, list_poison, replay_poison
from core.status import DeliveryStatus
from core.storage import ACTIVE_JOBS, ALL_QUEUES, JOBS, POISON_SUFFIX, SUPPORT_AUDIT, TENANTS, Storage
from providers.factory import breaker_config, provider_order
from providers.health import read_breakers

router = APIRouter(prefix="/operator", tags=["operator"], responses=ERROR_RESPONSES)

# Statuses of recipients the provider accepted: what "sent per minute" counts.
HANDED_OVER = frozenset({DeliveryStatus.SENT, DeliveryStatus.DELIVERED, DeliveryStatus.BOUNCED,
                         DeliveryStatus.DROPPED, DeliveryStatus.COMPLAINED, DeliveryStatus.DEFERRED})
QueueName = Annotated[str, Path(description="`job-queue`, `task-queue` or `events-queue` (its poison twin)")]


def require_operator_wide(principal: OperatorReaderDep) -> Principal:
    """The admin or an operator-wide support key; views across tenants are not for one tenant's keys."""
    if not principal.operator_wide:
        raise forbidden("operator views need the operator's key or an operator-wide support key")
    return principal


OperatorWideDep = Annotated[Principal, Depends(require_operator_wide)]


# -- tenants and their running jobs ----------------------------------------------------------


class RunningJob(BaseModel):
    id: str
    campaign_id: str
    campaign_name: str
    status: str
    roster_size: int
    progress: float
    started_at: str | None = None
    eta: str | None = None
    sent: int = Field(description="Recipients the provider accepted so far.")
    sent_per_minute: float = Field(description="Average since the job started.")


class OperatorTenant(BaseModel):
    id: str
    name: str
    state: str
    rate_limit_per_minute: int | None = None
    running_jobs: list[RunningJob]
    sent_per_minute: float = Field(description="The running jobs' rates added up.")


def running_job(job: Job, now_epoch: float) -> RunningJob:
    public = job_public(job)
    sent = sum(n for status, n in job.counts.items() if status in HANDED_OVER)
    minutes = (now_epoch - parse_iso(job.started_at).timestamp()) / 60 if job.started_at else 0.0
    return RunningJob(
        id=job.id, campaign_id=job.campaign_id, campaign_name=job.campaign_name, status=job.status,
        roster_size=job.roster_size, progress=public.progress, started_at=public.started_at, eta=public.eta,
        sent=sent, sent_per_minute=round(sent / minutes, 1) if minutes > 0 else 0.0,
    )


def running_jobs_by_tenant(storage: Storage) -> dict[str, list[str]]:
    """The ``ActiveJobs`` index (jobs not yet closed: few), as tenant → job ids."""
    found: dict[str, list[str]] = {}
    for entry in storage.table(ACTIVE_JOBS).query("PartitionKey eq @p", {"p": ACTIVE_PARTITION},
                                                  select=["RowKey"]):
        tenant_id, _, job_id = entry["RowKey"].partition("|")
        found.setdefault(tenant_id, []).append(job_id)
    return found


@router.get("/tenants", response_model=Page[OperatorTenant])
def list_tenants_at_work(
    _: OperatorWideDep, storage: StorageDep, cursor: OperatorPageCursor, limit: Limit = DEFAULT_PAGE_LIMIT,
) -> Page[OperatorTenant]:
    """Tenants (paged), each with its running jobs, their progress and send rates."""
    page = storage.table(TENANTS).query_page(
        "PartitionKey eq @p", {"p": TENANT_PARTITION}, limit=limit, continuation=cursor.position
    )
    active = running_jobs_by_tenant(storage)
    now = time.time()
    items = []
    for entity in page.items:
        tenant = Tenant.from_entity(entity)
        jobs = [storage.table(JOBS).find(tenant.id, job_id) for job_id in active.get(tenant.id, [])]
        running = [running_job(Job.from_entity(e), now) for e in jobs if e is not None]
        items.append(OperatorTenant(
            id=tenant.id, name=tenant.name, state=tenant.state,
            rate_limit_per_minute=tenant.rate_limit_per_minute, running_jobs=running,
            sent_per_minute=round(sum(j.sent_per_minute for j in running), 1),
        ))
    return Page[OperatorTenant](items=items, continuation=cursor.next_token(page.continuation))


# -- providers -------------------------------------------------------------------------------


class ProviderHealthPublic(BaseModel):
    provider: str
    state: str = Field(description="`closed`, `open` or `half-open`.")
    open_until: str | None = Field(None, description="When an open breaker may be probed.")
    window_seconds: float
    window_ok: int = Field(description="Sends that succeeded inside the window.")
    window_failed: int = Field(description="Sends that failed inside the window.")
    probe_owner: str | None = Field(None, description="The host sending the one probe (half-open).")
    last_probe_at: str | None = None
    last_probe: str | None = Field(None, description="`ok` or `failed`.")
    updated_at: str | None = None


@router.get("/providers", response_model=Page[ProviderHealthPublic])
def list_provider_health(
    _: OperatorWideDep, storage: StorageDep, settings: SettingsDep
) -> Page[ProviderHealthPublic]:
    """Each provider's breaker as every host shares it (``ProviderHealth``)."""
    config = breaker_config(settings)
    items = [
        ProviderHealthPublic(
            provider=b.provider, state=b.state, open_until=b.until or None,
            window_seconds=config.window_seconds, window_ok=b.window_ok, window_failed=b.window_failed,
            probe_owner=b.probe_owner or None, last_probe_at=b.last_probe_at or None,
            last_probe=b.last_probe or None, updated_at=b.updated_at or None,
        )
        for b in read_breakers(storage, config, provider_order(settings), time.time())
    ]
    return Page[ProviderHealthPublic](items=items)


# -- queues ----------------------------------------------------------------------------------


class QueuePublic(BaseModel):
    name: str
    depth: int = Field(description="The service's approximate message count.")
    oldest_inserted_at: str | None = Field(None, description="The first visible message's insertion time.")
    oldest_age_seconds: float | None = Field(None, description="How long that message has waited.")
    poison: bool


@router.get("/queues", response_model=Page[QueuePublic])
def list_queues(_: OperatorWideDep, storage: StorageDep) -> Page[QueuePublic]:
    """Depth and age of the oldest message of every queue and its poison twin.

    The age is the first *visible* message's (a peek): messages a host is working on are
    hidden and not counted, which is what ``ApproximateAgeOfOldestMessage`` means in practice.
    """
    now = utcnow()
    items = []
    for base in ALL_QUEUES:
        for name in (base, base + POISON_SUFFIX):
            queue = storage.queue(name)
            first = queue.peek_messages(1)
            inserted = first[0].inserted_on if first else None
            items.append(QueuePublic(
                name=name, depth=queue.depth(), poison=name.endswith(POISON_SUFFIX),
                oldest_inserted_at=iso(inserted) if inserted else None,
                oldest_age_seconds=round(max(0.0, (now - inserted).total_seconds()), 1) if inserted else None,
            ))
    return Page[QueuePublic](items=items)


# -- dead letters ----------------------------------------------------------------------------


class PoisonMessagePublic(BaseModel):
    id: str
    queue: str = Field(description="The queue it came from; a replay sends it back there.")
    kind: str = Field(description="job ticket, task ticket, provider events, delivery log, unreadable")
    inserted_at: str | None = None
    dequeue_count: int
    tenant_id: str | None = None
    job_id: str | None = None
    task_index: int | None = None
    job_status: str | None = Field(None, description="The named job's status now.")
    reason: str = Field(description="Why it is here: the task's or job's last error, or the text's fault.")


def poison_public(message: PoisonMessage) -> PoisonMessagePublic:
    return PoisonMessagePublic(
        id=message.id, queue=message.queue, kind=message.kind, inserted_at=message.inserted_at or None,
        dequeue_count=message.dequeue_count, tenant_id=message.tenant_id or None,
        job_id=message.job_id or None,
        task_index=message.task_index, job_status=message.job_status or None, reason=message.reason,
    )


def _queue(queue: str) -> str:
    try:
        return check_queue(queue)
    except NotFound as err:
        raise not_found("queue") from err


@router.get("/poison/{queue}", response_model=Page[PoisonMessagePublic])
def list_poison_messages(
    queue: QueueName, _: OperatorWideDep, storage: StorageDep
) -> Page[PoisonMessagePublic]:
    """The first 32 visible messages of the queue's ``-poison`` twin, with the job and reason they name."""
    return Page[PoisonMessagePublic](items=[poison_public(m) for m in list_poison(storage, _queue(queue))])


def audit_operator_action(
    request: Request, storage: Storage, principal: Principal, action: str, queue: str, message_id: str,
) -> None:
    """Record who did what to which dead letter, before it is done (a failed write is a 503)."""
    named = next((m for m in list_poison(storage, queue) if m.id == message_id), None)
    if named is None:
        raise not_found("message")
    ids = {"queue": queue, "message_id": message_id, "job_id": named.job_id}
    tenant_id = named.tenant_id or "*"
    entity = audit_entity(principal.key_id, tenant_id, request.method, route_name(request.scope), ids)
    entity["action"] = action
    storage.table(SUPPORT_AUDIT).insert(entity)


@router.post("/poison/{queue}/{message_id}/replay", response_model=PoisonMessagePublic)
def replay_poison_message(
    queue: QueueName, message_id: str, request: Request, principal: AdminDep, storage: StorageDep,
) -> PoisonMessagePublic:
    """Send a dead letter back to the queue it came from (admin only, audited)."""
    name = _queue(queue)
    audit_operator_action(request, storage, principal, "replay", name, message_id)
    try:
        return poison_public(replay_poison(storage, name, message_id))
    except NotFound as err:
        raise not_found("message") from err


@router.delete("/poison/{queue}/{message_id}", status_code=204, response_class=Response)
def discard_poison_message(
    queue: QueueName, message_id: str, request: Request, principal: AdminDep, storage: StorageDep,
) -> Response:
    """Throw a dead letter away for good (admin only, audited)."""
    name = _queue(queue)
    audit_operator_action(request, storage, principal, "discard", name, message_id)
    try:
        discard_poison(storage, name, message_id)
    except NotFound as err:
        raise not_found("message") from err
    return Response(status_code=204)
