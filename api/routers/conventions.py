"""API.md "Conventions" shared by every router: list parameters and the documented error responses.

Every paged list takes its ``continuation`` through a page cursor (``TenantPageCursor``,
``OperatorPageCursor``): the one place a token is checked. A token is the service's page
position sealed with an HMAC (``MAILROOM_SIGNING_KEY``) over the tenant, the route and the ids
in its path, so a forged token, or one issued for another list or another tenant, is a 400
naming ``continuation`` instead of an empty or a wrong page.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Query, Request

from api.auth import OperatorReaderDep, TenantDep
from api.dependencies import SettingsDep
from api.schemas import DEFAULT_LIMIT, MAX_LIMIT, ErrorBody
from core.settings import Settings
from core.storage import decode_continuation, encode_continuation

Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="Items per page (1–1000).")]
Continuation = Annotated[
    str | None, Query(max_length=4096, description="The `continuation` of the previous page.")
]
DEFAULT_PAGE_LIMIT = DEFAULT_LIMIT


@dataclass(frozen=True)
class PageCursor:
    """Where this request's page starts (``None``: the first page) and how to seal the next."""

    position: dict[str, Any] | None
    signing_key: str
    scope: str

    def next_token(self, position: dict[str, Any] | None) -> str | None:
        """The ``continuation`` a client passes back for the page after this one."""
        return encode_continuation(position, self.signing_key, self.scope)


def list_scope(request: Request, owner: str) -> str:
    """What a token is bound to: whose list (tenant or operator), which route, which resource."""
    route = getattr(request.scope.get("route"), "path", None) or request.url.path
    ids = "&".join(f"{name}={value}" for name, value in sorted(request.path_params.items()))
    return f"{owner}|{route}|{ids}"


def open_cursor(request: Request, settings: Settings, owner: str, continuation: str | None) -> PageCursor:
    scope = list_scope(request, owner)
    position = decode_continuation(continuation, settings.signing_key, scope)
    return PageCursor(position, settings.signing_key, scope)


def tenant_page_cursor(
    request: Request, tenant: TenantDep, settings: SettingsDep, continuation: Continuation = None
) -> PageCursor:
    """The cursor of a tenant's list: its tokens are good for that tenant's same list only."""
    return open_cursor(request, settings, f"tenant:{tenant.id}", continuation)


def operator_page_cursor(
    request: Request, _: OperatorReaderDep, settings: SettingsDep, continuation: Continuation = None
) -> PageCursor:
    """The cursor of an operator-wide list (``GET /tenants``)."""
    return open_cursor(request, settings, "operator", continuation)


TenantPageCursor = Annotated[PageCursor, Depends(tenant_page_cursor)]
OperatorPageCursor = Annotated[PageCursor, Depends(operator_page_cursor)]


def _error(description: str) -> dict[str, Any]:
    """Errors are JSON even on routes that answer HTML (the unsubscribe page), so say so."""
    json_body = {"schema": {"$ref": "#/components/schemas/ErrorBody"}}
    return {"model": ErrorBody, "description": description, "content": {"application/json": json_body}}


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _error("Malformed request (e.g. a body that is not JSON)"),
    401: _error("Missing, unknown or revoked API key"),
    403: _error("The key's role may not do this"),
    404: _error("No such resource (or it belongs to another tenant)"),
    413: _error("The request is too large"),
    422: _error("Invalid fields; `details` names each with its path"),
    429: _error("Too many requests with this key; retry after `Retry-After` seconds"),
    503: _error("A dependency (storage) is down; retry after `Retry-After` seconds"),
}
STATE_RESPONSES: dict[int | str, dict[str, Any]] = {
    409: _error("The resource's state forbids this, or it changed concurrently"),
}
