"""A contact deleted while its campaign is really running (host process, Azurite, slow simulator)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from core.storage import DELIVERIES, Storage
from devhost.stack import Stack
from tests.e2e.conftest import new_tenant, people, stack_with_latency
from tests.e2e.test_control import handed_over, start_campaign, wait_closed, wait_sending

# Tasks of 10, two at a time, batched requests of two recipients at 60 ms each: a 300-recipient job
# runs for several seconds, and its last task is still pending when the test deletes one of its contacts.
SLOW = {"TASK_SIZE": "10", "TASK_WINDOW": "2", "TASK_LEASE_SECONDS": "6", "WINDOW_REFILL_AFTER_SECONDS": "10",
        "SEND_CONCURRENCY": "4", "SENDGRID_BATCH_SIZE": "2"}
ROSTER = 300


@pytest.fixture(scope="module")
def slow_stack() -> Iterator[Stack]:
    with stack_with_latency(SLOW, 60) as running:
        yield running


def test_a_contact_deleted_mid_send_is_never_mailed_and_ends_skipped(slow_stack: Stack):
    client = new_tenant(slow_stack)
    rows = people(ROSTER)
    _, job_id = start_campaign(client, rows)
    running = wait_sending(client, job_id)
    assert handed_over(running["counts"]) < ROSTER // 2
    contacts = client.call("GET", "/contacts", params={"limit": 1000})
    last = max(contacts["items"], key=lambda c: c["id"])  # tasks follow contact ids: the last task

    response = client.api.delete(f"/contacts/{last['id']}", headers=client.headers)
    assert response.status_code == 204, response.text
    job = wait_closed(client, job_id)

    assert [m for m in slow_stack.simulator.messages() if m["to"] == last["email"]] == []
    assert sum(job["counts"].values()) == job["roster_size"] == ROSTER
    assert job["counts"]["skipped"] == 1
    storage = Storage(slow_stack.azurite.connection_string)
    row = next(iter(storage.table(DELIVERIES).query(
        "PartitionKey ge @lo and PartitionKey lt @hi and RowKey eq @c",
        {"lo": f"{job_id}-", "hi": f"{job_id}.", "c": last["id"]})))
    assert (row["status"], row["reason"], row["email"]) == ("skipped", "contact deleted", "")
