"""No PII in logs (issue 6, item 7; DESIGN invariant 6), checked over a whole campaign.

A stack of two host processes (HTTP + timers, and a queue-only one) logs at DEBUG in JSON, and
prints its trace spans, to ``<log_dir>/worker-N.log``; the test process itself hosts the
SendGrid simulator, whose records ``caplog`` captures. The campaign touches every path that
handles addresses and names: an import with a bad row, an email lookup, a suppression, a
preview, a send where some recipients hit a template error, delivery-log filters, the CSV
export and a contact's erasure. Then every line of every log is searched for every address,
local part and name: none may appear.
"""

from __future__ import annotations

import json
import logging
import secrets

import pytest

from devhost.stack import Stack
from tests.e2e.conftest import FAST, TenantClient, new_tenant

RECIPIENTS = 60
# The test's own HTTP client logs the URLs it requests (addresses in query strings included):
# that is the test harness talking, not a Mailroom component.
TEST_CLIENT_LOGGERS = ("httpx", "httpcore")
TEMPLATE = {
    "subject": "News for {{ contact.name }}",
    "text": "Dear {{ contact.name }} ({{ contact.email }})"
            "{% if contact.attributes.broken %}{{ contact.name.no_such_method() }}{% endif %}",
    "html": "<p>Dear {{ contact.name }}</p>",
    "from_email": "news@example.org",
}


LOGGED = {**FAST, "MAILROOM_LOG_LEVEL": "DEBUG", "MAILROOM_LOG_FORMAT": "json"}


@pytest.fixture
def logged_stack(tmp_path):
    """Two hosts logging everything, with trace spans printed to the same log (invariant 6: traces too)."""
    traced = {**LOGGED, "MAILROOM_TELEMETRY_CONSOLE": "true"}
    with Stack(workers=2, settings=traced, log_dir=tmp_path) as running:
        yield running


def _people() -> list[dict]:
    tag = secrets.token_hex(3)
    return [
        {"email": f"zq{tag}.person{i:03d}@example.com", "name": f"Quillon{tag}{i:03d} Vantablack",
         "attributes": {"broken": i % 5 == 0}}
        for i in range(RECIPIENTS)
    ]


def _secrets(people: list[dict]) -> list[str]:
    found = []
    for person in people:
        found += [person["email"], person["email"].split("@")[0], person["name"].split()[0]]
    return found


def _exercise(client: TenantClient, people: list[dict]) -> dict:
    bad_row = {"email": "not-an-address", "name": people[0]["name"]}
    imported = client.call("POST", "/contacts", json=[*people, bad_row])
    assert imported["created"] == RECIPIENTS and len(imported["rejected"]) == 1
    client.call("GET", "/contacts", params={"email": people[1]["email"]})
    client.call("POST", "/suppressions", json={"email": people[2]["email"]})
    campaign = client.call("POST", "/campaigns", json={"name": "PII scan", "template": TEMPLATE})
    client.call("POST", f"/campaigns/{campaign['id']}/preview", json={"email": people[3]["email"]})
    client.call("POST", f"/campaigns/{campaign['id']}/schedule", json={})
    job = client.wait_job_done(campaign["id"])
    client.call("GET", f"/jobs/{job['id']}/deliveries", params={"email": people[4]["email"]})
    client.call("GET", f"/jobs/{job['id']}/deliveries", params={"status": "skipped"})
    export = client.api.get(f"/jobs/{job['id']}/deliveries.csv", headers=client.headers)
    assert export.status_code == 200
    contact = client.call("GET", "/contacts", params={"email": people[5]["email"]})["items"][0]
    client.api.delete(f"/contacts/{contact['id']}", headers=client.headers)
    return job


def test_a_whole_campaign_logs_no_address_and_no_name(logged_stack, caplog):
    caplog.set_level(logging.DEBUG)
    people = _people()
    job = _exercise(new_tenant(logged_stack), people)
    assert job["status"] == "completed"
    assert job["counts"]["skipped"] >= RECIPIENTS // 5  # the template errors really happened
    assert job["counts"]["suppressed"] == 1

    logged_stack.stop()  # flush and close every host's log
    lines: list[tuple[str, str]] = []
    for index in range(logged_stack.workers):
        path = logged_stack.log_dir / f"worker-{index}.log"
        lines += [(path.name, line) for line in path.read_text().splitlines() if line.strip()]
    lines += [("test process", record.getMessage()) for record in caplog.records
              if not record.name.startswith(TEST_CLIENT_LOGGERS)]
    assert len(lines) > 10, "the hosts logged almost nothing: the scan would prove nothing"

    leaks = [f"{where}: {line[:300]}" for where, line in lines
             if any(secret in line for secret in _secrets(people))]
    assert not leaks, "\n".join(leaks[:20])


def test_host_log_lines_are_json_objects(tmp_path):
    with Stack(workers=1, settings=LOGGED, log_dir=tmp_path) as stack:
        new_tenant(stack).call("GET", "/contacts")
    lines = (tmp_path / "worker-0.log").read_text().splitlines()
    assert lines
    for line in lines:
        assert isinstance(json.loads(line), dict), line
