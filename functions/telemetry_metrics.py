"""Metrics the Status Manager's timer reports: closed jobs (emails per tenant and status, job
duration, time-to-send) and queue depths. Ids, statuses and numbers only."""

from __future__ import annotations

from core import telemetry
from core.clock import parse_iso
from core.storage import ALL_QUEUES, Storage
from core.timing import time_to_send_seconds
from status_manager import StatusReport


def record_status_metrics(storage: Storage, report: StatusReport) -> None:
    if not telemetry.enabled():
        return
    telemetry.observe_queue_depths(lambda: [(name, storage.queue(name).depth()) for name in ALL_QUEUES])
    for job in report.closed_jobs:
        if job.dry_run:
            continue  # nothing was delivered: emails and time-to-send count real runs only
        duration = None
        if job.created_at and job.completed_at:
            duration = (parse_iso(job.completed_at) - parse_iso(job.created_at)).total_seconds()
        send = time_to_send_seconds(job.started_at, job.completed_at) if job.status == "completed" else None
        telemetry.record_closed_job(job.tenant_id, job.counts, duration, send)
