"""Small pieces of operating Mailroom: time-to-send, trace context on tickets, the CLI's API base."""

from __future__ import annotations

import pytest

from cli.api import api_base
from cli.watch import counts_line, is_closed
from core.errors import BadMessage
from core.messages import JobTicket, TaskTicket, parse_ticket
from core.telemetry import current_traceparent
from core.timing import time_to_send_seconds

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_time_to_send_is_start_to_close_in_seconds():
    assert time_to_send_seconds("2026-01-01T10:00:00.000Z", "2026-01-01T10:02:30.500Z") == 150.5


def test_time_to_send_is_none_until_the_job_has_both_ends():
    assert time_to_send_seconds("2026-01-01T10:00:00.000Z", "") is None
    assert time_to_send_seconds("", "2026-01-01T10:00:00.000Z") is None


def test_a_ticket_without_trace_context_has_no_traceparent_field():
    assert "traceparent" not in TaskTicket(tenant_id="t", job_id="j", task_index=0).to_text()


def test_a_ticket_carries_a_w3c_traceparent_across_the_queue():
    text = JobTicket(tenant_id="t", job_id="j", traceparent=TRACEPARENT).to_text()
    assert parse_ticket(JobTicket, text).traceparent == TRACEPARENT


def test_a_malformed_traceparent_makes_the_ticket_malformed():
    with pytest.raises(BadMessage):
        parse_ticket(TaskTicket, '{"tenant_id":"t","job_id":"j","task_index":0,"traceparent":"x@y.com"}')


def test_outside_a_trace_there_is_no_traceparent_to_carry():
    assert current_traceparent() is None


def test_the_cli_adds_the_api_path_to_mailroom_url_once():
    assert api_base("http://127.0.0.1:7071/") == "http://127.0.0.1:7071/api/v1"
    assert api_base("https://x.azurewebsites.net/api/v1") == "https://x.azurewebsites.net/api/v1"


def test_jobs_watch_stops_at_completed_at_and_shows_only_nonzero_counts():
    job = {"status": "cancelled", "completed_at": "2026-01-01T00:00:00Z",
           "counts": {"sent": 3, "cancelled": 7, "failed": 0}}
    assert is_closed(job) and counts_line(job) == "cancelled: sent 3, cancelled 7"
    assert not is_closed({"completed_at": None})
