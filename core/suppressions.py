"""Suppressions: addresses that must never be sent to (DESIGN §4, invariant 4).

Rows live in ``Suppressions`` (PartitionKey tenant, RowKey sha256 of the normalized
email). Removing a suppression marks the row inactive instead of deleting it, so a host's
cached copy can follow changes with one incremental query per task (``updated_at`` since
its last look) instead of one lookup per recipient.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import timedelta

from core.clock import Clock, iso, utcnow
from core.ids import email_hash, normalize_email
from core.models import Suppression
from core.storage import SUPPRESSIONS, Entity, Storage

# How far back each incremental look reaches, to absorb clock skew between hosts.
_SKEW = timedelta(seconds=30)


def suppression_entity(
    tenant_id: str, email: str, reason: str, source: str, at: str, campaign_id: str = "", active: bool = True
) -> Entity:
    normalized = normalize_email(email)
    return Suppression(
        *Suppression.key(tenant_id, normalized), email=normalized, reason=reason, source=source,
        campaign_id=campaign_id, active=active, at=at, updated_at=at,
    ).to_entity()


def add_suppression(
    storage: Storage,
    tenant_id: str,
    email: str,
    reason: str = "manual",
    source: str = "api",
    campaign_id: str = "",
    clock: Clock = utcnow,
) -> Entity:
    entity = suppression_entity(tenant_id, email, reason, source, iso(clock()), campaign_id)
    storage.table(SUPPRESSIONS).upsert(entity, replace=True)
    return entity


def remove_suppression(storage: Storage, tenant_id: str, email: str, clock: Clock = utcnow) -> bool:
    """Deactivate a suppression; ``False`` when there was none active."""
    table = storage.table(SUPPRESSIONS)
    row = table.find(*Suppression.key(tenant_id, email))
    if row is None or not row.get("active", True):
        return False
    table.update(Suppression.changes(row, active=False, updated_at=iso(clock())))
    return True


def active_suppression_reasons(storage: Storage, tenant_id: str) -> dict[str, str]:
    """The tenant's active suppressions as ``{sha256 of the address: reason}`` (one query).

    The audience estimate counts suppressed recipients by reason with the same key the Task
    Manager checks (``email_hash`` of the normalized address).
    """
    rows = storage.table(SUPPRESSIONS).query("PartitionKey eq @t", {"t": tenant_id},
                                             select=["RowKey", "active", "reason"])
    return {row["RowKey"]: row.get("reason") or "manual" for row in rows if row.get("active", True)}


@dataclass
class _TenantSet:
    hashes: set[str] = field(default_factory=set)
    synced_at: str = ""


class SuppressionCache:
    """A host's copy of each tenant's active suppressions, refreshed incrementally."""

    def __init__(self, storage: Storage, clock: Clock = utcnow) -> None:
        self._storage = storage
        self._clock = clock
        self._tenants: dict[str, _TenantSet] = {}
        self._lock = threading.Lock()

    def refresh(self, tenant_id: str) -> set[str]:
        """Bring the tenant's set up to date (one query) and return it."""
        with self._lock:
            current = self._tenants.setdefault(tenant_id, _TenantSet())
            started = self._clock()
            query = "PartitionKey eq @t"
            params = {"t": tenant_id}
            if current.synced_at:
                query += " and updated_at ge @since"
                params["since"] = current.synced_at
            for row in self._storage.table(SUPPRESSIONS).query(query, params, select=["RowKey", "active"]):
                if row.get("active", True):
                    current.hashes.add(row["RowKey"])
                else:
                    current.hashes.discard(row["RowKey"])
            current.synced_at = iso(started - _SKEW)
            return current.hashes

    def suppressed(self, tenant_id: str, emails: list[str]) -> set[str]:
        """Which of ``emails`` (normalized) are suppressed right now."""
        active = self.refresh(tenant_id)
        return {email for email in emails if email_hash(email) in active}
