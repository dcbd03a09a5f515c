"""Limits with clear errors (issue 6, item 4) and template and header safety (item 6).

Request-level limits answer 413/422 naming the field; a tenant's ``max_roster`` fails the job
at expansion with a reason before anybody is sent anything; a template that does not parse,
reaches for what the sandbox forbids or puts a line break in a header is a 422 at save and
nothing is stored or sent; a template that fails for one recipient at send time skips that
recipient with the reason and the job goes on.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from core.criteria import MAX_DEPTH, MAX_LEAVES
from core.models import TENANT_PARTITION
from core.status import DeliveryStatus, JobStatus
from core.storage import CAMPAIGNS, DELIVERIES, TENANTS
from core.templates import MAX_BODY_BYTES
from providers.sendgrid import SendGridProvider
from tests.pipeline import InProcessHost, add_contacts, job_of, make_tenant, schedule_campaign
from tests.sim_fixtures import running_sendgrid_simulator

V1 = "/api/v1"


def _field(reply) -> str:
    return reply.json()["error"]["details"][0]["field"]


# -- request limits ---------------------------------------------------------------------------


def test_a_body_over_the_limit_is_413_before_it_is_read(settings, storage, tenant):
    small = settings.model_copy(update={"max_request_bytes": 4096})
    with TestClient(create_app(small, storage)) as client:
        reply = client.post(f"{V1}/contacts", content=b"[" + b" " * 10_000_000 + b"]",
                            headers={**tenant.headers, "Content-Type": "application/json"})
    assert reply.status_code == 413
    assert reply.json()["error"]["code"] == "too_large"


def test_an_import_over_the_contact_limit_is_413_and_stores_nobody(settings, storage, tenant):
    small = settings.model_copy(update={"max_contacts_per_import": 3})
    rows = [{"email": f"p{i}@example.com"} for i in range(4)]
    with TestClient(create_app(small, storage)) as client:
        reply = client.post(f"{V1}/contacts", json=rows, headers=tenant.headers)
        listed = client.get(f"{V1}/contacts", headers=tenant.headers).json()["items"]
    assert reply.status_code == 413
    assert listed == []


def test_criteria_deeper_than_allowed_are_422_naming_the_path(client, tenant, campaign_body):
    criteria: dict = {"field": "email", "op": "exists", "value": True}
    for _ in range(MAX_DEPTH + 1):
        criteria = {"not": criteria}
    reply = client.post(f"{V1}/campaigns", json=campaign_body(criteria=criteria), headers=tenant.headers)
    assert reply.status_code == 422
    assert _field(reply).startswith("criteria")


def test_criteria_with_too_many_conditions_are_422(client, tenant, campaign_body):
    leaves = [{"field": "attributes.n", "op": "eq", "value": i} for i in range(MAX_LEAVES + 1)]
    body = campaign_body(criteria={"any": leaves})
    reply = client.post(f"{V1}/campaigns", json=body, headers=tenant.headers)
    assert reply.status_code == 422
    assert _field(reply).startswith("criteria")


def test_a_template_body_over_the_limit_is_422_naming_the_part(client, tenant, campaign_body, template):
    huge = {**template, "html": "x" * (MAX_BODY_BYTES + 1)}
    reply = client.post(f"{V1}/campaigns", json=campaign_body(template=huge), headers=tenant.headers)
    assert reply.status_code == 422
    assert _field(reply) == "template.html"


@pytest.mark.parametrize("limit", [0, 1001])
def test_a_page_size_outside_1_to_1000_is_422(client, tenant, limit):
    reply = client.get(f"{V1}/contacts", params={"limit": limit}, headers=tenant.headers)
    assert reply.status_code == 422
    assert _field(reply) == "limit"


# -- mass assignment -------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["id", "status", "counts", "tenant_id", "created_at", "current_job_id"])
def test_a_server_owned_field_in_a_campaign_is_422_naming_it(client, tenant, campaign_body, field):
    created = client.post(f"{V1}/campaigns", json=campaign_body(**{field: "x"}), headers=tenant.headers)
    assert created.status_code == 422 and _field(created) == field
    campaign = client.post(f"{V1}/campaigns", json=campaign_body(), headers=tenant.headers).json()
    patched = client.patch(f"{V1}/campaigns/{campaign['id']}", json={field: "x"}, headers=tenant.headers)
    assert patched.status_code == 422 and _field(patched) == field


def test_a_server_owned_field_in_an_imported_contact_rejects_that_row(client, tenant):
    reply = client.post(f"{V1}/contacts", headers=tenant.headers,
                        json=[{"email": "own@example.com", "id": "chosen-id", "state": "active"}])
    assert reply.status_code == 200
    assert reply.json()["created"] == 0 and reply.json()["rejected"]


# -- template and header safety at save ------------------------------------------------------


@pytest.mark.parametrize(("part", "value"), [
    ("subject", "Hi\r\nBcc: everyone@example.net"),
    ("subject", "Hi\nthere"),
    ("from_name", "News\r\nX-Evil: 1"),
    ("from_name", "News\x00"),
    ("reply_to", "help@example.org\r\nBcc: x@example.net"),
])
def test_a_line_break_or_control_character_in_a_header_is_422_and_nothing_is_saved(
    client, storage, tenant, campaign_body, template, part, value
):
    reply = client.post(f"{V1}/campaigns", json=campaign_body(template={**template, part: value}),
                        headers=tenant.headers)
    assert reply.status_code == 422
    assert _field(reply) == f"template.{part}"
    assert list(storage.table(CAMPAIGNS).query("PartitionKey eq @t", {"t": tenant.id})) == []


@pytest.mark.parametrize("source", [
    "{{ contact.__class__.__mro__ }}",
    "{{ ''.__class__.__subclasses__() }}",
    "{{ contact|attr('__class__') }}",
    "{{ cycler.__init__.__globals__ }}",
    "{% include 'other' %}",
    "{{ unclosed",
])
def test_a_sandbox_escape_or_broken_template_is_422_at_save_and_nothing_is_saved(
    client, storage, tenant, campaign_body, template, source
):
    reply = client.post(f"{V1}/campaigns", json=campaign_body(template={**template, "html": source}),
                        headers=tenant.headers)
    assert reply.status_code == 422
    assert _field(reply) == "template.html"
    assert list(storage.table(CAMPAIGNS).query("PartitionKey eq @t", {"t": tenant.id})) == []


def test_editing_a_campaign_into_a_header_injection_is_422_and_keeps_the_old_template(
    client, tenant, campaign_body, template
):
    campaign = client.post(f"{V1}/campaigns", json=campaign_body(), headers=tenant.headers).json()
    reply = client.patch(f"{V1}/campaigns/{campaign['id']}", headers=tenant.headers,
                         json={"template": {**template, "subject": "a\r\nBcc: x@example.net"}})
    assert reply.status_code == 422
    stored = client.get(f"{V1}/campaigns/{campaign['id']}", headers=tenant.headers).json()
    assert stored["template"]["subject"] == template["subject"]


def test_a_contact_name_with_a_line_break_is_rejected_at_import(client, tenant):
    reply = client.post(f"{V1}/contacts", headers=tenant.headers,
                        json=[{"email": "ok@example.com", "name": "Eve\r\nBcc: all@example.net"}])
    assert reply.status_code == 200
    assert reply.json()["created"] == 0
    assert reply.json()["rejected"][0]["field"] == "name"


# -- at send time ----------------------------------------------------------------------------


@pytest.fixture
def simulator() -> Iterator[tuple[object, str]]:
    with running_sendgrid_simulator() as (sim, url):
        yield sim, url


@pytest.fixture
def host(storage, settings, simulator) -> InProcessHost:
    _, url = simulator
    small = settings.model_copy(update={"task_size": 20})
    return InProcessHost(storage, small, SendGridProvider("SG.t", url))


def _finished(storage, campaign):
    job = job_of(storage, campaign)
    return job is not None and JobStatus(job.status).is_final


def test_a_render_error_skips_that_recipient_with_the_reason_and_the_job_goes_on(storage, host, simulator):
    sim, _ = simulator
    tenant = make_tenant(storage)
    rows = [{"email": f"r{i}@example.com", "name": f"R{i}", "attributes": {"broken": i % 3 == 0}}
            for i in range(30)]
    add_contacts(storage, tenant, rows)
    template = {"subject": "Hi {{ contact.name }}", "from_email": "news@example.org",
                "text": "{% if contact.attributes.broken %}{{ contact.name.no_such_method() }}{% endif %}ok"}
    campaign = schedule_campaign(storage, tenant, template=template)

    host.run_until(lambda: _finished(storage, campaign))

    job = job_of(storage, campaign)
    assert job.status == JobStatus.COMPLETED
    assert job.counts["skipped"] == 10 and job.counts["sent"] == 20
    skipped = [d for d in storage.table(DELIVERIES).query("status eq 'skipped'", {})]
    assert len(skipped) == 10 and all("template" in d["reason"] for d in skipped)
    assert {m["to"] for m in sim.messages()} == {r["email"] for r in rows if not r["attributes"]["broken"]}


def test_a_roster_over_the_tenants_max_roster_fails_the_job_and_sends_nobody(storage, host, simulator):
    sim, _ = simulator
    tenant = make_tenant(storage)
    storage.table(TENANTS).update({"PartitionKey": TENANT_PARTITION, "RowKey": tenant.id, "max_roster": 25})
    add_contacts(storage, tenant, [{"email": f"m{i}@example.com"} for i in range(30)])
    campaign = schedule_campaign(storage, tenant)

    host.run_until(lambda: _finished(storage, campaign))

    job = job_of(storage, campaign)
    assert job.status == JobStatus.FAILED
    assert "max_roster" in job.failure_reason and "25" in job.failure_reason
    assert sum(job.counts.values()) == job.roster_size == 0
    assert sim.messages() == []
    assert storage.table(CAMPAIGNS).get(tenant.id, campaign.id)["status"] == "failed"


def test_a_roster_within_the_tenants_max_roster_is_sent(storage, host, simulator):
    sim, _ = simulator
    tenant = make_tenant(storage)
    storage.table(TENANTS).update({"PartitionKey": TENANT_PARTITION, "RowKey": tenant.id, "max_roster": 30})
    add_contacts(storage, tenant, [{"email": f"w{i}@example.com"} for i in range(30)])
    campaign = schedule_campaign(storage, tenant)

    host.run_until(lambda: _finished(storage, campaign))

    assert job_of(storage, campaign).counts[DeliveryStatus.SENT.value] == 30
    assert len(sim.messages()) == 30
