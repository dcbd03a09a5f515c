"""API fixtures: an app on the test's namespaced storage, an admin, and tenants made through the API."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from core.settings import Settings
from core.storage import Storage
from tests.conftest import ADMIN_KEY
from tests.sim_fixtures import running_sendgrid_simulator


@dataclass(frozen=True)
class TenantHandle:
    """A tenant created through the API and its tenant-role key."""

    id: str
    key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def client(settings: Settings, storage: Storage) -> Iterator[TestClient]:
    with TestClient(create_app(settings, storage)) as test_client:
        yield test_client


@pytest.fixture
def admin() -> dict[str, str]:
    return bearer(ADMIN_KEY)


@pytest.fixture
def new_tenant(client: TestClient, admin: dict[str, str]) -> Callable[..., TenantHandle]:
    """Create a tenant and a tenant key through the API (what an operator does)."""

    def make(**fields: Any) -> TenantHandle:
        body = {"name": f"Tenant {secrets.token_hex(4)}", **fields}
        created = client.post("/api/v1/tenants", json=body, headers=admin)
        assert created.status_code == 201, created.text
        tenant_id = created.json()["id"]
        key = client.post(f"/api/v1/tenants/{tenant_id}/keys", json={"role": "tenant"}, headers=admin)
        assert key.status_code == 201, key.text
        return TenantHandle(id=tenant_id, key=key.json()["key"])

    return make


@pytest.fixture
def tenant(new_tenant: Callable[..., TenantHandle]) -> TenantHandle:
    return new_tenant()


@pytest.fixture
def support(client: TestClient, admin: dict[str, str], tenant: TenantHandle) -> dict[str, str]:
    """Headers of a support key made for ``tenant``."""
    made = client.post(f"/api/v1/tenants/{tenant.id}/keys", json={"role": "support"}, headers=admin)
    assert made.status_code == 201, made.text
    return bearer(made.json()["key"])


@pytest.fixture
def template() -> dict[str, str]:
    return {
        "subject": "Hello {{ contact.name }}",
        "html": "<p>Hi {{ contact.name }}, about {{ contact.attributes.course }}</p>"
                "<a href=\"{{ unsubscribe_url }}\">unsubscribe</a>",
        "text": "Hi {{ contact.name }}",
        "from_email": "news@example.org",
        "from_name": "News",
    }


@pytest.fixture
def campaign_body(template: dict[str, str]) -> Callable[..., dict[str, Any]]:
    def make(**overrides: Any) -> dict[str, Any]:
        return {"name": f"Campaign {secrets.token_hex(4)}", "template": dict(template), **overrides}

    return make


def random_email(tag: str = "") -> str:
    return f"{tag or 'p'}-{secrets.token_hex(5)}@example.com"


@pytest.fixture
def simulator() -> Iterator[tuple[object, str, list[dict]]]:
    """The SendGrid simulator with every event it posts recorded: ``(sim, url, records)``.

    A test module that wants the plain simulator overrides this fixture with its own.
    """
    with running_sendgrid_simulator() as (sim, url):
        records: list[dict] = []
        sim.listeners.append(records.extend)
        yield sim, url, records
