"""Who is calling, and which tenant they act on (API.md "Conventions", DESIGN invariant 5).

``Authorization: Bearer <key>``. The operator's bootstrap key is ``settings.admin_key``;
every other key lives in ``ApiKeys`` under its sha256, never in clear. Lookups are cached
for ``CACHE_SECONDS`` per process so a busy client costs one storage read every two seconds,
not one per request; revoking a key clears this process's cache so it stops here at once
(other hosts follow within the TTL).
"""

from __future__ import annotations

import hmac
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Literal

from fastapi import Depends, Header, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.audit import note_support_read
from api.dependencies import SettingsDep, StorageDep
from api.errors import ApiError, forbidden, invalid, not_found, unauthorized
from api.rate_limit import KeyRateLimiter
from core.keys import hash_key
from core.models import KEY_PARTITION, TENANT_PARTITION, Tenant
from core.storage import API_KEYS, TENANTS, Storage

CACHE_SECONDS = 2.0
MAX_CACHED = 10_000
OPERATOR_WIDE = "*"
ADMIN_KEY_ID = "admin"
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

Role = Literal["admin", "tenant", "support"]


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller. ``tenant_id`` is ``"*"`` for admin and operator-wide keys."""

    role: Role
    tenant_id: str
    key_id: str

    @property
    def operator_wide(self) -> bool:
        return self.tenant_id == OPERATOR_WIDE

    @property
    def can_write(self) -> bool:
        return self.role != "support"


class Directory:
    """Per-process, short-lived cache of key and tenant lookups.

    Negative answers are cached too (a client retrying a bad key costs nothing), and the
    whole cache is dropped when it grows past ``MAX_CACHED`` so junk keys cannot grow it.
    """

    def __init__(self, ttl: float = CACHE_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._keys: dict[str, tuple[float, Principal | None]] = {}
        self._tenants: dict[str, tuple[float, Tenant | None]] = {}

    def principal(self, storage: Storage, key: str) -> Principal | None:
        digest = hash_key(key)
        now = self._clock()
        with self._lock:
            hit = self._keys.get(digest)
        if hit and hit[0] > now:
            return hit[1]
        found = _load_principal(storage, digest)
        with self._lock:
            if len(self._keys) >= MAX_CACHED:
                self._keys.clear()
            self._keys[digest] = (now + self._ttl, found)
        return found

    def tenant(self, storage: Storage, tenant_id: str) -> Tenant | None:
        now = self._clock()
        with self._lock:
            hit = self._tenants.get(tenant_id)
        if hit and hit[0] > now:
            return hit[1]
        entity = storage.table(TENANTS).find(TENANT_PARTITION, tenant_id) if tenant_id else None
        found = Tenant.from_entity(entity) if entity else None
        with self._lock:
            if len(self._tenants) >= MAX_CACHED:
                self._tenants.clear()
            self._tenants[tenant_id] = (now + self._ttl, found)
        return found

    def forget(self) -> None:
        """Drop every cached answer (after a key is revoked or a tenant created)."""
        with self._lock:
            self._keys.clear()
            self._tenants.clear()


def _load_principal(storage: Storage, digest: str) -> Principal | None:
    row = storage.table(API_KEYS).find(KEY_PARTITION, digest)
    if row is None or row.get("revoked"):
        return None
    role = row.get("role")
    if role not in ("tenant", "support"):
        return None
    return Principal(role=role, tenant_id=row.get("tenant_id") or "", key_id=row.get("key_id", ""))


def get_directory(request: Request) -> Directory:
    return request.app.state.directory


_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer <key>`.")


def get_rate_limiter(request: Request) -> KeyRateLimiter:
    limiter = getattr(request.app.state, "rate_limiter", None)
    if limiter is None:  # one per app, sized by its settings
        limiter = request.app.state.rate_limiter = KeyRateLimiter(
            request.app.state.settings.api_rate_limit_per_minute
        )
    return limiter


def rate_limited(retry_after: int) -> ApiError:
    return ApiError(429, "rate_limited", f"too many requests with this key; retry in {retry_after} s",
                    headers={"Retry-After": str(retry_after)})


def current_principal(
    request: Request,
    storage: StorageDep,
    settings: SettingsDep,
    directory: Annotated[Directory, Depends(get_directory)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """The caller, or 401 for a missing, unknown or revoked key, or 429 past the key's rate."""
    if credentials is None:
        raise unauthorized()
    key = credentials.credentials
    admin_key = settings.admin_key
    if admin_key and hmac.compare_digest(key.encode(), admin_key.encode()):
        principal: Principal | None = Principal(role="admin", tenant_id=OPERATOR_WIDE, key_id=ADMIN_KEY_ID)
    else:
        principal = directory.principal(storage, key)
    if principal is None:
        raise unauthorized()
    if wait := get_rate_limiter(request).retry_after(principal.key_id):
        raise rate_limited(wait)
    return principal


PrincipalDep = Annotated[Principal, Depends(current_principal)]


def require_admin(principal: PrincipalDep) -> Principal:
    """Operator-only routes (creating tenants and keys)."""
    if principal.role != "admin":
        raise forbidden("this action needs the operator's key")
    return principal


def require_operator_reader(request: Request, principal: PrincipalDep, storage: StorageDep) -> Principal:
    """Routes the operator and support staff read (tenants); support reads are audited."""
    if principal.role not in ("admin", "support"):
        raise forbidden("this action needs the operator's key or a support key")
    if principal.role == "support":
        tenant_id = request.path_params.get("tenant_id") or principal.tenant_id
        note_support_read(request, storage, principal.key_id, tenant_id)
    return principal


def current_tenant(
    request: Request,
    principal: PrincipalDep,
    storage: StorageDep,
    directory: Annotated[Directory, Depends(get_directory)],
    x_mailroom_tenant: Annotated[
        str | None,
        Header(alias="X-Mailroom-Tenant", description="Tenant to act on (admin and operator-wide keys)."),
    ] = None,
) -> Tenant:
    """The tenant a tenant-scoped request acts on.

    Support keys are refused for anything but reads *here*, before any state is looked at,
    so a support write is always 403 and never a 404 or 409.
    """
    if not principal.can_write and request.method not in READ_METHODS:
        raise forbidden("support keys are read-only")
    if principal.operator_wide:
        if not x_mailroom_tenant:
            raise invalid("X-Mailroom-Tenant", "name the tenant to act on with this header")
        tenant_id = x_mailroom_tenant
    else:
        tenant_id = principal.tenant_id
        if x_mailroom_tenant and x_mailroom_tenant != tenant_id:
            raise not_found("tenant")  # another tenant: indistinguishable from a missing one
    tenant = directory.tenant(storage, tenant_id)
    if tenant is None:
        if not principal.operator_wide:
            raise unauthorized("the key's tenant no longer exists")
        raise not_found("tenant")
    if principal.role == "support":
        note_support_read(request, storage, principal.key_id, tenant.id)
    return tenant


TenantDep = Annotated[Tenant, Depends(current_tenant)]
AdminDep = Annotated[Principal, Depends(require_admin)]
OperatorReaderDep = Annotated[Principal, Depends(require_operator_reader)]
