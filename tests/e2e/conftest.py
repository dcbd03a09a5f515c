"""End-to-end fixtures: a whole stack (Azurite, SendGrid simulator, host processes) per test."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from devhost.stack import Stack

pytestmark = pytest.mark.e2e

# Small tasks and short leases so a few thousand recipients exercise windows and recovery.
FAST = {
    "TASK_SIZE": "100",
    "TASK_WINDOW": "4",
    "TASK_LEASE_SECONDS": "6",
    "WINDOW_REFILL_AFTER_SECONDS": "10",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture
def stack() -> Iterator[Stack]:
    with Stack(workers=1, settings=FAST) as running:
        yield running


@contextmanager
def stack_with_latency(settings: dict[str, str], latency_ms: int) -> Iterator[Stack]:
    """One host with ``settings``; the simulator answers each send after ``latency_ms``."""
    with Stack(workers=1, settings=settings) as running:
        running.simulator.set_faults({"latency_ms": latency_ms})
        yield running


@dataclass
class TenantClient:
    """A tenant's view of the API through the running host."""

    api: httpx.Client
    tenant_id: str
    headers: dict[str, str]

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.api.request(method, path, headers=self.headers, **kwargs)
        assert response.status_code < 400, f"{method} {path} → {response.status_code} {response.text[:300]}"
        return response.json() if response.content else None

    def wait_job_done(self, campaign_id: str, timeout: float = 240) -> dict[str, Any]:
        """Poll (with a deadline) until the campaign's job is closed."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job_id = self.call("GET", f"/campaigns/{campaign_id}").get("current_job_id")
            if job_id:
                job = self.call("GET", f"/jobs/{job_id}")
                if job["status"] in ("completed", "cancelled", "failed"):
                    return job
            time.sleep(0.5)
        raise AssertionError(f"campaign {campaign_id} did not finish within {timeout}s")


def new_tenant(stack: Stack) -> TenantClient:
    api = httpx.Client(base_url=f"{stack.base_url}/api/v1", timeout=60)
    admin = {"Authorization": f"Bearer {stack.admin_key}"}
    tenant = api.post("/tenants", json={"name": f"tenant {secrets.token_hex(3)}"}, headers=admin).json()
    key = api.post(f"/tenants/{tenant['id']}/keys", json={"role": "tenant"}, headers=admin).json()["key"]
    return TenantClient(api, tenant["id"], {"Authorization": f"Bearer {key}"})


def people(n: int) -> list[dict[str, Any]]:
    tag = secrets.token_hex(3)
    return [
        {
            "email": f"p{i:05d}-{tag}@example.com",
            "name": f"Person {i}",
            "attributes": {"half": "yes" if i % 2 == 0 else "no", "n": i},
        }
        for i in range(n)
    ]


TEMPLATE = {
    "subject": "Hi {{ contact.name }}",
    "text": "Hello {{ contact.name }}",
    "html": "<p>Hello {{ contact.name }}</p>",
    "from_email": "news@example.org",
}
HALF = {"field": "attributes.half", "op": "eq", "value": "yes"}
