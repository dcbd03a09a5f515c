"""Identifiers. ULIDs sort by creation time, which keeps tables readable in order."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from datetime import datetime

from ulid import ULID


def new_id() -> str:
    """A fresh ULID."""
    return str(ULID())


def job_id_for(campaign_id: str, send_at: datetime, dry_run: bool = False) -> str:
    """The job id of one run of a campaign, the same on every host.

    Deterministic so overlapping Campaign Manager runs (or two hosts) create the job
    once: the second insert meets the first. It is a valid ULID whose time part is the
    run's ``send_at``. A dry run has its own id, so a real run at the same ``send_at`` never
    meets the dry run's job (and its counts) instead of making its own.
    """
    name = f"{campaign_id}|{send_at.isoformat()}" + ("|dry-run" if dry_run else "")
    digest = hashlib.sha256(name.encode()).digest()
    return str(ULID.from_bytes(int(send_at.timestamp() * 1000).to_bytes(6, "big") + digest[:10]))


def task_id(index: int) -> str:
    """Task RowKeys are zero-padded so they sort in roster order."""
    return f"{index:06d}"


def contact_salt() -> str:
    """A per-tenant secret that keys contact ids (stored on the tenant)."""
    return secrets.token_hex(16)


def contact_id_for(salt: str, normalized_email: str) -> str:
    """A contact's id: keyed hash of its normalized email.

    Deterministic so an import upserts by email without an index lookup; keyed with the
    tenant's secret so an id in a log cannot be matched back to an address by guessing.
    """
    digest = hmac.new(salt.encode(), normalized_email.encode(), hashlib.sha256).hexdigest()
    return "c" + digest[:25]


def email_hash(normalized_email: str) -> str:
    """Suppressions are keyed by the sha256 of the normalized email (DESIGN §3)."""
    return hashlib.sha256(normalized_email.encode()).hexdigest()


_SENDABLE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def is_sendable_address(email: str) -> bool:
    """Whether the Task Manager hands this address to a provider at all (else ``skipped``).

    Loose on purpose (the provider's own check is stricter and its 400 lands on the one
    recipient); the audience estimate counts ``invalid`` with this same test.
    """
    return bool(_SENDABLE.match(email))


def normalize_email(raw: str) -> str:
    """Trimmed and lower-cased: the form we compare, store and key by."""
    return raw.strip().lower()
