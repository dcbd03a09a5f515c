"""API.md "Conventions" shared by every router: list parameters and the documented error responses."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Query

from api.schemas import DEFAULT_LIMIT, MAX_LIMIT, ErrorBody

Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="Items per page (1–1000).")]
Continuation = Annotated[
    str | None, Query(max_length=4096, description="The `continuation` of the previous page.")
]
DEFAULT_PAGE_LIMIT = DEFAULT_LIMIT


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
