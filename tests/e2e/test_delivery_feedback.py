"""The whole loop through host processes: send → signed webhooks → statuses, timelines, logs."""

from __future__ import annotations

import csv
import io
import secrets
import time
from collections.abc import Iterator

import pytest

from core.blobs import delivery_logs
from core.storage import Storage
from devhost.stack import Stack
from status_manager.delivery_logs import log_blob_name
from tests.e2e.conftest import FAST, TEMPLATE, new_tenant


def wait_until(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)


@pytest.fixture
def stack() -> Iterator[Stack]:
    with Stack(workers=1, settings=FAST, provider_events=True) as running:
        yield running


def test_provider_feedback_turns_sent_into_delivered_bounced_and_complained(stack: Stack):
    tenant = new_tenant(stack)
    tag = secrets.token_hex(3)
    locals_ = [f"p{i:03d}" for i in range(40)] + ["bounce-1", "bounce-2", "complain-1", "slow-1", "slow-2"]
    tenant.call("POST", "/contacts", json=[{"email": f"{x}-{tag}@example.com", "name": x} for x in locals_])
    campaign = tenant.call("POST", "/campaigns", json={"name": "feedback", "template": TEMPLATE})
    tenant.call("POST", f"/campaigns/{campaign['id']}/schedule", json={})
    job = tenant.wait_job_done(campaign["id"])
    roster = job["roster_size"]
    assert roster == len(locals_)

    def settled():
        counts = tenant.call("GET", f"/jobs/{job['id']}")["counts"]
        assert sum(counts.values()) == roster  # counts add up at every moment
        done = (counts["delivered"], counts["bounced"], counts["complained"]) == (42, 2, 1)
        return counts if done else None

    counts = wait_until(settled, 90, "the provider's events to settle the job's counts")
    assert counts["sent"] == 0

    items, token = [], None
    while True:
        params = {"limit": 20, "continuation": token}
        page = tenant.call("GET", f"/jobs/{job['id']}/deliveries", params=params)
        items += page["items"]
        token = page["continuation"]
        if not token:
            break
    assert len(items) == roster
    for item in items:
        types = [e["type"] for e in item["events"]]
        assert "sent" in types and item["status"] in types, (item["status"], types)

    storage = Storage(stack.azurite.connection_string)
    blobs = delivery_logs(storage)
    name = log_blob_name(tenant.tenant_id, job["id"])
    wait_until(lambda: blobs.exists(name), 60, "the delivery log CSV blob")
    lines = list(csv.DictReader(io.StringIO(blobs.read(name).decode())))
    assert len(lines) == roster and len({line["contact_id"] for line in lines}) == roster

    exported = tenant.api.get(f"/jobs/{job['id']}/deliveries.csv", headers=tenant.headers).text
    assert len(list(csv.DictReader(io.StringIO(exported)))) == roster
    assert stack.feedback is not None and stack.feedback.stats.duplicates > 0
