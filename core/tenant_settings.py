"""Changing a tenant's settings (``PATCH /tenants/{id}``): one read-modify-write of its row.

The row is read, changed in memory and written back with its ETag, so two operators editing
different fields at once both win instead of one silently undoing the other; a lost race is
read again and re-applied. The write replaces the row (a cleared limit must disappear, which
a merge cannot do) but carries over any column this code does not know, so a column another
component adds to the row is never dropped.

Who reads what, and how soon a change shows:
- the API reads the tenant per request through a per-process cache of a few seconds
  (``api.auth.Directory``; this process forgets it at once): ``sender_domains``, ``max_roster``
  at expansion (the Job Manager reads the row fresh);
- the sending hosts' warm-up gate reads ``warmup`` at most ``TENANT_SECONDS`` (30 s) old
  (``providers/warmup.py``);
- the Task Manager reads ``providers``, ``rate_limit_per_minute`` and ``delivery_semantics``
  through its per-host ``JobCache``, at most ``TENANT_CACHE_SECONDS`` (30 s) old, so running
  jobs follow a change within that time.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from core.clock import Clock, iso, utcnow
from core.errors import FieldProblem, InvalidInput, NotFound
from core.models import TENANT_COLUMNS, TENANT_PARTITION, Tenant
from core.storage import TENANTS, Entity, Storage
from core.warmup_schedule import spelled

log = logging.getLogger("mailroom.tenants")

EDITABLE_FIELDS = frozenset({
    "name", "rate_limit_per_minute", "max_roster", "providers", "delivery_semantics", "sender_domains",
    "warmup",
})
_ATTEMPTS = 5


def update_tenant(
    storage: Storage, tenant_id: str, changes: Mapping[str, Any], clock: Clock = utcnow
) -> Tenant:
    """Apply validated ``changes`` (a subset of ``EDITABLE_FIELDS``; ``None`` clears) to the row."""
    unknown = set(changes) - EDITABLE_FIELDS
    if unknown:
        raise ValueError(f"not editable: {sorted(unknown)}")

    def change(entity: Entity | None) -> Entity:
        """Our changes on the row as it is now (read again after someone else changed it)."""
        if entity is None:
            raise NotFound(f"tenant {tenant_id}")
        tenant = apply_changes(Tenant.from_entity(entity), changes)
        tenant.updated_at = iso(clock())
        return {k: v for k, v in entity.items() if k not in TENANT_COLUMNS} | tenant.to_entity()

    written = storage.table(TENANTS).modify(
        TENANT_PARTITION, tenant_id, change, tries=_ATTEMPTS, replace=True
    )
    assert written is not None  # ``change`` always has something to write
    log.info("tenant settings changed tenant=%s fields=%s", tenant_id, ",".join(sorted(changes)))
    return Tenant.from_entity(written)


def apply_changes(tenant: Tenant, changes: Mapping[str, Any]) -> Tenant:
    """The tenant with ``changes`` set; ``None`` (or an empty list) goes back to the default."""
    for name, value in changes.items():
        if name in ("providers", "sender_domains"):
            value = list(value or [])
        elif name == "delivery_semantics":
            value = value or ""
        elif name == "warmup":  # "on", "off" or the daily allowances (validated), stored as "50,100"
            value = spelled(value) if isinstance(value, list) else (value or "")
        setattr(tenant, name, value)
    return tenant


def require_allowed_sender(tenant: Tenant, from_email: str, field: str) -> None:
    """``InvalidInput`` naming ``field`` when the tenant's ``sender_domains`` exclude ``from_email``."""
    if not tenant.allows_sender(from_email):
        allowed = ", ".join(tenant.sender_domains)
        raise InvalidInput("the sender's domain is not one this tenant may send from",
                           [FieldProblem(field, f"the domain must be one of: {allowed}")])
