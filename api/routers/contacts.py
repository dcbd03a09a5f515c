"""Contacts: bulk import (JSON or CSV), listing, reading and erasing (API.md "Contacts")."""

from __future__ import annotations

from email.message import Message
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from api.auth import TenantDep
from api.contact_import import ImportOutcome, import_contacts, rows_from_csv, rows_from_json
from api.dependencies import SettingsDep, StorageDep
from api.errors import ApiError, json_loads_or_400, not_found
from api.routers.conventions import DEFAULT_PAGE_LIMIT, ERROR_RESPONSES, Limit, PageCursor, TenantPageCursor
from api.schemas import ContactIn, ContactPublic, ImportRejection, ImportResult, Page
from core.contact_tables import ContactTables
from core.errors import FieldProblem, InvalidContinuation
from core.ids import contact_id_for, normalize_email
from core.models import Contact, Delivery, Tenant
from core.storage import DELIVERIES, JOBS, Entity, Storage
from privacy.erasure import erase_contact_traces

router = APIRouter(tags=["contacts"], responses=ERROR_RESPONSES)

# A list-filtered page reads at most this many contacts before answering (maybe short, with a
# continuation), so a rare list never turns one request into a scan of the whole tenant.
MAX_SCANNED_PER_PAGE = 5_000
REDACTED_EMAIL = ""

_IMPORT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {"type": "array", "items": ContactIn.model_json_schema()}
            },
            "text/csv": {
                "schema": {"type": "string", "description": "Header row `email,name,<attribute>...`; "
                           "a `lists` column is split on `;`."}
            },
        },
    }
}


async def _request_body(request: Request) -> bytes:
    """The raw body (bounded by the size-limit middleware); read after auth has passed."""
    return await request.body()


def _media_type(request: Request) -> str:
    raw = request.headers.get("content-type")
    if not raw:
        return "application/json"
    message = Message()
    message["content-type"] = raw
    return message.get_content_type()


@router.post("/contacts", response_model=ImportResult, openapi_extra=_IMPORT_BODY)
async def import_contacts_route(
    request: Request, tenant: TenantDep, storage: StorageDep, settings: SettingsDep,
    body: Annotated[bytes, Depends(_request_body)],
) -> ImportResult:
    outcome = await run_in_threadpool(
        _parse_and_import, storage, tenant, body, _media_type(request), settings.max_contacts_per_import
    )
    return ImportResult(
        created=outcome.created, updated=outcome.updated,
        rejected=[ImportRejection(index=r.index, field=r.field, message=r.message) for r in outcome.rejected],
    )


def _parse_and_import(
    storage: Storage, tenant: Tenant, body: bytes, media_type: str, max_rows: int
) -> ImportOutcome:
    """Parsing a large body is CPU work: it runs in the thread pool, off the event loop."""
    if media_type == "text/csv":
        rows = rows_from_csv(body, max_rows)
    elif media_type == "application/json" or media_type.endswith("+json"):
        rows = rows_from_json(json_loads_or_400(body), max_rows)
    else:
        raise ApiError(415, "unsupported_media_type", "send application/json or text/csv",
                       [FieldProblem("Content-Type", "must be application/json or text/csv")])
    return import_contacts(storage, tenant, rows)


def contact_public(contact: Contact) -> ContactPublic:
    return ContactPublic(
        id=contact.id, email=contact.email, name=contact.name, attributes=contact.attributes,
        lists=contact.lists, state=contact.state, created_at=contact.created_at or None,
        updated_at=contact.updated_at or None,
    )


@router.get("/contacts", response_model=Page[ContactPublic])
def list_contacts(
    tenant: TenantDep, storage: StorageDep, cursor: TenantPageCursor,
    list_name: Annotated[str | None, Query(alias="list", max_length=64)] = None,
    email: Annotated[str | None, Query(max_length=254)] = None,
    limit: Limit = DEFAULT_PAGE_LIMIT,
) -> Page[ContactPublic]:
    if email is not None:
        return _by_email(storage, tenant, email, list_name)
    if list_name is not None:
        return _in_list(storage, tenant.id, list_name, limit, cursor)
    items, last = ContactTables(storage).page_after(tenant.id, _after(cursor), limit)
    return Page[ContactPublic](
        items=[contact_public(Contact.from_entity(e)) for e in items],
        continuation=cursor.next_token({"after": last}) if last else None,
    )


