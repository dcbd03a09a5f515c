"""The support console in a real browser: Playwright for Python driving Debian's chromium.

The app is served over HTTP on Azurite and a real campaign runs through the managers in-process;
one recipient's outcome is then turned into a bounce in its delivery row (the provider's bounce
event is the tracking pipeline's concern and has its own tests), so support staff have a bounced
address to find. Where a test needs real provider feedback (a person's history across
campaigns), the SendGrid simulator's events go through the event processor as the webhook would.

With ``MAILROOM_SCREENSHOTS=<dir>`` (``make screenshots``) the tests also save the campaign, job
and operator pages as PNGs there (the README shows them from ``docs/screenshots``).
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.app import create_app
from core.storage import DELIVERIES, TASK_QUEUE, Storage
from devhost.stack import serve_in_thread
from providers.sendgrid import SendGridProvider
from tests.conftest import ADMIN_KEY
from tests.integration.delivery_helpers import apply_events, drain_events_queue, events_of
from tests.pipeline import InProcessHost
from tests.sim_fixtures import running_sendgrid_simulator

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
TEMPLATE = {"subject": "Hi {{ contact.name }}", "text": "Hello", "from_email": "news@example.org"}
ACCEPTED = ("sent", "delivered", "bounced", "dropped", "complained", "deferred")
SCREENSHOTS = os.environ.get("MAILROOM_SCREENSHOTS", "")

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
            yield _LaptopBrowser(launched)
        finally:
            launched.close()


class _LaptopBrowser:
    """New pages the size of a laptop screen (what the console is laid out for)."""

    def __init__(self, browser: Any) -> None:
        self._browser = browser

    def new_page(self) -> Any:
        return self._browser.new_page(viewport={"width": 1280, "height": 860})


def screenshot(page: Any, name: str) -> None:
    """Save the whole page as ``<MAILROOM_SCREENSHOTS>/<name>.png`` when screenshots are asked for."""
    if SCREENSHOTS:
        Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SCREENSHOTS) / f"{name}.png"), full_page=True)


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

    def scheduled_campaign(self, key: str, emails: list[str], name: str = "") -> str:
        self.call("POST", "/contacts", key, json=[{"email": e, "name": e.split("@")[0]} for e in emails])
        body = {"name": name or f"Survey {secrets.token_hex(2)}", "template": TEMPLATE}
        campaign = self.call("POST", "/campaigns", key, json=body)
        self.call("POST", f"/campaigns/{campaign['id']}/schedule", key, json={})
        return str(campaign["id"])

    def sent_campaign(
        self, key: str, host: InProcessHost, emails: list[str], name: str = ""
    ) -> tuple[str, str]:
        campaign = {"id": self.scheduled_campaign(key, emails, name)}

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

    for hash_ in (f"#/t/-/j/{job_b}", f"#/t/{tenant_b}/j/{job_b}", f"#/t/{tenant_b}",
                  f"#/t/{tenant_b}/people/b0@example.com"):
        page.goto(f"{url}/api/console{hash_}")
        page.wait_for_selector("#error, #person-results .error")
        assert "Not found" in page.inner_text("#view")

    page.goto(f"{url}/api/console#/ops")  # no operator view either, and no way there
    # A hash change keeps the last page's "Not found" until the operator page answers: wait for it.
    page.wait_for_selector("#error:has-text('Not allowed')", timeout=10_000)
    page.goto(f"{url}/api/console#/t/-")
    page.wait_for_selector("#nav-people")
    assert page.locator("#nav-operator").count() == 0


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


def test_a_support_key_finds_a_bounced_address_across_two_campaigns_and_opens_its_timeline(
    url, storage, settings, browser
):
    operator = Operator(url)
    tenant_id, tenant_key = operator.tenant()
    support_key = operator.call("POST", f"/tenants/{tenant_id}/keys", json={"role": "support"})["key"]
    tag = secrets.token_hex(3)
    bounced = f"bounce-{tag}@example.com"
    emails = [bounced, *(f"reader{i}-{tag}@example.com" for i in range(3))]
    with running_sendgrid_simulator() as (sim, sim_url):
        records: list[dict] = []
        sim.listeners.append(records.extend)
        host = InProcessHost(storage, settings, SendGridProvider("SG.test", sim_url))
        _, first_job = operator.sent_campaign(tenant_key, host, emails, "Spring survey")
        apply_events(storage, settings, events_of(records))  # the bounce arrives and suppresses the address
        _, second_job = operator.sent_campaign(tenant_key, host, emails, "Autumn survey")
        drain_events_queue(storage, settings)  # the second job's delivery log and contact history

    page = browser.new_page()
    sign_in(page, url, support_key)
    page.click(f"a[href='#/t/{tenant_id}']")
    page.click("#nav-people")
    page.fill("#person", bounced)
    page.keyboard.press("Enter")  # the form works from the keyboard
    page.wait_for_selector(f"#person-results tr[data-job='{second_job}']")
    assert page.inner_text(f"tr[data-job='{first_job}'] .status") == "bounced"
    assert page.inner_text(f"tr[data-job='{second_job}'] .status") == "suppressed"

    page.click(f"tr[data-job='{first_job}'] >> text=Timeline")
    page.wait_for_selector("#delivery-status:has-text('bounced')")
    timeline = page.inner_text("#timeline")
    assert "sent" in timeline and "bounced" in timeline and "5.1.1" in timeline
    copied = page.input_value("#delivery-link")
    assert copied.endswith(f"#/t/{tenant_id}/j/{first_job}/d/{page.url.rsplit('/', 1)[1]}")

    other_tab = browser.new_page()  # the copied link, opened by a colleague with their own key
    other_tab.goto(copied)
    other_tab.fill("#key", support_key)
    other_tab.click("text=Open")
    other_tab.wait_for_selector("#delivery-status:has-text('bounced')")


def test_the_job_page_chart_and_status_bars_match_the_apis_counts(url, storage, settings, browser):
    operator = Operator(url)
    tenant_id, tenant_key = operator.tenant()
    tag = secrets.token_hex(3)
    refused = f"refused-{tag}@example.com"
    emails = [refused, f"bounce-{tag}@example.com", f"complain-{tag}@example.com",
              *(f"student{i:02d}-{tag}@example.com" for i in range(20))]
    operator.call("POST", "/suppressions", tenant_key, json={"email": emails[-1], "reason": "unsubscribed"})
    with running_sendgrid_simulator() as (sim, sim_url):
        records: list[dict] = []
        sim.listeners.append(records.extend)
        sim.set_faults({"fail_addresses": {refused: 400}})
        host = InProcessHost(storage, settings.model_copy(update={"task_size": 5, "task_window": 2}),
                             SendGridProvider("SG.test", sim_url))
        campaign_id, job_id = operator.sent_campaign(tenant_key, host, emails, "CSE456 course survey")
        apply_events(storage, settings, events_of(records))
    counts = operator.call("GET", f"/jobs/{job_id}", tenant_key)["counts"]
    assert counts["failed"] == counts["bounced"] == counts["complained"] == counts["suppressed"] == 1

    page = browser.new_page()
    sign_in(page, url, tenant_key)
    page.click(f"a[href='#/t/-/c/{campaign_id}']")
    page.wait_for_selector("#status-bars tr[data-status]")
    screenshot(page, "campaign")
    page.click(f"a[href='#/t/-/j/{job_id}']")
    page.wait_for_selector("#rate-chart[data-sent]")
    page.wait_for_selector("[data-figure='bounces']")
    shown = {row.get_attribute("data-status"): int(row.get_attribute("data-count") or 0)
             for row in page.locator("#status-bars tr[data-status]").all()}
    assert shown == {status: n for status, n in counts.items() if n}
    chart = page.locator("#rate-chart")
    assert int(chart.get_attribute("data-sent") or -1) == sum(counts[s] for s in ACCEPTED)
    assert int(chart.get_attribute("data-failed") or -1) == counts["failed"]
    assert page.locator("#rate-chart svg rect").count() >= 1
    figures = {name: page.inner_text(f"[data-figure='{name}']")
               for name in ("bounces", "complaints", "suppressed")}
    assert figures == {"bounces": "1", "complaints": "1", "suppressed": "1"}
    page.wait_for_selector("#failures table")
    screenshot(page, "job")

    page.click("button[aria-label='show the failed recipients']")
    page.wait_for_selector("#results .status:has-text('failed')")
    assert page.locator("#results tbody tr td:first-child").all_inner_texts() == [refused]


def test_an_admin_replays_a_poison_message_and_the_job_finishes(url, storage, settings, browser):
    operator = Operator(url)
    tenant_id, tenant_key = operator.tenant()
    emails = [f"p{i}-{secrets.token_hex(2)}@example.com" for i in range(6)]
    # Three tasks of two; no window refill during the test, so only a replay can send the lost task.
    quiet = settings.model_copy(update={"task_size": 2, "task_window": 3, "refill_after_seconds": 3600})
    with running_sendgrid_simulator() as (_, sim_url):
        host = InProcessHost(storage, quiet, SendGridProvider("SG.test", sim_url))
        campaign_id = operator.scheduled_campaign(tenant_key, emails, "Poisoned survey")
        host.expand_round()
        tickets = storage.queue(TASK_QUEUE).receive(32, visibility_timeout=60)
        lost = next(m for m in tickets if json.loads(m.content)["task_index"] == 0)
        # What a host that died on the last attempt leaves: the ticket in -poison, its task unsent.
        storage.poison(TASK_QUEUE).send(lost.content)
        storage.queue(TASK_QUEUE).delete(lost)
        for message in tickets:
            if message is not lost:
                storage.queue(TASK_QUEUE).release(message)
        for _ in range(3):
            host.run_round()
        job_id = operator.call("GET", f"/campaigns/{campaign_id}", tenant_key)["current_job_id"]
        job = operator.call("GET", f"/jobs/{job_id}", tenant_key)
        assert job["status"] == "sending" and job["counts"]["sent"] == 4  # stuck without task 0

        page = browser.new_page()
        sign_in(page, url, ADMIN_KEY)
        page.click("#nav-operator")
        page.wait_for_selector("[data-depth='task-queue-poison']")
        assert page.inner_text("[data-depth='task-queue-poison']") == "1"
        page.click("[data-queue='task-queue-poison']")
        page.wait_for_selector("[data-replay]")
        assert job_id in page.inner_text("#poison") and "sending" in page.inner_text("#poison")
        screenshot(page, "operator")
        page.click("[data-replay]")
        page.wait_for_selector("#poison-empty")

        host.run_until(lambda: bool(operator.call("GET", f"/jobs/{job_id}", tenant_key)["completed_at"]))
    page.goto(f"{url}/api/console#/t/{tenant_id}/j/{job_id}")
    page.wait_for_selector("#job-status:has-text('completed')")
    assert page.inner_text("[data-status='sent'] td") == "6"


def test_the_console_shows_the_estimate_a_dry_run_who_scheduled_it_and_the_operators_forecast(
    url, storage, settings, browser
):
    operator = Operator(url)
    tenant_id, _ = operator.tenant()
    issued = operator.call("POST", f"/tenants/{tenant_id}/keys", json={"role": "tenant"})
    tenant_key, key_id = issued["key"], issued["id"]
    tag = secrets.token_hex(3)
    emails = [f"member{i:02d}-{tag}@example.com" for i in range(9)]
    operator.call("POST", "/contacts", tenant_key, json=[{"email": e, "name": "Member"} for e in emails])
    operator.call("POST", "/suppressions", tenant_key, json={"email": emails[0], "reason": "unsubscribed"})
    campaign_id = operator.call("POST", "/campaigns", tenant_key,
                                json={"name": "Club newsletter", "template": TEMPLATE})["id"]
    estimate = operator.call("POST", f"/campaigns/{campaign_id}/estimate", tenant_key)
    assert (estimate["matching"], estimate["recipients"]) == (9, 8)
    send_at = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    operator.call("POST", f"/campaigns/{campaign_id}/schedule", tenant_key, json={"send_at": send_at})
    dry_job = operator.call("POST", f"/campaigns/{campaign_id}/schedule", tenant_key,
                            json={"dry_run": True})["dry_run_job_id"]
    with running_sendgrid_simulator() as (_, sim_url):
        host = InProcessHost(storage, settings, SendGridProvider("SG.test", sim_url))
        host.run_until(lambda: job_closed(operator, tenant_key, dry_job), timeout=60)

    page = browser.new_page()
    sign_in(page, url, tenant_key)
    page.click(f"a[href='#/t/-/c/{campaign_id}']")
    page.wait_for_selector("#estimate [data-estimate='matching']")
    shown = {name: int(page.get_attribute(f"[data-estimate='{name}']", "data-value") or -1)
             for name in ("matching", "suppressed", "invalid", "over_limit", "recipients")}
    api = operator.call("GET", f"/campaigns/{campaign_id}/estimate", tenant_key)
    assert shown == {"matching": api["matching"], "suppressed": sum(api["suppressed"].values()),
                     "invalid": api["invalid"], "over_limit": api["over_limit"],
                     "recipients": api["recipients"]}
    assert page.get_attribute("#estimate-exact", "data-exact") == "true"
    assert page.get_attribute("[data-bound]", "data-bound") == api["forecast"]["bound"]
    assert page.inner_text("[data-actor='scheduled']") == key_id
    assert page.locator(f"[data-dry-run='{dry_job}']").count() == 1  # the runs list marks the dry run
    with page.expect_response(lambda r: r.request.method == "POST" and r.url.endswith("/estimate")) as redo:
        page.click("#estimate-refresh")  # a tenant key may recount
    assert redo.value.status == 200
    page.wait_for_selector("#estimate-at:has-text('Computed')")

    page.click(f"a[href='#/t/-/j/{dry_job}']")
    page.wait_for_selector("#job-status:has-text('completed')")
    assert page.inner_text(f"#job-summary [data-dry-run='{dry_job}']") == "dry run"

    support_key = operator.call("POST", f"/tenants/{tenant_id}/keys", json={"role": "support"})["key"]
    reader = browser.new_page()
    estimate_posts: list[str] = []
    reader.on("request", lambda r: estimate_posts.append(r.url) if r.method == "POST" else None)
    sign_in(reader, url, support_key)
    reader.goto(f"{url}/api/console#/t/{tenant_id}/c/{campaign_id}")
    reader.wait_for_selector("#estimate [data-estimate='matching']")
    with reader.expect_response(lambda r: r.request.method == "GET" and r.url.endswith("/estimate")) as read:
        reader.click("#estimate-refresh")  # a support key only reads the estimate again
    assert read.value.status == 200 and estimate_posts == []
    assert page.inner_text("#job-actors [data-actor='created']") == key_id

    forecast = operator.call("GET", "/forecast")
    assert any(run["campaign_id"] == campaign_id for run in forecast["runs"])
    admin_page = browser.new_page()
    sign_in(admin_page, url, ADMIN_KEY)
    admin_page.click("#nav-operator")
    admin_page.wait_for_selector("#forecast-total")
    assert int(admin_page.get_attribute("#forecast-total", "data-emails") or -1) == forecast["emails"]
    assert admin_page.locator("#forecast-chart svg rect").count() >= 1



def job_closed(operator: Operator, key: str, job_id: str) -> bool:
    """Whether the job exists (the Campaign Manager opens it when its run is due) and has closed."""
    response = operator.http.get(f"/jobs/{job_id}", headers={"Authorization": f"Bearer {key}"})
    return response.status_code == 200 and bool(response.json()["completed_at"])
