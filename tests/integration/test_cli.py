"""The ``mailroom`` CLI against the real app served over HTTP (uvicorn in a thread) on Azurite."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from rich.console import Console
from typer.testing import CliRunner

from api.app import create_app
from cli.api import MailroomApi, api_base
from cli.main import app
from cli.watch import watch_job
from core.models import Job
from core.storage import JOBS
from devhost.stack import serve_in_thread, wait_for
from providers.sendgrid import SendGridProvider
from tests.conftest import ADMIN_KEY
from tests.pipeline import InProcessHost
from tests.sim_fixtures import running_sendgrid_simulator

runner = CliRunner()


@pytest.fixture
def url(settings, storage) -> Iterator[str]:
    with serve_in_thread(create_app(settings, storage)) as served:
        yield served


def mailroom(url: str, key: str, *args: str) -> str:
    result = runner.invoke(app, list(args), env={"MAILROOM_URL": url, "MAILROOM_KEY": key, "COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return result.output


def new_tenant(url: str) -> tuple[str, str]:
    """(tenant id, tenant key), made with the operator commands."""
    tenant = json.loads(mailroom(url, ADMIN_KEY, "tenants", "create", "CLI tenant"))
    key = json.loads(mailroom(url, ADMIN_KEY, "keys", "create", "--tenant", tenant["id"]))["key"]
    return tenant["id"], key


def write_contacts(path: Path, n: int) -> Path:
    lines = ["email,name,year"] + [f"cli{i}@example.com,Person {i},{2000 + i % 3}" for i in range(n)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_operator_and_tenant_commands_create_a_tenant_import_contacts_and_a_campaign(url, tmp_path):
    _, key = new_tenant(url)
    contacts = write_contacts(tmp_path / "contacts.csv", 25)
    (tmp_path / "campaign.json").write_text(json.dumps({
        "name": "From the CLI", "template": {"subject": "Hi", "text": "Hello", "from_email": "a@example.org"},
    }))

    imported = mailroom(url, key, "contacts", "import", str(contacts), "--batch", "10")
    created = mailroom(url, key, "campaigns", "create", str(tmp_path / "campaign.json"))

    assert "created 25, updated 0, rejected 0" in imported
    assert created.startswith("campaign ") and created.strip().endswith("draft")


def test_an_api_error_prints_the_apis_message_and_exits_1(url):
    result = runner.invoke(app, ["jobs", "show", "nope"], env={"MAILROOM_URL": url, "MAILROOM_KEY": "wrong"})
    assert result.exit_code == 1
    assert "401 unauthorized" in result.output


def test_jobs_watch_shows_a_progress_bar_that_ends_at_100_percent(url, storage, settings, tmp_path):
    tenant_id, key = new_tenant(url)
    mailroom(url, key, "contacts", "import", str(write_contacts(tmp_path / "c.csv", 120)))
    (tmp_path / "campaign.json").write_text(json.dumps({
        "name": "Watched", "template": {"subject": "Hi", "text": "Hello", "from_email": "a@example.org"},
    }))
    campaign_id = mailroom(url, key, "campaigns", "create", str(tmp_path / "campaign.json")).split()[1]
    mailroom(url, key, "campaigns", "schedule", campaign_id)
    api = MailroomApi(httpx.Client(base_url=api_base(url), timeout=30), key)

    with running_sendgrid_simulator() as (_, sim_url):
        host = InProcessHost(storage, settings.model_copy(update={"task_size": 10, "task_window": 2}),
                             SendGridProvider("SG.test", sim_url))
        campaign_path = f"/campaigns/{campaign_id}"
        job_id = wait_for(lambda: host.expand_round() or api.get(campaign_path)["current_job_id"],
                          30, "the campaign's job")
        closed = threading.Event()

        def job_closed() -> bool:
            return bool(Job.from_entity(storage.table(JOBS).get(tenant_id, job_id)).completed_at)

        def drive() -> None:
            host.run_until(job_closed, timeout=90)
            closed.set()

        threading.Thread(target=drive, daemon=True).start()
        console = Console(record=True, width=160, force_terminal=True)
        job = watch_job(api, job_id, console, interval=0.05, timeout=90)

    text = console.export_text()
    assert closed.is_set() and job["status"] == "completed"
    assert "100%" in text and "sent 120" in text
    exported = mailroom(url, key, "deliveries", job_id, "--status", "sent", "--csv").splitlines()
    assert exported[0].startswith("contact_id,email,status") and len(exported) == 121
    assert "cli7@example.com" in mailroom(url, key, "deliveries", job_id, "--email", "cli7@example.com")


def test_tenants_update_sets_providers_rate_limit_max_roster_and_sender_domains(url):
    tenant_id, _ = new_tenant(url)

    shown = json.loads(mailroom(
        url, ADMIN_KEY, "tenants", "update", tenant_id, "--providers", "sendgrid,acs",
        "--rate-limit", "600", "--max-roster", "1000", "--sender-domain", "Uni.Example",
    ))

    assert shown["providers"] == ["sendgrid", "acs"] and shown["sender_domains"] == ["uni.example"]
    assert (shown["rate_limit_per_minute"], shown["max_roster"]) == (600, 1000)


def test_campaigns_test_sends_to_the_given_addresses(url, tmp_path):
    _, key = new_tenant(url)
    (tmp_path / "campaign.json").write_text(json.dumps({
        "name": "Tested", "template": {"subject": "Hi", "text": "Hello", "from_email": "a@example.org"},
    }))
    campaign_id = mailroom(url, key, "campaigns", "create", str(tmp_path / "campaign.json")).split()[1]

    queued = mailroom(url, key, "campaigns", "test", campaign_id, "--to", "a@example.com",
                      "--to", "b@example.com")

    email_id = queued.split()[2]
    shown = MailroomApi(httpx.Client(base_url=api_base(url), timeout=30), key).get(f"/emails/{email_id}")
    assert (shown["kind"], shown["campaign_id"]) == ("test", campaign_id)


def test_campaigns_estimate_prints_the_audience_and_the_forecast_before_anything_is_sent(url, tmp_path):
    _, key = new_tenant(url)
    mailroom(url, key, "contacts", "import", str(write_contacts(tmp_path / "contacts.csv", 12)))
    (tmp_path / "campaign.json").write_text(json.dumps({
        "name": "Estimated", "criteria": {"all": [{"field": "attributes.year", "op": "eq", "value": 2001}]},
        "template": {"subject": "Hi", "text": "Hello", "from_email": "a@example.org"},
    }))
    campaign_id = mailroom(url, key, "campaigns", "create", str(tmp_path / "campaign.json")).split()[1]

    printed = mailroom(url, key, "campaigns", "estimate", campaign_id)

    assert "matching contacts: 4 (exactly)" in printed and "would be sent: 4" in printed
    assert "bound: nominal" in printed
    assert "0 emails in 0 scheduled runs" in mailroom(url, ADMIN_KEY, "forecast")  # a draft is no volume


def test_contacts_import_lists_bad_rows_by_their_line_in_the_file(url, tmp_path):
    _, key = new_tenant(url)
    lines = ["email,name,year"] + [f"ok{i}@example.com,Person {i},2001" for i in range(30)]
    lines[12] = "not-an-address,Bad Row,2001"  # line 13 of the file
    lines[25] = 'quoted@example.com,"Two\nLines",2001'  # spans lines 26-27; a name has no line breaks
    lines[26] = "also-bad,After The Quote,2001"  # starts on line 28
    (tmp_path / "bad.csv").write_text("\n".join(lines) + "\n")

    output = mailroom(url, key, "contacts", "import", str(tmp_path / "bad.csv"), "--batch", "7")

    assert "created 27, updated 0, rejected 3" in output
    assert "line 13: email:" in output and "line 26: name:" in output and "line 28: email:" in output


def test_an_interrupted_import_resumes_after_the_last_acknowledged_line_and_sends_nothing_twice(
    settings, storage, tmp_path
):
    limited = settings.model_copy(update={"api_rate_limit_per_minute": 4})  # its 5th part: 429
    contacts = write_contacts(tmp_path / "contacts.csv", 50)
    with serve_in_thread(create_app(limited, storage)) as served:
        tenant_id, first_key = new_tenant(served)
        stopped = runner.invoke(app, ["contacts", "import", str(contacts), "--batch", "10"],
                                env={"MAILROOM_URL": served, "MAILROOM_KEY": first_key, "COLUMNS": "200"})
        second_key = json.loads(mailroom(served, ADMIN_KEY, "keys", "create", "--tenant", tenant_id))["key"]

        resumed = mailroom(served, second_key, "contacts", "import", str(contacts), "--batch", "10")

    assert stopped.exit_code == 1 and "stopped after line 41" in stopped.output
    assert "resuming after line 41 (40 rows already imported)" in resumed
    assert "created 50, updated 0, rejected 0" in resumed  # nothing was sent twice
    assert not (tmp_path / "contacts.csv.import-checkpoint").exists()
