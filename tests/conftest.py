"""Shared fixtures: one real Azurite per test session, an isolated namespace per test."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator

import pytest

from core.settings import Settings, load_settings
from core.storage import Storage

ADMIN_KEY = "test-admin-key-0123456789"

# Specs size their tasks with TASK_SIZE whatever the send mode: batched jobs' larger tasks
# (BATCHED_TASK_SIZE) are specified on their own (tests/integration/test_managers.py) and the bench
# runs with them. Set here, in the environment, so in-process settings and every host a test starts
# (devhost reads app settings from the environment) agree.
os.environ.setdefault("BATCHED_TASK_SIZE", "0")


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
