"""With the console exporter on, one campaign is one trace: API call → Job Manager → every task."""

from __future__ import annotations

import json
from typing import Any

from devhost.stack import Stack, wait_for
from tests.e2e.conftest import FAST, TEMPLATE, new_tenant, people


def spans_in(stack: Stack) -> list[dict[str, Any]]:
    """Every span the host printed (one JSON object per line in its log)."""
    spans = []
    for line in (stack.log_dir / "worker-0.log").read_text(errors="replace").splitlines():
        if line.startswith('{"name"'):
            spans.append(json.loads(line))
    return spans


def test_one_campaign_produces_a_trace_linking_the_api_call_to_its_tasks():
    traced = {**FAST, "TASK_SIZE": "10", "MAILROOM_TELEMETRY_CONSOLE": "true"}
    with Stack(workers=1, settings=traced) as stack:
        client = new_tenant(stack)
        rows = people(30)
        client.call("POST", "/contacts", json=rows)
        campaign = client.call("POST", "/campaigns", json={"name": "traced", "template": TEMPLATE})
        client.call("POST", f"/campaigns/{campaign['id']}/schedule", json={})
        job = client.wait_job_done(campaign["id"])

        def trace() -> list[dict[str, Any]] | None:
            spans = spans_in(stack)
            tasks = [s for s in spans if s["name"] == "task_manager.send"
                     and s["attributes"].get("mailroom.job_id") == job["id"]]
            return spans if len(tasks) >= job["tasks_total"] else None

        spans = wait_for(trace, 30, "the task spans to be printed")

    schedule = [s for s in spans if s["name"] == "POST /api/v1/campaigns/{campaign_id}/schedule"]
    assert len(schedule) == 1 and schedule[0]["kind"] == "SpanKind.SERVER"
    trace_id = schedule[0]["context"]["trace_id"]
    expand = [s for s in spans if s["name"] == "job_manager.expand" and s["context"]["trace_id"] == trace_id]
    tasks = [s for s in spans if s["name"] == "task_manager.send" and s["context"]["trace_id"] == trace_id]
    assert expand and expand[0]["attributes"]["mailroom.job_id"] == job["id"]
    assert expand[0]["parent_id"] == schedule[0]["context"]["span_id"]  # the API call is the root
    assert job["tasks_total"] == 3
    assert sorted(t["attributes"]["mailroom.task"] for t in tasks) == [0, 1, 2]
    assert {t["parent_id"] for t in tasks} == {expand[0]["context"]["span_id"]}
    addresses = {r["email"] for r in rows}
    for span in spans:
        for value in span["attributes"].values():
            assert "@" not in str(value) and str(value) not in addresses
