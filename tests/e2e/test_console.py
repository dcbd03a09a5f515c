"""The support console in a real browser: Playwright for Python driving Debian's chromium.

The app is served over HTTP on Azurite and a real campaign runs through the managers in-process;
one recipient's outcome is then turned into a bounce in its delivery row (the provider's bounce
event is the tracking pipeline's concern and has its own tests), so support staff have a bounced
address to find.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.app import create_app
from core.storage import DELIVERIES, Storage
from devhost.stack import serve_in_thread
from providers.sendgrid import SendGridProvider
from tests.conftest import ADMIN_KEY
from tests.pipeline import InProcessHost
from tests.sim_fixtures import running_sendgrid_simulator

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
TEMPLATE = {"subject": "Hi {{ contact.name }}", "text": "Hello", "from_email": "news@example.org"}

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed "
                                "(make test installs it with apt-get; Playwright's own download is not used)")


@pytest.fixture
def url(settings, storage) -> Iterator[str]:
    with serve_in_thread(create_app(settings, storage)) as served:
        yield served


@pytest.fixture
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


class Operator:
    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=f"{url}/api/v1", timeout=30)

    def call(self, method: str, path: str, key: str = ADMIN_KEY, **kwargs: Any) -> Any:
        response = self.http.request(method, path, headers={"Authorization": f"Bearer {key}"}, **kwargs)
        assert response.status_code < 400, response.text
        return response.json()

    def tenant(self, role: str = "tenant") -> tuple[str, str]:
        tenant = self.call("POST", "/tenants", json={"name": f"Tenant {secrets.token_hex(3)}"})
        return tenant["id"], self.call("POST", f"/tenants/{tenant['id']}/keys", json={"role": role})["key"]

    def sent_campaign(self, key: str, host: InProcessHost, emails: list[str]) -> tuple[str, str]:
        self.call("POST", "/contacts", key, json=[{"email": e, "name": e.split("@")[0]} for e in emails])
        campaign = self.call("POST", "/campaigns", key, json={"name": f"Survey {secrets.token_hex(2)}",
                                                              "template": TEMPLATE})
        self.call("POST", f"/campaigns/{campaign['id']}/schedule", key, json={})

        def closed() -> bool:
            job_id = self.call("GET", f"/campaigns/{campaign['id']}", key).get("current_job_id")
            return bool(job_id) and bool(self.call("GET", f"/jobs/{job_id}", key)["completed_at"])

        host.run_until(closed, timeout=60)
        return campaign["id"], self.call("GET", f"/campaigns/{campaign['id']}", key)["current_job_id"]


def bounce(storage: Storage, job_id: str, email: str) -> None:
    rows = storage.table(DELIVERIES).query(
        "PartitionKey ge @lo and PartitionKey lt @hi and email eq @e",
        {"lo": f"{job_id}-", "hi": f"{job_id}.", "e": email},
    )
    row = next(rows)
    storage.table(DELIVERIES).upsert({"PartitionKey": row["PartitionKey"], "RowKey": row["RowKey"],
                                      "status": "bounced", "reason": "550 5.1.1 mailbox does not exist"})


def sign_in(page: Any, url: str, key: str) -> None:
    page.goto(f"{url}/api/console")
    page.fill("#key", key)
    page.click("text=Open")


def test_support_finds_a_job_searches_a_bounced_address_and_sees_its_timeline(
    url, storage, settings, browser
):
    operator = Operator(url)
    tenant_id, tenant_key = operator.tenant()
    support_key = operator.call("POST", f"/tenants/{tenant_id}/keys", json={"role": "support"})["key"]
    tag = secrets.token_hex(3)
    emails = [f"student{i}-{tag}@example.com" for i in range(12)]
    with running_sendgrid_simulator() as (_, sim_url):
        host = InProcessHost(storage, settings, SendGridProvider("SG.test", sim_url))
        campaign_id, job_id = operator.sent_campaign(tenant_key, host, emails)
    bounce(storage, job_id, emails[3])

    page = browser.new_page()
    sign_in(page, url, support_key)
    page.click(f"a[href='#/t/{tenant_id}']")
    page.click(f"a[href='#/t/{tenant_id}/c/{campaign_id}']")
    page.click(f"a[href='#/t/{tenant_id}/j/{job_id}']")
    page.wait_for_selector("#job-status:has-text('completed')")
    assert "100%" in page.inner_text("#job-summary")

    page.fill("#search-email", emails[3])
    page.select_option("#search-status", "bounced")
    page.click("text=Search")
    page.wait_for_selector("#results .status:has-text('bounced')")
    assert page.locator("#results tbody tr").count() == 1
    page.click("#results >> text=Timeline")
    page.wait_for_selector(f"#timeline:has-text('Timeline of {emails[3]}')")
    assert "bounced" in page.inner_text("#timeline")


def test_a_tenant_key_sees_only_its_own_tenant_in_the_console(url, storage, settings, browser):
    operator = Operator(url)
    _, key_a = operator.tenant()
    tenant_b, key_b = operator.tenant()
    with running_sendgrid_simulator() as (_, sim_url):
        host = InProcessHost(storage, settings, SendGridProvider("SG.test", sim_url))
        campaign_a, _ = operator.sent_campaign(key_a, host, [f"a{i}-{secrets.token_hex(2)}@example.com"
                                                              for i in range(3)])
        campaign_b, job_b = operator.sent_campaign(key_b, host, [f"b{i}-{secrets.token_hex(2)}@example.com"
                                                                 for i in range(3)])

    page = browser.new_page()
    sign_in(page, url, key_a)
    page.wait_for_selector(f"a[href='#/t/-/c/{campaign_a}']")
    assert page.locator(f"a[href='#/t/-/c/{campaign_b}']").count() == 0

    for hash_ in (f"#/t/-/j/{job_b}", f"#/t/{tenant_b}/j/{job_b}", f"#/t/{tenant_b}"):
        page.goto(f"{url}/api/console{hash_}")
        page.wait_for_selector("#error")
        assert "Not found" in page.inner_text("#error")


def test_a_search_with_more_than_a_page_of_deliveries_shows_the_rest_on_more_results(
    url, storage, settings, browser
):
    operator = Operator(url)
    tenant_id, tenant_key = operator.tenant()
    tag = secrets.token_hex(3)
    emails = [f"reader{i:03d}-{tag}@example.com" for i in range(130)]
    with running_sendgrid_simulator() as (_, sim_url):
        host = InProcessHost(storage, settings, SendGridProvider("SG.test", sim_url))
        campaign_id, job_id = operator.sent_campaign(tenant_key, host, emails)

    page = browser.new_page()
    sign_in(page, url, tenant_key)
    page.click(f"a[href='#/t/-/c/{campaign_id}']")
    page.click(f"a[href='#/t/-/j/{job_id}']")
    page.wait_for_selector("#job-status:has-text('completed')")
    page.click("text=Search")
    page.wait_for_selector("#results #more")
    assert page.locator("#results tbody tr").count() == 100

    page.click("#more")
    page.wait_for_selector("#shown:has-text('130 shown')")
    assert page.locator("#results #more").count() == 0
    shown = page.locator("#results tbody tr td:first-child").all_inner_texts()
    assert sorted(shown) == sorted(emails)
