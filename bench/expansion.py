"""Roster expansion at a size too big to send here (the million-recipient case).

Contacts are written straight to the Contacts table by the bench (lean batches, the rows
the API import writes), because importing a million through the API would take most of
the time budget and measures the import, not the expansion. Azurite keeps its data in
memory unless ``on_disk`` (``--location``, for rosters its memory cannot hold; measured here
it re-saves its whole table store so often that 300k contacts expanded at ~200/s). The host expands the
roster into tasks with a window of one task (so sending barely competes); the bench
records how long expansion took and the host's peak RSS, then stops.

At a million, Azurite itself is the bound: it answers every 1,000-row page of a query by running
the filter over every entity of the table and sorting all the matches after the continuation
point (``LokiTableMetadataStore.queryTableEntities``), ~13 s a page with 10^6 contacts, so the
whole scan takes hours (measured 75 recipients/s; 692/s at 200k). Progress is printed every
minute so a long run shows how far it got.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.endtoend import job_entity, new_tenant, schedule_campaign, write_contacts
from bench.stack import BenchStack
from core.storage import Storage

# One task on the queue at a time, and the Status Manager hourly: this run measures expansion
# alone, without the status pass that interrupts it (see bench/stack.py).
EXPANSION_SETTINGS = {"TASK_WINDOW": "1", "STATUS_MANAGER_SCHEDULE": "0 0 * * * *"}


def run_expansion(recipients: int, on_disk: bool = False, timeout: float = 3600) -> dict[str, Any]:
    """Expand ``recipients`` contacts; ``on_disk`` keeps Azurite's data in a temporary directory."""
    with tempfile.TemporaryDirectory(prefix="bench-azurite-") as disk:
        location = Path(disk) if on_disk else None
        with BenchStack(workers=1, settings=EXPANSION_SETTINGS, disk=location) as stack:
            assert stack.azurite is not None
            storage = Storage(stack.azurite.connection_string)
            tenant = new_tenant(stack, "bench expansion")
            began = time.monotonic()
            write_seconds = write_contacts(
                storage, tenant.id, recipients,
                progress=lambda n: _say(f"{n:,} contacts written in {time.monotonic() - began:.0f}s"),
            )
            before = stack.host_samples()
            started = time.monotonic()
            campaign_id = schedule_campaign(tenant, "bench expansion")
            deadline = started + timeout
            job: dict[str, Any] | None = None
            while time.monotonic() < deadline:
                job = job_entity(storage, tenant, campaign_id)
                if job is not None and job.get("expanded"):
                    break
                if job is not None and int(time.monotonic() - started) % 60 == 0:
                    _say(f"expanding: {int(job.get('tasks_total') or 0)} tasks after "
                         f"{time.monotonic() - started:.0f}s")
                time.sleep(1.0)
            else:
                raise TimeoutError(f"expansion of {recipients} did not finish within {timeout:.0f}s")
            seconds = time.monotonic() - started
            after = stack.host_samples()
            assert job is not None
            return {
                "recipients": recipients,
                "roster_size": int(job.get("roster_size") or 0),
                "tasks": int(job.get("tasks_total") or 0),
                "contact_write_seconds": write_seconds,
                "expansion_seconds": seconds,
                "expansion_recipients_per_second": recipients / seconds,
                "cpu_us_per_recipient": (
                    sum(a.cpu_seconds for a in after) - sum(b.cpu_seconds for b in before)
                )
                / recipients
                * 1e6,
                "peak_rss_mb": max(a.peak_rss_mb for a in after),
                "azurite": "on disk (--location)" if on_disk else "in memory",
            }


def _say(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)
