"""A bounded schemathesis run against the app's own OpenAPI document (issue 6, item 8).

The app runs in process on real Azurite. Every operation the document lists gets generated
requests, once with a tenant key and once with no key; each response must not be a 5xx and
must match what the document promises (status code, content type, headers, body schema).
The run is bounded by examples per operation, so it takes tens of seconds, not minutes.
"""

from __future__ import annotations

import secrets
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api.app import create_app
from core.settings import load_settings
from core.storage import Storage
from tests.conftest import ADMIN_KEY

EXAMPLES_PER_OPERATION = 25
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def fuzzed_app(azurite: Any) -> Iterator[Any]:
    """One app on its own namespace, with a tenant that owns a few real resources."""
    config = load_settings(
        AzureWebJobsStorage=azurite.connection_string, MAILROOM_ADMIN_KEY=ADMIN_KEY,
        MAILROOM_SIGNING_KEY="fuzz-signing-key", API_RATE_LIMIT_PER_MINUTE=1_000_000,
    )
    storage = Storage(config.connection_string, namespace="fz" + secrets.token_hex(4))
    storage.ensure_resources()
    app = create_app(config, storage)
    with TestClient(app) as client:
        admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
        tenant = client.post("/api/v1/tenants", json={"name": "fuzzed"}, headers=admin).json()
        key = client.post(f"/api/v1/tenants/{tenant['id']}/keys", json={"role": "tenant"}, headers=admin)
        app.state.fuzz_key = key.json()["key"]
        headers = {"Authorization": f"Bearer {app.state.fuzz_key}"}
        client.post("/api/v1/contacts", json=[{"email": "fuzz@example.com", "name": "Fuzz"}], headers=headers)
    yield app


def _fuzz_every_operation(app: Any, headers: dict[str, str], statuses: Counter[int]) -> list[str]:
    """Run each operation's examples; return one line per operation that failed a check."""
    schema = schemathesis.openapi.from_asgi("/api/openapi.json", app)
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None,
            phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck),
        )
        def run(case: Any) -> None:
            response = case.call_and_validate(headers=headers, checks=CHECKS)
            statuses[response.status_code] += 1

        try:
            run()
        except Exception as err:  # collect every operation's failure, then report them all
            failures.append(f"{operation.label}: {type(err).__name__}: {str(err)[:600]}")
    return failures


def test_fuzzing_with_a_tenant_key_finds_no_5xx_and_no_schema_violations(fuzzed_app):
    statuses: Counter[int] = Counter()
    headers = {"Authorization": f"Bearer {fuzzed_app.state.fuzz_key}"}
    failures = _fuzz_every_operation(fuzzed_app, headers, statuses)
    assert not failures, "\n\n".join(failures)
    assert sum(n for code, n in statuses.items() if code < 300) > 0, statuses  # the key really worked


def test_fuzzing_without_a_key_finds_no_5xx_and_no_schema_violations(fuzzed_app):
    statuses: Counter[int] = Counter()
    failures = _fuzz_every_operation(fuzzed_app, {}, statuses)
    assert not failures, "\n\n".join(failures)
    assert statuses[401] > 0, statuses
