"""``PATCH /tenants/{id}``: the operator sets a tenant's limits, providers and sender domains."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import pytest

from core.models import TENANT_PARTITION
from core.retry import RetryPolicy
from core.status import JobStatus
from core.storage import JOBS, TENANTS
from devhost.acs_sim import AcsSimulator
from devhost.sendgrid_sim import SendGridSimulator
from devhost.stack import serve_in_thread
from providers.acs import AcsProvider
from providers.failover import FailoverSender
from providers.health import BreakerConfig, HealthBoard
from providers.rate_limits import RateLimiter
from providers.sendgrid import SendGridProvider
from task_manager import Dispatcher, JobCache
from tests.pipeline import InProcessHost

V1 = "/api/v1"


def patch(client, tenant_id: str, body: dict[str, Any], headers: dict[str, str]):
    return client.patch(f"{V1}/tenants/{tenant_id}", json=body, headers=headers)


def fields(answer) -> list[str]:
    return [d["field"] for d in answer.json()["error"]["details"]]


@pytest.mark.parametrize(("field", "value"), [
    ("name", "Renamed Uni"),
    ("rate_limit_per_minute", 600),
    ("max_roster", 1000),
    ("providers", ["acs", "sendgrid"]),
    ("delivery_semantics", "at-least-once"),
    ("delivery_semantics", "reconcile"),
    ("sender_domains", ["uni.example", "mail.uni.example"]),
    ("warmup", [50, 100, 250]),
    ("warmup", "off"),
    ("warmup", "on"),
])
def test_patch_sets_a_field_that_get_then_shows(client, admin, tenant, field, value):
    answer = patch(client, tenant.id, {field: value}, admin)

    assert answer.status_code == 200, answer.text
    assert answer.json()[field] == value
    assert client.get(f"{V1}/tenants/{tenant.id}", headers=admin).json()[field] == value


def test_patch_changes_only_the_fields_given(client, admin, new_tenant):
    tenant = new_tenant(rate_limit_per_minute=600, max_roster=5000)
    patch(client, tenant.id, {"providers": ["smtp"]}, admin)

    shown = client.get(f"{V1}/tenants/{tenant.id}", headers=admin).json()
    assert (shown["rate_limit_per_minute"], shown["max_roster"], shown["providers"]) == (600, 5000, ["smtp"])


def test_null_clears_a_limit_and_a_provider_order_back_to_the_default(client, admin, new_tenant):
    tenant = new_tenant(rate_limit_per_minute=600)
    patch(client, tenant.id, {"providers": ["acs"]}, admin)
    answer = patch(client, tenant.id, {"rate_limit_per_minute": None, "providers": None}, admin)

    assert answer.status_code == 200
    assert answer.json()["rate_limit_per_minute"] is None and answer.json()["providers"] is None


def test_sender_domains_are_stored_lower_cased(client, admin, tenant):
    answer = patch(client, tenant.id, {"sender_domains": ["Uni.Example"]}, admin)
    assert answer.json()["sender_domains"] == ["uni.example"]


def test_patch_keeps_columns_of_the_row_it_does_not_know(client, admin, tenant, storage):
    row = {"PartitionKey": TENANT_PARTITION, "RowKey": tenant.id, "billing_ref": "b-1"}
    storage.table(TENANTS).update(row)
    assert patch(client, tenant.id, {"name": "Kept"}, admin).status_code == 200

    row = storage.table(TENANTS).get(TENANT_PARTITION, tenant.id)
    assert row["billing_ref"] == "b-1" and row["contact_salt"]


def test_an_unknown_field_is_422_naming_it(client, admin, tenant):
    answer = patch(client, tenant.id, {"colour": "blue"}, admin)
    assert answer.status_code == 422 and fields(answer) == ["colour"]


def test_an_unknown_provider_is_422_naming_its_position(client, admin, tenant):
    answer = patch(client, tenant.id, {"providers": ["mailgun", "sendgrid"]}, admin)
    assert answer.status_code == 422 and fields(answer) == ["providers.0"]


@pytest.mark.parametrize(("body", "field"), [
    ({"providers": []}, "providers"),
    ({"providers": ["acs", "acs"]}, "providers"),
    ({"rate_limit_per_minute": 0}, "rate_limit_per_minute"),
    ({"max_roster": -5}, "max_roster"),
    ({"delivery_semantics": "exactly-once"}, "delivery_semantics"),
    ({"delivery_semantics": "reconciled"}, "delivery_semantics"),
    ({"sender_domains": ["not a domain"]}, "sender_domains.0"),
    ({"name": None}, "name"),
    ({"warmup": [100, 50]}, "warmup"),  # a ramp never steps down
    ({"warmup": [0, 10]}, "warmup"),
    ({"warmup": []}, "warmup"),
    ({"warmup": [50, 1.5]}, "warmup"),
    ({"warmup": "sometimes"}, "warmup"),
    ({"warmup": [True]}, "warmup"),
])
def test_an_invalid_value_is_422_naming_the_field(client, admin, tenant, body, field):
    answer = patch(client, tenant.id, body, admin)
    assert answer.status_code == 422 and fields(answer) == [field]


def test_a_support_key_cannot_change_a_tenant(client, tenant, support):
    assert patch(client, tenant.id, {"name": "x"}, support).status_code == 403


def test_a_tenant_key_cannot_change_its_own_tenant_or_another(client, tenant, new_tenant):
    other = new_tenant()
    assert patch(client, tenant.id, {"max_roster": 10**6}, tenant.headers).status_code == 403
    assert patch(client, other.id, {"max_roster": 10**6}, tenant.headers).status_code == 403


def test_patching_an_unknown_tenant_is_404(client, admin):
    assert patch(client, secrets.token_hex(8), {"name": "x"}, admin).status_code == 404


# -- sender domains ----------------------------------------------------------------------------


def test_sender_domains_refuse_a_campaign_from_another_domain(client, admin, tenant, campaign_body):
    patch(client, tenant.id, {"sender_domains": ["uni.example"]}, admin)
    body = campaign_body()
    body["template"]["from_email"] = "news@elsewhere.example"

    answer = client.post(f"{V1}/campaigns", json=body, headers=tenant.headers)

    assert answer.status_code == 422 and fields(answer) == ["template.from_email"]


def test_sender_domains_accept_a_campaign_from_a_listed_domain(client, admin, tenant, campaign_body):
    assert patch(client, tenant.id, {"sender_domains": ["uni.example"]}, admin).status_code == 200
    body = campaign_body()
    body["template"]["from_email"] = "news@Uni.Example"
    assert client.post(f"{V1}/campaigns", json=body, headers=tenant.headers).status_code == 201


def test_sender_domains_refuse_a_campaign_edit_to_another_domain(client, admin, tenant, campaign_body):
    body = campaign_body()
    body["template"]["from_email"] = "news@uni.example"
    campaign = client.post(f"{V1}/campaigns", json=body, headers=tenant.headers).json()
    patch(client, tenant.id, {"sender_domains": ["uni.example"]}, admin)

    moved = {**body["template"], "from_email": "news@elsewhere.example"}
    answer = client.patch(f"{V1}/campaigns/{campaign['id']}", json={"template": moved},
                          headers=tenant.headers)

    assert answer.status_code == 422 and fields(answer) == ["template.from_email"]


def test_sender_domains_refuse_a_transactional_email_from_another_domain(client, admin, tenant):
    patch(client, tenant.id, {"sender_domains": ["uni.example"]}, admin)
    request = {"to": ["a@example.com"], "from_email": "app@elsewhere.example", "subject": "Hi", "text": "x"}

    answer = client.post(f"{V1}/emails", json=request, headers=tenant.headers)

    assert answer.status_code == 422 and fields(answer) == ["from_email"]


def test_clearing_sender_domains_lifts_the_restriction(client, admin, tenant, campaign_body):
    patch(client, tenant.id, {"sender_domains": ["uni.example"]}, admin)
    assert patch(client, tenant.id, {"sender_domains": []}, admin).json()["sender_domains"] == []
    assert client.post(f"{V1}/campaigns", json=campaign_body(), headers=tenant.headers).status_code == 201


# -- the Task Manager follows a changed provider order ----------------------------------------


@pytest.fixture
def two_providers() -> Iterator[tuple[SendGridSimulator, AcsSimulator, dict[str, Any]]]:
    sendgrid, acs = SendGridSimulator(api_key="SG.test"), AcsSimulator()
    with serve_in_thread(sendgrid.app) as sg_url, serve_in_thread(acs.app) as acs_url:
        providers = {
            "sendgrid": SendGridProvider("SG.test", sg_url),
            "acs": AcsProvider(acs.connection_string(acs_url), poll_seconds=0.05),
        }
        yield sendgrid, acs, providers


def send_one(client, tenant, storage, host: InProcessHost) -> dict[str, Any]:
    request = {"to": [f"o-{secrets.token_hex(3)}@example.com"], "from_email": "app@example.org",
               "subject": "Hi", "text": "Hello"}
    email_id = client.post(f"{V1}/emails", json=request, headers=tenant.headers).json()["id"]
    host.run_until(lambda: storage.table(JOBS).get(tenant.id, email_id)["status"] == JobStatus.COMPLETED, 60)
    return client.get(f"{V1}/emails/{email_id}", headers=tenant.headers).json()["recipients"][0]


def test_a_changed_provider_order_is_used_by_the_next_send(
    client, admin, tenant, storage, settings, two_providers
):
    sendgrid, acs, providers = two_providers
    health = HealthBoard(storage, BreakerConfig(), owner="host-order")
    sender = FailoverSender(providers, ("sendgrid", "acs"), health=health, limiter=RateLimiter(storage))
    host = InProcessHost(storage, settings, sender)
    host.dispatcher = Dispatcher(sender, RetryPolicy(base_delay=0.01), 2, limiter=sender.limiter)
    host.jobs = JobCache(tenant_seconds=0)  # the host's tenant cache expired (30 s by default)

    patch(client, tenant.id, {"providers": ["sendgrid", "acs"]}, admin)
    first = send_one(client, tenant, storage, host)
    patch(client, tenant.id, {"providers": ["acs", "sendgrid"]}, admin)
    second = send_one(client, tenant, storage, host)

    assert (first["status"], first["provider"]) == ("sent", "sendgrid")
    assert (second["status"], second["provider"]) == ("sent", "acs")
    assert len(sendgrid.messages()) == 1 and len(acs.messages()) == 1


def test_the_task_managers_tenant_cache_is_read_again_after_its_ttl(storage):
    tenant_id, cache = secrets.token_hex(4), JobCache(tenant_seconds=0)
    key = {"PartitionKey": TENANT_PARTITION, "RowKey": tenant_id}
    storage.table(TENANTS).upsert(key | {"providers": "smtp"})
    cache.tenant(storage, tenant_id)
    storage.table(TENANTS).upsert(key | {"providers": "acs"})
    assert cache.tenant(storage, tenant_id)["providers"] == "acs"

