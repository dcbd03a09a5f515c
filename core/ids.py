"""Identifiers. ULIDs sort by creation time, which keeps tables readable in order."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import datetime

from ulid import ULID


def new_id() -> str:
    """A fresh ULID."""
    return str(ULID())


def job_id_for(campaign_id: str, send_at: datetime) -> str:
    """The job id of one run of a campaign, the same on every host.

    Deterministic so overlapping Campaign Manager runs (or two hosts) create the job
    once: the second insert meets the first. It is a valid ULID whose time part is the
    run's ``send_at``.
    """
    digest = hashlib.sha256(f"{campaign_id}|{send_at.isoformat()}".encode()).digest()
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


def normalize_email(raw: str) -> str:
    """Trimmed and lower-cased: the form we compare, store and key by."""
    return raw.strip().lower()
