"""``mailroom jobs watch``: a live progress bar and counts until the job closes.

A job is closed when it has ``completed_at`` (a cancelled job keeps running until every task
is accounted for, then closes too). The bar is the API's ``progress``, which is exactly 1.0
for a completed job, so a finished watch always ends at 100 %.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

from cli.api import MailroomApi

SHOWN_COUNTS = ("sent", "delivered", "bounced", "failed", "suppressed", "skipped", "unknown", "cancelled")


def counts_line(job: dict[str, Any]) -> str:
    counts = job.get("counts", {})
    shown = [f"{name} {counts[name]}" for name in SHOWN_COUNTS if counts.get(name)]
    return f"{job['status']}: " + (", ".join(shown) if shown else "nothing sent yet")


def is_closed(job: dict[str, Any]) -> bool:
    return bool(job.get("completed_at"))


def watch_job(
    api: MailroomApi,
    job_id: str,
    console: Console,
    interval: float = 1.0,
    sleep: Callable[[float], None] = time.sleep,
    timeout: float | None = None,
) -> dict[str, Any]:
    """Poll ``GET /jobs/{id}`` and redraw until the job closes (or ``timeout`` passes)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), TaskProgressColumn(),
               TimeElapsedColumn(), TextColumn("{task.fields[counts]}"))
    with Progress(*columns, console=console, transient=False) as progress:
        bar = progress.add_task(f"job {job_id}", total=1.0, counts="")
        while True:
            job = api.get(f"/jobs/{job_id}")
            progress.update(bar, completed=job["progress"], counts=counts_line(job))
            if is_closed(job):
                break
            if deadline is not None and time.monotonic() > deadline:
                break
            sleep(interval)
    eta = job.get("eta")
    console.print(f"roster {job['roster_size']}, {counts_line(job)}" + (f", eta {eta}" if eta else ""))
    if job.get("time_to_send_seconds") is not None:
        console.print(f"time to send: {job['time_to_send_seconds']:.1f} s")
    return job
