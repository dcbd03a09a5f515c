"""Templates larger than a table column (64 KiB) are kept in blobs and work everywhere.

Marketing HTML is often 30–100 KB and a template part may be up to 512 KiB: such a template is
created, read back whole, previewed, copied to its job and sent byte for byte; one over the
limit is a 422 naming ``template.html``, never a 503.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from core.blobs import templates
from core.models import Job
from core.status import JobStatus
from core.storage import CAMPAIGNS, JOBS
from core.templates import MAX_BODY_BYTES
from providers.sendgrid import SendGridProvider
from task_manager import JobCache
from tests.pipeline import InProcessHost
from tests.sim_fixtures import running_sendgrid_simulator

V1 = "/api/v1"


def marketing_html(size: int) -> str:
    """About ``size`` bytes of HTML with a merge field near the end and non-ASCII text throughout."""
    block = "<tr><td style=\"padding:8px;font-family:Arial\">Frühjahrsangebot – 20 % Rabatt ✓</td></tr>\n"
    body = block * (size // len(block.encode()))
    return f"<html><body><table>{body}</table><p>Hi {{{{ contact.name }}}}</p></body></html>"


@pytest.fixture
def simulator() -> Iterator[tuple[object, str]]:
    with running_sendgrid_simulator() as (sim, url):
        yield sim, url


def create(client, tenant, body) -> dict:
    response = client.post(f"{V1}/campaigns", json=body, headers=tenant.headers)
    assert response.status_code == 201, response.text
    return response.json()


@pytest.mark.parametrize("size", [40_000, 300_000])
def test_a_large_html_template_is_created_and_read_back_whole(client, tenant, campaign_body, template, size):
    html = marketing_html(size)
    created = create(client, tenant, campaign_body(template={**template, "html": html}))

    shown = client.get(f"{V1}/campaigns/{created['id']}", headers=tenant.headers)
    listed = client.get(f"{V1}/campaigns", headers=tenant.headers)

    assert created["template"]["html"] == html
    assert shown.status_code == 200 and shown.json()["template"]["html"] == html
    assert [c["template"]["html"] for c in listed.json()["items"]] == [html]


def test_a_large_template_lives_in_a_blob_and_a_small_one_stays_readable_in_its_row(
    client, tenant, campaign_body, template, storage
):
    large = create(client, tenant, campaign_body(template={**template, "html": marketing_html(40_000)}))
    small = create(client, tenant, campaign_body())

    large_row = storage.table(CAMPAIGNS).get(tenant.id, large["id"])
    small_row = storage.table(CAMPAIGNS).get(tenant.id, small["id"])
    assert large_row["template"] == "" and large_row["template_ref"].startswith(f"{tenant.id}/{large['id']}/")
    assert templates(storage).exists(large_row["template_ref"])
    assert small_row["template_ref"] == "" and "Hello {{ contact.name }}" in small_row["template"]


def test_editing_a_large_template_writes_a_new_blob_and_keeps_the_old_one(
    client, tenant, campaign_body, template, storage
):
    created = create(client, tenant, campaign_body(template={**template, "html": marketing_html(40_000)}))
    before = storage.table(CAMPAIGNS).get(tenant.id, created["id"])["template_ref"]
    edited = {**template, "html": marketing_html(50_000)}

    answer = client.patch(f"{V1}/campaigns/{created['id']}", json={"template": edited},
                          headers=tenant.headers)

    after = storage.table(CAMPAIGNS).get(tenant.id, created["id"])["template_ref"]
    assert answer.status_code == 200 and answer.json()["template"]["html"] == edited["html"]
    assert after != before and templates(storage).exists(before) and templates(storage).exists(after)


def test_a_large_template_previews_with_the_whole_rendered_body(client, tenant, campaign_body, template):
    html = marketing_html(300_000)
    created = create(client, tenant, campaign_body(template={**template, "html": html}))

    preview = client.post(f"{V1}/campaigns/{created['id']}/preview", json={}, headers=tenant.headers)

    assert preview.status_code == 200, preview.text
    expected = html.replace("{{ contact.name }}", "Sample Contact")
    assert preview.json()["html"] == expected


@pytest.mark.parametrize("part", ["html", "text"])
def test_a_template_part_over_512_kib_is_422_naming_the_part(client, tenant, campaign_body, template, part):
    huge = {**template, part: "x" * (MAX_BODY_BYTES + 88 * 1024)}  # 600 KiB
    reply = client.post(f"{V1}/campaigns", json=campaign_body(template=huge), headers=tenant.headers)
    assert reply.status_code == 422, reply.text
    assert reply.json()["error"]["details"][0]["field"] == f"template.{part}"


def test_a_campaign_with_a_100_kb_template_sends_the_rendered_body_byte_for_byte(
    client, tenant, campaign_body, template, storage, settings, simulator
):
    sim, url = simulator
    html = marketing_html(100_000)
    created = create(client, tenant, campaign_body(template={**template, "html": html}))
    contacts = [{"email": f"big{i}@example.com", "name": f"Big {i}"} for i in range(3)]
    assert client.post(f"{V1}/contacts", json=contacts, headers=tenant.headers).status_code == 200
    scheduled = client.post(f"{V1}/campaigns/{created['id']}/schedule", json={}, headers=tenant.headers)
    assert scheduled.status_code == 200, scheduled.text
    host = InProcessHost(storage, settings, SendGridProvider("SG.test", url))

    host.run_until(lambda: client.get(f"{V1}/campaigns/{created['id']}", headers=tenant.headers)
                   .json()["status"] == "completed")

    sent = sorted(sim.messages(), key=lambda m: m["to"])
    assert [m["to"] for m in sent] == [f"big{i}@example.com" for i in range(3)]
    for i, message in enumerate(sent):
        assert message["html"].encode() == html.replace("{{ contact.name }}", f"Big {i}").encode()


def test_a_job_copies_the_campaigns_template_blob_and_a_host_reads_it_once(
    client, tenant, campaign_body, template, storage
):
    html = marketing_html(40_000)
    created = create(client, tenant, campaign_body(template={**template, "html": html}))
    ref = storage.table(CAMPAIGNS).get(tenant.id, created["id"])["template_ref"]
    job = Job(id="j1", tenant_id=tenant.id, campaign_id=created["id"], campaign_name="n", template={},
              criteria={}, status=JobStatus.SENDING.value, template_ref=ref)
    storage.table(JOBS).insert(job.to_entity())
    cache = JobCache()

    loaded = Job.from_entity(storage.table(JOBS).get(tenant.id, "j1"))
    compiled = [cache.template(storage, loaded) for _ in range(5)]

    assert all(c is compiled[0] for c in compiled) and cache.reads == 1
    assert compiled[0].spec.html == html


def test_a_transactional_email_with_a_100_kb_html_body_is_sent_whole(
    client, tenant, storage, settings, simulator
):
    sim, url = simulator
    html = marketing_html(100_000)
    request = {"to": ["order@example.com"], "from_email": "shop@example.org", "subject": "Your order",
               "html": html, "data": {"code": "42"}}

    answer = client.post(f"{V1}/emails", json=request, headers=tenant.headers)

    assert answer.status_code == 202, answer.text
    email_id = answer.json()["id"]
    host = InProcessHost(storage, settings, SendGridProvider("SG.test", url))
    host.run_until(lambda: storage.table(JOBS).get(tenant.id, email_id)["status"] == JobStatus.COMPLETED)
    assert [m["html"] for m in sim.messages()] == [html.replace("{{ contact.name }}", "")]

