"""Operator routes: tenants and API keys (API.md "Operator")."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Response

from api.auth import OPERATOR_WIDE, AdminDep, Directory, OperatorReaderDep, get_directory
from api.dependencies import StorageDep
from api.errors import not_found
from api.routers.conventions import DEFAULT_PAGE_LIMIT, ERROR_RESPONSES, Limit, OperatorPageCursor
from api.schemas import (
    KeyPublic,
    OperatorKeyCreate,
    Page,
    TenantCreate,
    TenantKeyCreate,
    TenantPublic,
    TenantUpdate,
)
from core.clock import iso, utcnow
from core.errors import NotFound
from core.ids import contact_salt, new_id
from core.keys import hash_key, new_api_key
from core.models import KEY_PARTITION, TENANT_PARTITION, ApiKey, Tenant
from core.storage import API_KEYS, TENANTS, Storage
from core.tenant_settings import update_tenant
from core.warmup_schedule import OFF, ON

router = APIRouter(tags=["operator"], responses=ERROR_RESPONSES)
DirectoryDep = Annotated[Directory, Depends(get_directory)]


def tenant_public(tenant: Tenant) -> TenantPublic:
    """Never exposes ``contact_salt``: it keys contact ids and must stay secret."""
    return TenantPublic(
        id=tenant.id, name=tenant.name, rate_limit_per_minute=tenant.rate_limit_per_minute,
        max_roster=tenant.max_roster, providers=tenant.providers or None,
        delivery_semantics=tenant.delivery_semantics or None, sender_domains=tenant.sender_domains,
        warmup=warmup_shown(tenant.warmup), state=tenant.state, created_at=tenant.created_at or None,
        updated_at=tenant.updated_at or None,
    )


def warmup_shown(setting: str) -> str | list[int] | None:
    """A tenant's ``warmup`` as it was given: ``"on"``, ``"off"``, the allowances, or null."""
    if not setting or setting in (ON, OFF):
        return setting or None
    return [int(day) for day in setting.split(",")]


@router.post("/tenants", status_code=201, response_model=TenantPublic)
def create_tenant(body: TenantCreate, _: AdminDep, storage: StorageDep) -> TenantPublic:
    tenant = Tenant(
        id=new_id(), name=body.name, contact_salt=contact_salt(),
        rate_limit_per_minute=body.rate_limit_per_minute, max_roster=body.max_roster,
        created_at=iso(utcnow()),
    )
    storage.table(TENANTS).insert(tenant.to_entity())
    return tenant_public(tenant)


@router.get("/tenants", response_model=Page[TenantPublic])
def list_tenants(
    principal: OperatorReaderDep, storage: StorageDep, cursor: OperatorPageCursor,
    limit: Limit = DEFAULT_PAGE_LIMIT,
) -> Page[TenantPublic]:
    if not principal.operator_wide:  # a support key made for one tenant sees that one
        entity = storage.table(TENANTS).find(TENANT_PARTITION, principal.tenant_id)
        items = [tenant_public(Tenant.from_entity(entity))] if entity else []
        return Page[TenantPublic](items=items, continuation=None)
    page = storage.table(TENANTS).query_page(
        "PartitionKey eq @p", {"p": TENANT_PARTITION}, limit=limit, continuation=cursor.position
    )
    return Page[TenantPublic](
        items=[tenant_public(Tenant.from_entity(e)) for e in page.items],
        continuation=cursor.next_token(page.continuation),
    )


@router.get("/tenants/{tenant_id}", response_model=TenantPublic)
def get_tenant(tenant_id: str, principal: OperatorReaderDep, storage: StorageDep) -> TenantPublic:
    if not principal.operator_wide and principal.tenant_id != tenant_id:
        raise not_found("tenant")
    return tenant_public(_load_tenant(storage, tenant_id))


@router.patch("/tenants/{tenant_id}", response_model=TenantPublic)
def patch_tenant(
    tenant_id: str, body: TenantUpdate, _: AdminDep, storage: StorageDep, directory: DirectoryDep
) -> TenantPublic:
    """Change a tenant's name, limits, provider order, delivery semantics, sender domains or warm-up.

    Only the fields given change; ``null`` clears one back to the deployment's default.
    """
    changes = {name: getattr(body, name) for name in body.model_fields_set}
    try:
        tenant = update_tenant(storage, tenant_id, changes)
    except NotFound as err:
        raise not_found("tenant") from err
    directory.forget()  # this process applies it now; others within the cache TTL
    return tenant_public(tenant)


@router.post("/tenants/{tenant_id}/keys", status_code=201, response_model=KeyPublic)
def create_tenant_key(
    tenant_id: str, body: TenantKeyCreate, _: AdminDep, storage: StorageDep
) -> KeyPublic:
    _load_tenant(storage, tenant_id)
    return _issue_key(storage, tenant_id, body.role)


@router.post("/keys", status_code=201, response_model=KeyPublic)
def create_operator_key(body: OperatorKeyCreate, _: AdminDep, storage: StorageDep) -> KeyPublic:
    return _issue_key(storage, OPERATOR_WIDE, body.role)


@router.delete("/keys/{key_id}", status_code=204, response_class=Response)
def revoke_key(key_id: str, _: AdminDep, storage: StorageDep, directory: DirectoryDep) -> Response:
    table = storage.table(API_KEYS)
    rows = list(table.query(
        "PartitionKey eq @p and key_id eq @id", {"p": KEY_PARTITION, "id": key_id},
        select=["PartitionKey", "RowKey"],
    ))
    if not rows:
        raise not_found("key")
    now = iso(utcnow())
    for row in rows:
        table.update(ApiKey.changes(row, revoked=True, revoked_at=now))
    directory.forget()  # this process stops honouring it now; others within the cache TTL
    return Response(status_code=204)


def _load_tenant(storage: Storage, tenant_id: str) -> Tenant:
    entity = storage.table(TENANTS).find(TENANT_PARTITION, tenant_id)
    if entity is None:
        raise not_found("tenant")
    return Tenant.from_entity(entity)


def _issue_key(storage: Storage, tenant_id: str, role: str) -> KeyPublic:
    key_id, key = new_api_key()
    created_at = iso(utcnow())
    storage.table(API_KEYS).insert(ApiKey(
        key_hash=hash_key(key), key_id=key_id, tenant_id=tenant_id, role=role, created_at=created_at,
    ).to_entity())
    return KeyPublic(
        key=key, role=role, id=key_id,
        tenant_id=None if tenant_id == OPERATOR_WIDE else tenant_id, created_at=created_at,
    )
