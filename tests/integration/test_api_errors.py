"""Every error leaves in one shape, with field paths, and never leaks a traceback or an address."""

from __future__ import annotations

import logging
import secrets

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from core.errors import StorageError
from core.settings import devstore_connection_string
from core.storage import Storage
from tests.integration.conftest import bearer, random_email

V1 = "/api/v1"


def assert_error_shape(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == code and body["error"]["message"]
    return body["error"]


class DownStorage(Storage):
    """A Storage whose every call fails the way an unreachable account does."""

    def ensure_resources(self) -> None:
        raise StorageError("storage request failed: ServiceRequestError")

    def ping(self) -> None:
        raise StorageError("storage request failed: ServiceRequestError")


class BrokenStorage(Storage):
    """A Storage with a bug: it raises something no handler expects, quoting an address."""

    def table(self, name: str):
        raise RuntimeError("boom for leaked.person@example.com")


def test_unknown_route_is_404_in_the_error_shape(client):
    assert_error_shape(client.get(f"{V1}/no-such-thing"), 404, "not_found")


def test_wrong_method_is_405_in_the_error_shape(client, tenant):
    assert_error_shape(client.put(f"{V1}/contacts", headers=tenant.headers), 405, "method_not_allowed")


def test_malformed_json_is_400(client, tenant):
    response = client.post(f"{V1}/campaigns", content=b'{"name": "x",',
                           headers=tenant.headers | {"Content-Type": "application/json"})
    assert_error_shape(response, 400, "malformed_json")


def test_malformed_json_contact_import_is_400(client, tenant):
    response = client.post(f"{V1}/contacts", content=b"[{",
                           headers=tenant.headers | {"Content-Type": "application/json"})
    assert_error_shape(response, 400, "malformed_json")


def test_bad_template_names_the_template_field(client, tenant, campaign_body, template):
    body = campaign_body(template=template | {"subject": "{% if %}"})
    error = assert_error_shape(client.post(f"{V1}/campaigns", json=body, headers=tenant.headers),
                               422, "invalid_fields")
    assert [d["field"] for d in error["details"]] == ["template.subject"]


def test_missing_template_part_names_its_path(client, tenant, campaign_body, template):
    body = campaign_body(template={k: v for k, v in template.items() if k != "from_email"})
    error = assert_error_shape(client.post(f"{V1}/campaigns", json=body, headers=tenant.headers),
                               422, "invalid_fields")
    assert [d["field"] for d in error["details"]] == ["template.from_email"]


def test_bad_criteria_names_the_criteria_path(client, tenant, campaign_body):
    body = campaign_body(criteria={"all": [{"field": "name", "op": "resembles", "value": "x"}]})
    error = assert_error_shape(client.post(f"{V1}/campaigns", json=body, headers=tenant.headers),
                               422, "invalid_fields")
    assert [d["field"] for d in error["details"]] == ["criteria.all.0.op"]


@pytest.mark.parametrize("limit", [0, 1001, "many"])
def test_bad_limit_names_the_limit_field(client, tenant, limit):
    response = client.get(f"{V1}/campaigns", params={"limit": limit}, headers=tenant.headers)
    error = assert_error_shape(response, 422, "invalid_fields")
    assert [d["field"] for d in error["details"]] == ["limit"]


def test_forged_continuation_names_the_continuation_field(client, tenant):
    response = client.get(f"{V1}/campaigns", params={"continuation": "!!not-a-token"}, headers=tenant.headers)
    error = assert_error_shape(response, 400, "bad_request")
    assert [d["field"] for d in error["details"]] == ["continuation"]


def test_a_value_storage_refuses_as_too_large_is_413_naming_it_not_503(client, tenant, campaign_body):
    criteria = {"field": "attributes.note", "op": "eq", "value": "n" * 40_000}  # over a 64 KiB column
    response = client.post(f"{V1}/campaigns", json=campaign_body(criteria=criteria), headers=tenant.headers)
    error = assert_error_shape(response, 413, "too_large")
    assert [d["field"] for d in error["details"]] == ["criteria"]
    assert "Retry-After" not in response.headers


def test_oversized_body_is_413_before_it_is_read(settings, storage, tenant):
    small = settings.model_copy(update={"max_request_bytes": 1024})
    with TestClient(create_app(small, storage)) as client:
        response = client.post(f"{V1}/contacts", content=b"[" + b" " * 4096 + b"]",
                               headers=tenant.headers | {"Content-Type": "application/json"})
    assert_error_shape(response, 413, "too_large")


def test_oversized_streamed_body_is_413(settings, storage, tenant):
    small = settings.model_copy(update={"max_request_bytes": 1024})

    def chunks():
        for _ in range(8):
            yield b" " * 512

    with TestClient(create_app(small, storage)) as client:
        response = client.post(f"{V1}/campaigns", content=chunks(),
                               headers=tenant.headers | {"Content-Type": "application/json"})
    assert_error_shape(response, 413, "too_large")


def test_another_tenants_campaign_is_404(client, tenant, new_tenant, campaign_body):
    other = new_tenant()
    theirs = client.post(f"{V1}/campaigns", json=campaign_body(), headers=other.headers).json()["id"]
    assert_error_shape(client.get(f"{V1}/campaigns/{theirs}", headers=tenant.headers), 404, "not_found")
    response = client.patch(f"{V1}/campaigns/{theirs}", json={"name": "x"}, headers=tenant.headers)
    assert_error_shape(response, 404, "not_found")


def test_support_key_write_is_403(client, support, campaign_body):
    response = client.post(f"{V1}/campaigns", json=campaign_body(), headers=support)
    assert_error_shape(response, 403, "forbidden")


def test_support_key_write_is_403_before_state_is_looked_at(client, support):
    response = client.patch(f"{V1}/campaigns/{secrets.token_hex(8)}", json={"name": "x"}, headers=support)
    assert_error_shape(response, 403, "forbidden")


def test_support_key_reads(client, support, tenant):
    assert client.get(f"{V1}/campaigns", headers=support).status_code == 200


def test_missing_key_is_401(client):
    assert_error_shape(client.get(f"{V1}/campaigns"), 401, "unauthorized")


def test_unknown_key_is_401(client):
    response = client.get(f"{V1}/campaigns", headers=bearer(f"mr_{secrets.token_hex(16)}"))
    assert_error_shape(response, 401, "unauthorized")


def test_storage_outage_is_503_with_retry_after(settings):
    down = DownStorage(settings.connection_string, namespace="t" + secrets.token_hex(5))
    with TestClient(create_app(settings, down)) as client:
        headers = bearer(settings.admin_key) | {"X-Mailroom-Tenant": "x"}
        response = client.get(f"{V1}/campaigns", headers=headers)
    assert_error_shape(response, 503, "storage_unavailable")
    assert response.headers["Retry-After"] == "5"


def test_unexpected_error_is_a_generic_500_without_traceback_or_address(settings, caplog):
    broken = BrokenStorage(settings.connection_string, namespace="t" + secrets.token_hex(5))
    with TestClient(create_app(settings, broken)) as client, caplog.at_level(logging.INFO):
        response = client.get(f"{V1}/suppressions", headers=bearer(f"mr_{secrets.token_hex(8)}"))
    assert_error_shape(response, 500, "internal_error")
    assert "Traceback" not in response.text and "example.com" not in response.text
    assert "example.com" not in caplog.text and "RuntimeError" in caplog.text


def test_addresses_in_paths_are_not_logged(client, tenant, caplog):
    email = random_email()
    with caplog.at_level(logging.DEBUG, logger="mailroom"):
        client.delete(f"{V1}/suppressions/{email}", headers=tenant.headers)
    assert email not in caplog.text


def test_health_reports_queue_depths(client):
    body = client.get(f"{V1}/health").json()
    assert (body["status"], body["storage"]) == ("ok", "ok")
    assert set(body["queues"]) == {"job-queue", "task-queue", "events-queue", "job-queue-poison",
                                   "task-queue-poison", "events-queue-poison"}


def test_health_is_503_when_storage_is_unreachable(settings):
    unreachable = Storage(devstore_connection_string(blob=9, queue=9, table=9))
    with TestClient(create_app(settings, unreachable)) as client:
        response = client.get(f"{V1}/health")
    assert response.status_code == 503
    assert (response.json()["status"], response.json()["storage"]) == ("degraded", "down")
    assert "Retry-After" in response.headers


def test_openapi_document_is_served_under_api(client):
    document = client.get("/api/openapi.json").json()
    assert "/api/v1/campaigns" in document["paths"]
    assert client.get("/api/docs").status_code == 200
