"""Shared fixtures: one real Azurite per test session, an isolated namespace per test."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from core.settings import Settings, load_settings
from core.storage import Storage

ADMIN_KEY = "test-admin-key-0123456789"


@pytest.fixture(scope="session")
def azurite() -> Iterator[object]:
    """A real Azurite on free ports, in memory, for the whole session."""
    from devhost.azurite import start_azurite

    handle = start_azurite()
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture
def settings(azurite: object) -> Settings:
    return load_settings(
        AzureWebJobsStorage=azurite.connection_string,  # type: ignore[attr-defined]
        MAILROOM_ADMIN_KEY=ADMIN_KEY,
        MAILROOM_SIGNING_KEY="test-signing-key",
    )


@pytest.fixture
def storage(settings: Settings) -> Storage:
    """Tables and queues of their own for each test (a random namespace)."""
    store = Storage(settings.connection_string, namespace="t" + secrets.token_hex(5))
    store.ensure_resources()
    return store
