"""A contact's deliveries across campaigns (``GET /contacts/{id}/deliveries``).

Closed jobs are read from ``ContactHistory`` (PartitionKey tenant, RowKey
``{contact}|{job}``, written when a job closes): one range query, however many jobs the
tenant ran. Jobs still running are few (the ``ActiveJobs`` index) and are looked up live
on the first page.
"""

from __future__ import annotations

from fastapi import APIRouter

from api.auth import TenantDep
from api.dependencies import StorageDep
from api.errors import not_found
from api.routers.conventions import DEFAULT_PAGE_LIMIT, ERROR_RESPONSES, Limit, TenantPageCursor
from api.schemas import ContactDeliveryPublic, Page
from core.contact_tables import ContactTables
from core.models import ACTIVE_PARTITION, Job
from core.storage import ACTIVE_JOBS, CONTACT_HISTORY, JOBS, Entity, Storage
from status_manager.delivery_logs import find_delivery

router = APIRouter(tags=["contacts"], responses=ERROR_RESPONSES)


def history_public(entity: Entity) -> ContactDeliveryPublic:
    return ContactDeliveryPublic(
        job_id=entity.get("job_id", ""), campaign_id=entity.get("campaign_id", ""),
        campaign_name=entity.get("campaign_name", ""), status=entity.get("status", ""),
        reason=entity.get("reason", ""), provider_message_id=entity.get("provider_message_id", ""),
        updated_at=entity.get("updated_at") or None, dry_run=bool(entity.get("dry_run", False)),
    )


def running_deliveries(storage: Storage, tenant_id: str, contact_id: str) -> list[ContactDeliveryPublic]:
    """The contact's rows in the tenant's jobs that have not closed yet."""
    found = []
    active = storage.table(ACTIVE_JOBS).query(
        "PartitionKey eq @p and RowKey ge @lo and RowKey lt @hi",
        {"p": ACTIVE_PARTITION, "lo": f"{tenant_id}|", "hi": f"{tenant_id}}}"},
    )
    for entry in active:
        job_id = entry["RowKey"].split("|", 1)[1]
        job_entity = storage.table(JOBS).find(tenant_id, job_id)
        row = find_delivery(storage, tenant_id, job_id, contact_id) if job_entity else None
        if row is None or job_entity is None:
            continue
        job = Job.from_entity(job_entity)
        found.append(ContactDeliveryPublic(
            job_id=job.id, campaign_id=job.campaign_id, campaign_name=job.campaign_name,
            status=row.get("status", ""), reason=row.get("reason", ""),
            provider_message_id=row.get("provider_message_id", ""), updated_at=row.get("updated_at") or None,
            job_open=True, dry_run=job.dry_run,
        ))
    return found


@router.get("/contacts/{contact_id}/deliveries", response_model=Page[ContactDeliveryPublic])
def list_contact_deliveries(
    contact_id: str, tenant: TenantDep, storage: StorageDep,
    cursor: TenantPageCursor, limit: Limit = DEFAULT_PAGE_LIMIT,
) -> Page[ContactDeliveryPublic]:
    page = storage.table(CONTACT_HISTORY).query_page(
        "PartitionKey eq @t and RowKey ge @lo and RowKey lt @hi",
        {"t": tenant.id, "lo": f"{contact_id}|", "hi": f"{contact_id}}}"},
        limit=limit, continuation=cursor.position,
    )
    items = [history_public(e) for e in page.items]
    if cursor.position is None:
        closed = {item.job_id for item in items}
        running = running_deliveries(storage, tenant.id, contact_id)
        items = [d for d in running if d.job_id not in closed] + items
        if not items and ContactTables(storage).find(tenant.id, contact_id) is None:
            raise not_found("contact")
    return Page[ContactDeliveryPublic](items=items, continuation=cursor.next_token(page.continuation))
