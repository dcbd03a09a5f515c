"""The support audit trail: every read a support key makes is recorded (DESIGN invariant 5).

Support staff read across tenants, so each of their reads leaves a row in ``SupportAudit``
(PartitionKey: the tenant read, RowKey: a ULID, so a tenant's trail reads in time order) with
the key id, the route template, the resource ids in the path and the time. Never the key,
never a query string (it may carry an address).

The write must not be lost and must not double the read's latency, so it is started when
the caller is known (``note_support_read``, from the auth dependencies) and runs on a small
thread pool *while* the route reads; ``SupportAuditMiddleware`` holds the response's first
byte until the record is stored. A record that cannot be written turns the answer into a 503:
a support read is never answered without its audit row.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from fastapi import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import RETRY_AFTER_SECONDS, error_response, route_name
from core.clock import iso, utcnow
from core.ids import new_id
from core.models import SupportAuditEntry
from core.storage import SUPPORT_AUDIT, Entity, Storage

log = logging.getLogger("mailroom.api.audit")

PENDING = "mailroom.support_audit"
AUDIT_THREADS = 4
# Path parameters that are not ids of ours and may be personal data: never recorded.
_UNRECORDED_PARAMS = frozenset({"email", "token"})
_EXECUTOR = ThreadPoolExecutor(max_workers=AUDIT_THREADS, thread_name_prefix="support-audit")


def audit_entity(key_id: str, tenant_id: str, method: str, resource: str, ids: Mapping[str, str]) -> Entity:
    """One audit row; ``tenant_id`` is ``*`` for an operator-wide listing of tenants."""
    return SupportAuditEntry(
        tenant_id, new_id(), key_id=key_id, method=method, resource=resource,
        resource_ids=json.dumps(dict(ids), separators=(",", ":"), sort_keys=True), at=iso(utcnow()),
    ).to_entity()


def note_support_read(request: Request, storage: Storage, key_id: str, tenant_id: str) -> None:
    """Start writing the audit row of this support read; the middleware waits for it."""
    ids = {k: str(v) for k, v in request.path_params.items() if k not in _UNRECORDED_PARAMS}
    entity = audit_entity(key_id, tenant_id, request.method, route_name(request.scope), ids)
    future = _EXECUTOR.submit(storage.table(SUPPORT_AUDIT).insert, entity)
    request.scope.setdefault("state", {}).setdefault(PENDING, []).append(future)


async def _all_written(futures: list[Future[Any]]) -> bool:
    ok = True
    for future in futures:
        try:
            await asyncio.wrap_future(future)
        except Exception as err:  # storage down: the read must not be answered
            log.warning("support audit write failed error=%s", type(err).__name__)
            ok = False
    return ok


class SupportAuditMiddleware:
    """Holds every response until the audit rows its request started are stored (or 503s)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        refused = False

        async def guarded_send(message: Message) -> None:
            nonlocal refused
            if refused:
                return  # the route's own answer is replaced by the 503 below
            if message["type"] == "http.response.start":
                pending = state.pop(PENDING, None)
                if pending and not await _all_written(pending):
                    refused = True
                    response = error_response(
                        503, "storage_unavailable", "the audit trail is unavailable; retry shortly",
                        headers={"Retry-After": RETRY_AFTER_SECONDS},
                    )
                    await response(scope, receive, send)
                    return
            await send(message)

        await self.app(scope, receive, guarded_send)
