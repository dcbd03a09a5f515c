"""The tenant's suppression list (API.md "Delivery feedback and compliance").

Removal deactivates the row instead of deleting it (``core.suppressions``), so hosts'
incremental caches see the change; listings therefore show active rows only.
"""

from __future__ import annotations

from fastapi import APIRouter, Response

from api.auth import TenantDep
from api.dependencies import StorageDep
from api.errors import not_found
from api.routers.conventions import DEFAULT_PAGE_LIMIT, ERROR_RESPONSES, Limit, TenantPageCursor
from api.schemas import Page, SuppressionCreate, SuppressionPublic
from core.storage import SUPPRESSIONS, Entity
from core.suppressions import add_suppression, remove_suppression

router = APIRouter(tags=["suppressions"], responses=ERROR_RESPONSES)


def suppression_public(entity: Entity) -> SuppressionPublic:
    return SuppressionPublic(
        email=entity.get("email", ""), reason=entity.get("reason", ""), at=entity.get("at", ""),
        source=entity.get("source") or None,
    )


@router.get("/suppressions", response_model=Page[SuppressionPublic])
def list_suppressions(
    tenant: TenantDep, storage: StorageDep,
    cursor: TenantPageCursor, limit: Limit = DEFAULT_PAGE_LIMIT,
) -> Page[SuppressionPublic]:
    page = storage.table(SUPPRESSIONS).query_page(
        "PartitionKey eq @t and active eq true", {"t": tenant.id}, limit=limit, continuation=cursor.position
    )
    return Page[SuppressionPublic](items=[suppression_public(e) for e in page.items],
                                   continuation=cursor.next_token(page.continuation))


@router.post("/suppressions", status_code=201, response_model=SuppressionPublic)
def create_suppression(body: SuppressionCreate, tenant: TenantDep, storage: StorageDep) -> SuppressionPublic:
    entity = add_suppression(storage, tenant.id, body.email, reason=body.reason, source="api")
    return suppression_public(entity)


@router.delete("/suppressions/{email}", status_code=204, response_class=Response)
def delete_suppression(email: str, tenant: TenantDep, storage: StorageDep) -> Response:
    if not remove_suppression(storage, tenant.id, email):
        raise not_found("suppression")
    return Response(status_code=204)
