"""Provider health: a sliding-window circuit breaker that every host shares.

One row per provider in ``ProviderHealth`` (PartitionKey the provider, RowKey ``health``)
holds what a person reads in the portal: ``state`` (``closed`` / ``open`` / ``half-open``),
``until`` (when an open breaker may be probed), the window as per-bucket counts
(``window``: ``{bucket start: [ok, failed]}``), the probe's owner and deadline, and the
last probe's time and result (``last_probe_at``, ``last_probe``: ``ok`` / ``failed``).

Why it holds across hosts without a write per email: each host counts outcomes locally
and merges them into the row every ``sync_seconds`` with an ETag-guarded update (a lost
race re-reads and merges again, so no count is lost or counted twice). The host that
merges the counts that cross the threshold opens the breaker; the others see it on their
next read, at most ``sync_seconds`` later.

Exactly one probe: after the cool-down, a host that wants to send moves the row from
``open`` to ``half-open`` naming itself as ``probe_owner``, again under ``If-Match``. Only
one such write can win, and the winner sends exactly one message. Its outcome closes the
breaker (window cleared) or re-opens it for another cool-down. A probe owner that dies is
replaced once ``probe_until`` passes.

An operator resets a provider by deleting its row. A host that finds the row gone after
having read it drops the counts it has not merged yet: they belong to the window the
operator threw away, and merging them into the new row could re-open the breaker at once.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum

from core.clock import iso, utcnow
from core.errors import AlreadyExists, Conflict, NotFound, StorageError
from core.models import ProviderHealthRow
from core.storage import PROVIDER_HEALTH, Entity, Storage, etag_of

log = logging.getLogger("mailroom.health")


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


@dataclass(frozen=True)
class BreakerConfig:
    window_seconds: float = 60.0
    failure_ratio: float = 0.5
    min_requests: int = 10
    cooldown_seconds: float = 30.0
    sync_seconds: float = 2.0
    probe_timeout_seconds: float = 30.0
    buckets: int = 6  # the window slides in steps of window_seconds / buckets


@dataclass(frozen=True)
class Permit:
    """Leave to send one message through a provider; ``probe``: it decides the breaker."""

    provider: str
    probe: bool = False


@dataclass
class _View:
    """What this host knows of one provider: the row as last read, plus unsynced counts."""

    state: str = BreakerState.CLOSED.value
    until: float = 0.0
    probe_owner: str = ""
    probe_until: float = 0.0
    window: dict[str, list[int]] = field(default_factory=dict)
    last_probe_at: str = ""
    last_probe: str = ""
    etag: str = ""
    exists: bool = False
    read_at: float = float("-inf")
    unsynced: dict[str, list[int]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    syncing: threading.Lock = field(default_factory=threading.Lock)


class HealthBoard:
    """This host's window onto ``ProviderHealth``; thread-safe, one per host process."""

    def __init__(
        self,
        storage: Storage,
        config: BreakerConfig,
        owner: str = "",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.storage = storage
        self.config = config
        self.owner = owner or f"host-{secrets.token_hex(4)}"
        self.clock = clock
        self._views: dict[str, _View] = {}
        self._lock = threading.Lock()

    # -- asking ---------------------------------------------------------------------------
    def permit(self, provider: str) -> Permit | None:
        """A permit to send through ``provider`` now, or ``None`` while its breaker is open."""
        view = self._view(provider)
        now = self.clock()
        if now - view.read_at >= self.config.sync_seconds:
            self.sync(provider, wait=True)
        if view.state == BreakerState.CLOSED:
            return Permit(provider)
        if view.state == BreakerState.OPEN and now < view.until:
            return None
        if view.state == BreakerState.HALF_OPEN and now < view.probe_until:
            return None
        if self._claim_probe(provider):
            return Permit(provider, probe=True)
        # The claim re-read the row: closed by another host (or an operator) means send.
        return Permit(provider) if view.state == BreakerState.CLOSED else None

    def state(self, provider: str) -> BreakerState:
        """The breaker's state as this host last saw it."""
        return BreakerState(self._view(provider).state)

    def reopens_in(self, provider: str) -> float:
        """Seconds until an open breaker may be probed (0 when it may be now)."""
        view = self._view(provider)
        return max(0.0, max(view.until, view.probe_until) - self.clock())

    # -- telling --------------------------------------------------------------------------
    def record(self, permit: Permit, ok: bool) -> None:
        """The outcome of a send made under ``permit``. A probe decides at once."""
        if permit.probe:
            self._decide_probe(permit.provider, ok)
            return
        view = self._view(permit.provider)
        bucket = self._bucket(self.clock())
        with view.lock:
            counts = view.unsynced.setdefault(bucket, [0, 0])
            counts[0 if ok else 1] += 1
        if self.clock() - view.read_at >= self.config.sync_seconds:
            self.sync(permit.provider)

    # -- the shared row -------------------------------------------------------------------
    def sync(self, provider: str, wait: bool = False) -> None:
        """Merge this host's counts into the row, open the breaker if due, refresh the view.

        While another thread is syncing the same provider, return at once (its sync carries
        our counts too) or, with ``wait`` (a thread about to decide on a stale view), wait
        for it and use what it read rather than a view that may be minutes old.
        """
        view = self._view(provider)
        if not view.syncing.acquire(blocking=False):
            if not wait:
                return
            view.syncing.acquire()
            if self.clock() - view.read_at < self.config.sync_seconds:
                view.syncing.release()
                return  # the other thread's read is fresh: decide on it
        try:
            for _ in range(5):
                with view.lock:
                    pending = {k: list(v) for k, v in view.unsynced.items()}
                try:
                    if self._read(provider, view):
                        with view.lock:
                            view.unsynced.clear()
                        pending = {}
                    if not pending:
                        return
                    self._merge_and_write(provider, view, pending)
                except Conflict:
                    continue
                with view.lock:
                    for key, (ok, failed) in pending.items():
                        left = view.unsynced.get(key)
                        if left is not None:
                            left[0] -= ok
                            left[1] -= failed
                            if left == [0, 0]:
                                del view.unsynced[key]
                return
        except StorageError:
            log.warning("provider health sync failed provider=%s", provider)
        finally:
            view.syncing.release()

    def _merge_and_write(self, provider: str, view: _View, pending: dict[str, list[int]]) -> None:
        now = self.clock()
        window = {k: list(v) for k, v in view.window.items()}
        for key, (ok, failed) in pending.items():
            counts = window.setdefault(key, [0, 0])
            counts[0] += ok
            counts[1] += failed
        oldest = self._bucket(now - self.config.window_seconds)
        window = {k: v for k, v in window.items() if k >= oldest}
        state, until = view.state, view.until
        ok_total = sum(v[0] for v in window.values())
        failed_total = sum(v[1] for v in window.values())
        total = ok_total + failed_total
        if (
            state == BreakerState.CLOSED
            and total >= self.config.min_requests
            and failed_total / total >= self.config.failure_ratio
        ):
            state, until = BreakerState.OPEN.value, now + self.config.cooldown_seconds
            log.warning("provider breaker opened provider=%s failed=%d total=%d",
                        provider, failed_total, total)
        entity = self._entity(provider, state, until, window, view.probe_owner, view.probe_until, view)
        self._write(view, entity)
        view.state, view.until, view.window = state, until, window

    def _claim_probe(self, provider: str) -> bool:
        view = self._view(provider)
        now = self.clock()
        with view.lock:
            try:
                if self._read(provider, view):
                    view.unsynced.clear()  # the row was reset (we hold view.lock)
                if view.state == BreakerState.CLOSED:
                    return False  # someone closed it meanwhile; the next permit is plain
                if view.state == BreakerState.OPEN and now < view.until:
                    return False
                if view.state == BreakerState.HALF_OPEN and now < view.probe_until:
                    return False
                until = now + self.config.probe_timeout_seconds
                entity = self._entity(
                    provider, BreakerState.HALF_OPEN, view.until, view.window, self.owner, until, view
                )
                self._write(view, entity)
            except (Conflict, StorageError):
                return False
            view.state, view.probe_owner, view.probe_until = BreakerState.HALF_OPEN.value, self.owner, until
        log.info("provider probe claimed provider=%s", provider)
        return True

    def _decide_probe(self, provider: str, ok: bool) -> None:
        view = self._view(provider)
        now = self.clock()
        for _ in range(5):
            try:
                if self._read(provider, view):
                    with view.lock:
                        view.unsynced.clear()
                if view.state != BreakerState.HALF_OPEN or view.probe_owner != self.owner:
                    return  # our probe timed out and another host owns the decision now
                probed = (iso(utcnow()), "ok" if ok else "failed")
                if ok:
                    entity = self._entity(provider, BreakerState.CLOSED, 0.0, {}, "", 0.0, view, probed)
                else:
                    entity = self._entity(provider, BreakerState.OPEN, now + self.config.cooldown_seconds,
                                          view.window, "", 0.0, view, probed)
                self._write(view, entity)
            except Conflict:
                continue
            except StorageError:
                log.warning("provider probe result not saved provider=%s", provider)
                return
            with view.lock:
                view.unsynced.clear()  # counts from before the decision belong to the old window
                view.state, view.until = entity["state"], entity["until_epoch"]
                view.window = {} if ok else view.window
                view.probe_owner, view.probe_until = "", 0.0
                view.last_probe_at, view.last_probe = probed
            log.info("provider probe decided provider=%s ok=%s", provider, ok)
            return

    def _read(self, provider: str, view: _View) -> bool:
        """Refresh ``view`` from the row; True when the row was deleted since the last read."""
        try:
            entity = self.storage.table(PROVIDER_HEALTH).get(*ProviderHealthRow.key(provider))
        except NotFound:
            vanished = view.exists
            view.exists, view.etag, view.read_at = False, "", self.clock()
            view.state, view.until, view.window = BreakerState.CLOSED.value, 0.0, {}
            view.probe_owner, view.probe_until = "", 0.0
            view.last_probe_at, view.last_probe = "", ""
            if vanished:
                log.info("provider health row reset provider=%s; unsynced counts dropped", provider)
            return vanished
        view.exists, view.etag, view.read_at = True, etag_of(entity), self.clock()
        view.state = entity.get("state", BreakerState.CLOSED.value)
        view.until = float(entity.get("until_epoch", 0.0) or 0.0)
        view.window = json.loads(entity.get("window") or "{}")
        view.probe_owner = entity.get("probe_owner", "")
        view.probe_until = float(entity.get("probe_until_epoch", 0.0) or 0.0)
        view.last_probe_at, view.last_probe = entity.get("last_probe_at", ""), entity.get("last_probe", "")
        return False

    def _write(self, view: _View, entity: Entity) -> None:
        table = self.storage.table(PROVIDER_HEALTH)
        if view.exists:
            view.etag = table.update(entity, etag=view.etag, replace=True)
        else:
            try:
                view.etag = table.insert(entity)
            except AlreadyExists as err:
                raise Conflict("another host created the health row first") from err
            view.exists = True

    def _entity(
        self, provider: str, state: str, until: float, window: dict[str, list[int]], probe_owner: str,
        probe_until: float, view: _View, probed: tuple[str, str] | None = None,
    ) -> Entity:
        """The row as people read it: ISO times next to the epoch seconds the code compares.

        Rows are replaced whole, so the last probe's time and result are carried over from
        ``view`` unless this write records a new probe (``probed``).
        """
        last_probe_at, last_probe = probed or (view.last_probe_at, view.last_probe)
        return ProviderHealthRow(
            provider, state=str(state), until=_iso_epoch(until), until_epoch=float(until),
            window=json.dumps(window, separators=(",", ":"), sort_keys=True), probe_owner=probe_owner,
            probe_until=_iso_epoch(probe_until), probe_until_epoch=float(probe_until),
            last_probe_at=last_probe_at, last_probe=last_probe, updated_at=iso(utcnow()),
        ).to_entity()

    def _bucket(self, moment: float) -> str:
        return _bucket_of(self.config, moment)

    def _view(self, provider: str) -> _View:
        with self._lock:
            view = self._views.get(provider)
            if view is None:
                view = self._views[provider] = _View()
            return view


def _bucket_of(config: BreakerConfig, moment: float) -> str:
    """The window bucket ``moment`` falls in: its start, zero-padded so keys sort by time."""
    step = config.window_seconds / config.buckets
    return f"{int(moment // step * step):012d}"


def _iso_epoch(value: float) -> str:
    if not value:
        return ""
    return iso(datetime.fromtimestamp(value, UTC))


@dataclass(frozen=True)
class BreakerSnapshot:
    """One provider's breaker as the operator sees it (``GET /operator/providers``)."""

    provider: str
    state: str
    until: str
    window_ok: int
    window_failed: int
    probe_owner: str
    probe_until: str
    last_probe_at: str
    last_probe: str
    updated_at: str


def read_breakers(
    storage: Storage, config: BreakerConfig, providers: list[str], now: float
) -> list[BreakerSnapshot]:
    """Every provider's breaker: ``providers`` (the deployment's, closed when they have no row
    yet) plus any other provider with a row. Counts are those inside the window at ``now``."""
    oldest = _bucket_of(config, now - config.window_seconds)
    _, row_key = ProviderHealthRow.key("")  # every provider's row has the same RowKey
    found = storage.table(PROVIDER_HEALTH).query("RowKey eq @r", {"r": row_key})
    rows = {row["PartitionKey"]: row for row in found}
    snapshots = []
    for name in [*providers, *sorted(set(rows) - set(providers))]:
        row = rows.get(name, {})
        window = json.loads(row.get("window") or "{}")
        recent = [counts for bucket, counts in window.items() if bucket >= oldest]
        snapshots.append(BreakerSnapshot(
            provider=name, state=row.get("state", BreakerState.CLOSED.value), until=row.get("until", ""),
            window_ok=sum(c[0] for c in recent), window_failed=sum(c[1] for c in recent),
            probe_owner=row.get("probe_owner", ""), probe_until=row.get("probe_until", ""),
            last_probe_at=row.get("last_probe_at", ""), last_probe=row.get("last_probe", ""),
            updated_at=row.get("updated_at", ""),
        ))
    return snapshots
