"""A campaign from POST to closed job through real host processes, Azurite and the simulator."""

from __future__ import annotations

from collections import Counter

from devhost.stack import Stack
from tests.e2e.conftest import FAST, HALF, TEMPLATE, new_tenant, people


def test_campaign_of_2000_contacts_sends_each_selected_recipient_exactly_once(stack: Stack):
    client = new_tenant(stack)
    rows = people(2000)
    client.call("POST", "/contacts", json=rows)
    selected = [r["email"] for r in rows if r["attributes"]["half"] == "yes"]
    suppressed = selected[:5]
    for email in suppressed:
        client.call("POST", "/suppressions", json={"email": email})
    campaign = client.call("POST", "/campaigns", json={"name": "e2e", "template": TEMPLATE, "criteria": HALF})
    client.call("POST", f"/campaigns/{campaign['id']}/schedule", json={})

    job = client.wait_job_done(campaign["id"])

    assert job["status"] == "completed"
    assert job["roster_size"] == len(selected)
    assert sum(job["counts"].values()) == job["roster_size"]
    assert job["counts"]["suppressed"] == len(suppressed)
    assert job["counts"]["sent"] == len(selected) - len(suppressed)
    sent = Counter(m["to"] for m in stack.simulator.messages())
    assert set(sent) == set(selected) - set(suppressed)
    assert set(sent.values()) == {1}


def test_walking_deliveries_fifty_at_a_time_visits_each_recipient_once(stack: Stack):
    client = new_tenant(stack)
    rows = people(230)
    client.call("POST", "/contacts", json=rows)
    campaign = client.call("POST", "/campaigns", json={"name": "walk", "template": TEMPLATE})
    client.call("POST", f"/campaigns/{campaign['id']}/schedule", json={})
    job = client.wait_job_done(campaign["id"])

    seen: list[str] = []
    continuation = None
    while True:
        params = {"limit": 50} | ({"continuation": continuation} if continuation else {})
        page = client.call("GET", f"/jobs/{job['id']}/deliveries", params=params)
        assert len(page["items"]) <= 50
        seen += [d["email"] for d in page["items"]]
        continuation = page["continuation"]
        if not continuation:
            break
    assert sorted(seen) == sorted(r["email"] for r in rows)


def test_two_host_processes_finish_a_job_with_no_duplicates():
    with Stack(workers=2, settings=FAST) as stack:
        client = new_tenant(stack)
        rows = people(1500)
        client.call("POST", "/contacts", json=rows)
        campaign = client.call("POST", "/campaigns", json={"name": "two hosts", "template": TEMPLATE})
        client.call("POST", f"/campaigns/{campaign['id']}/schedule", json={})

        job = client.wait_job_done(campaign["id"])

        assert job["counts"]["sent"] == 1500
        sent = Counter(m["to"] for m in stack.simulator.messages())
        assert len(sent) == 1500 and set(sent.values()) == {1}
