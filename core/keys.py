"""API keys: long random secrets, stored only as a sha256 with a short lookup id."""

from __future__ import annotations

import hashlib
import secrets

KEY_PREFIX = "mr_"


def new_api_key() -> tuple[str, str]:
    """A fresh (key id, secret key). The key is shown once; we store its hash."""
    key_id = secrets.token_hex(6)
    return key_id, f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()