def _after(cursor: PageCursor) -> str:
    """The id a page continues after (listing and list-filter tokens are both "after this id")."""
    after = (cursor.position or {}).get("after", "")
    if cursor.position is not None and not after:
        raise InvalidContinuation("invalid continuation token",
                                  [FieldProblem("continuation", "not a token this API issued for this list")])
    return str(after)


def _by_email(storage: Storage, tenant: Tenant, email: str, list_name: str | None) -> Page[ContactPublic]:
    """Ids derive from the address, so an email filter is one point read."""
    contact_id = contact_id_for(tenant.contact_salt, normalize_email(email))
    entity = ContactTables(storage).find(tenant.id, contact_id)
    contact = Contact.from_entity(entity) if entity else None
    if contact is None or (list_name is not None and list_name not in contact.lists):
        return Page[ContactPublic](items=[], continuation=None)
    return Page[ContactPublic](items=[contact_public(contact)], continuation=None)


def _in_list(
    storage: Storage, tenant_id: str, list_name: str, limit: int, cursor: PageCursor
) -> Page[ContactPublic]:
    """Lists live inside a JSON column Table Storage cannot filter on, so filter here.

    The token is "after this id" (the contact tables read in turn are in id order), which lets a
    page stop in the middle of a storage page without skipping or repeating anyone.
    """
    after = _after(cursor)
    items: list[ContactPublic] = []
    scanned = 0
    last_seen = ""
    page_size = min(1000, max(limit * 2, 100))
    rows = ContactTables(storage).scan_after(tenant_id, after, page_size=page_size)
    for entity in rows:
        scanned += 1
        last_seen = entity["RowKey"]
        contact = Contact.from_entity(entity)
        if list_name in contact.lists:
            items.append(contact_public(contact))
        if len(items) >= limit or scanned >= MAX_SCANNED_PER_PAGE:
            break
    else:
        return Page[ContactPublic](items=items, continuation=None)
    return Page[ContactPublic](items=items, continuation=cursor.next_token({"after": last_seen}))


@router.get("/contacts/{contact_id}", response_model=ContactPublic)
def get_contact(contact_id: str, tenant: TenantDep, storage: StorageDep) -> ContactPublic:
    entity = ContactTables(storage).find(tenant.id, contact_id)
    if entity is None:
        raise not_found("contact")
    return contact_public(Contact.from_entity(entity))


@router.delete("/contacts/{contact_id}", status_code=204, response_class=Response)
def delete_contact(contact_id: str, tenant: TenantDep, storage: StorageDep) -> Response:
    """Erase a contact: stop its sends and redact its address in delivery logs first, then delete the row.

    In that order a failure half-way leaves the contact in place, so retrying the DELETE
    finishes the redaction instead of answering 404 with addresses left behind. A chunk sending
    the contact for longer than the erasure waits is a 409 (``SendInProgress``), retried the same way.
    """
    contacts = ContactTables(storage)
    contact = contacts.find(tenant.id, contact_id)
    if contact is None:
        raise not_found("contact")
    erase_contact_traces(storage, tenant.id, contact_id, contact.get("email", ""))
    redact_deliveries(storage, tenant.id, contact_id)
    contacts.delete(tenant.id, contact_id)
    return Response(status_code=204)


def redact_deliveries(storage: Storage, tenant_id: str, contact_id: str) -> int:
    """Blank the contact's address in every delivery row of the tenant's jobs."""
    deliveries = storage.table(DELIVERIES)
    redacted = 0
    for job in storage.table(JOBS).query("PartitionKey eq @t", {"t": tenant_id}, select=["RowKey"]):
        job_id = job["RowKey"]
        rows: list[Entity] = list(deliveries.query(
            "PartitionKey ge @lo and PartitionKey lt @hi and RowKey eq @c",
            {"lo": f"{job_id}-", "hi": f"{job_id}.", "c": contact_id},
            select=["PartitionKey", "RowKey"],
        ))
        for row in rows:
            deliveries.update(_redaction(row))
            redacted += 1
    return redacted


def _redaction(row: dict[str, Any]) -> Entity:
    return Delivery.changes(row, email=REDACTED_EMAIL, redacted=True)
