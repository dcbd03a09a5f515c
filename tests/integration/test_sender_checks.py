"""Sender checks at schedule time: SPF, DKIM and DMARC of the from_email domain, through a local DNS.

No outside network: ``DNS_RESOLVER`` points at ``tests.dns_fixtures.LocalDns``.
"""

from __future__ import annotations

import pytest

from core.sender_checks import check_sender_domain
from core.settings import Settings, load_settings
from tests import dns_fixtures
from tests.conftest import ADMIN_KEY
from tests.dns_fixtures import BARE_DOMAIN, GOOD_DOMAIN, NO_DKIM_DOMAIN, LocalDns
from tests.integration.conftest import bearer

local_dns = dns_fixtures.local_dns

V1 = "/api/v1"


@pytest.fixture
def settings(azurite: object, local_dns: LocalDns) -> Settings:
    return load_settings(
        AzureWebJobsStorage=azurite.connection_string,  # type: ignore[attr-defined]
        MAILROOM_ADMIN_KEY=ADMIN_KEY, MAILROOM_SIGNING_KEY="test-signing-key",
        SENDER_CHECKS=True, DNS_RESOLVER=local_dns.address, DNS_TIMEOUT_SECONDS=2,
    )


def draft_from(client, tenant, campaign_body, domain: str) -> str:
    body = campaign_body()
    body["template"]["from_email"] = f"news@{domain}"
    created = client.post(f"{V1}/campaigns", json=body, headers=tenant.headers)
    assert created.status_code == 201, created.text
    return created.json()["id"]


def test_a_campaign_from_a_domain_without_spf_dkim_and_dmarc_is_refused_naming_each_record(
    client, tenant, campaign_body
):
    campaign_id = draft_from(client, tenant, campaign_body, BARE_DOMAIN)
    response = client.post(f"{V1}/campaigns/{campaign_id}/schedule", json={}, headers=tenant.headers)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert {d["field"] for d in error["details"]} == {"template.from_email"}
    named = [d["message"].split(":")[0] for d in error["details"]]
    assert named == ["SPF", "DKIM", "DMARC"]
    assert BARE_DOMAIN in error["message"]
    assert client.get(f"{V1}/campaigns/{campaign_id}", headers=tenant.headers).json()["status"] == "draft"


def test_a_domain_without_a_key_at_its_dkim_selector_is_refused_naming_dkim_and_the_selector(
    client, tenant, campaign_body
):
    campaign_id = draft_from(client, tenant, campaign_body, NO_DKIM_DOMAIN)
    response = client.post(f"{V1}/campaigns/{campaign_id}/schedule", json={}, headers=tenant.headers)
    assert response.status_code == 422, response.text
    details = response.json()["error"]["details"]
    assert len(details) == 1
    assert details[0]["message"].startswith("DKIM: selector s1")
    assert f"s1._domainkey.{NO_DKIM_DOMAIN}" in details[0]["message"]


def test_a_domain_with_spf_dkim_and_dmarc_is_scheduled(client, tenant, campaign_body):
    campaign_id = draft_from(client, tenant, campaign_body, GOOD_DOMAIN)
    response = client.post(f"{V1}/campaigns/{campaign_id}/schedule", json={}, headers=tenant.headers)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "scheduled"


def test_the_operator_may_schedule_a_failing_domain_with_override_sender_checks(
    client, tenant, campaign_body
):
    campaign_id = draft_from(client, tenant, campaign_body, BARE_DOMAIN)
    response = client.post(f"{V1}/campaigns/{campaign_id}/schedule", json={"override_sender_checks": True},
                           headers=bearer(ADMIN_KEY) | {"X-Mailroom-Tenant": tenant.id})
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "scheduled"


def test_a_tenant_key_may_not_override_sender_checks(client, tenant, campaign_body):
    campaign_id = draft_from(client, tenant, campaign_body, BARE_DOMAIN)
    response = client.post(f"{V1}/campaigns/{campaign_id}/schedule", json={"override_sender_checks": True},
                           headers=tenant.headers)
    assert response.status_code == 403, response.text


def test_a_strict_dmarc_policy_only_at_the_organizational_domain_does_not_align_a_subdomain(
    local_dns, settings
):
    sub = f"mail.{GOOD_DOMAIN}"
    local_dns.records[sub] = ["v=spf1 include:sendgrid.net ~all"]
    local_dns.records[f"s1._domainkey.{sub}"] = ["v=DKIM1; p=MIGf"]
    assert check_sender_domain(sub, settings) == []  # relaxed policy at the organizational domain
    local_dns.records[f"_dmarc.{GOOD_DOMAIN}"] = ["v=DMARC1; p=reject; adkim=s"]
    problems = check_sender_domain(sub, settings)
    assert [p.record for p in problems] == ["DMARC"]


def test_an_unreachable_dns_server_fails_the_checks_instead_of_passing_them(settings):
    unreachable = settings.model_copy(update={"dns_resolver": "127.0.0.1:9", "dns_timeout_seconds": 0.3})
    problems = check_sender_domain(GOOD_DOMAIN, unreachable)
    assert [p.record for p in problems] == ["SPF", "DKIM", "DMARC"]
    assert all("could not be looked up" in p.message for p in problems)
