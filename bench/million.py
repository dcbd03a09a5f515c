"""The million phase: a roster imported through the API like a user's, then one campaign to all.

``python -m bench --million-recipients 1000000`` (``BENCH_ARGS`` in ``make bench``). Unlike the
other phases nothing is written straight to the table: the roster goes through
``POST /contacts`` in parts of ``IMPORT_PART`` rows (what ``mailroom contacts import`` does),
then one campaign to every contact runs to its close. Reported per slice of ``slice_size``
(100k by default): import contacts/s and expansion recipients/s, so a cost that grows with the
table shows as a falling rate; and for the whole run emails/s, storage requests and host CPU per
email, peak RSS per host, the final counts (they must add up to the roster) and the simulator's
record (each recipient accepted once).
"""

from __future__ import annotations

import secrets
import sys
import time
from collections import Counter
from typing import Any

from bench.endtoend import job_entity, new_tenant, schedule_campaign
from bench.procstats import diff_counts
from bench.stack import BenchStack
from core.storage import Storage

IMPORT_PART = 5_000  # rows per POST /contacts, as a CLI import with --batch 5000


def run_million(recipients: int, slice_size: int = 100_000, timeout: float = 6 * 3600) -> dict[str, Any]:
    """Import ``recipients`` contacts through the API, send one campaign to all, measure by slice."""
    with BenchStack(workers=1) as stack:
        assert stack.azurite is not None
        storage = Storage(stack.azurite.connection_string)
        tenant = new_tenant(stack, "bench million")
        before_import = stack.host_samples()
        import_slices = _import_through_api(tenant, recipients, slice_size)
        after_import = stack.host_samples()

        counts_before = stack.request_counts()
        cpu_before = stack.host_samples()
        started = time.monotonic()
        campaign_id = schedule_campaign(tenant, "bench million")
        expansion_slices, job = _follow_job(storage, tenant, campaign_id, slice_size, started + timeout)
        wall = time.monotonic() - started
        cpu_after = stack.host_samples()
        counts_after = stack.request_counts()
        requests = diff_counts(counts_after["storage"], counts_before["storage"])
        roster = int(job.get("roster_size") or 0)
        counts = {k.removeprefix("count_"): int(v) for k, v in job.items() if k.startswith("count_") and v}
        per_address = Counter(m["to"] for m in stack.simulator.messages())
        return {
            "recipients": recipients,
            "slice_size": slice_size,
            "import_contacts_per_second_by_slice": import_slices,
            "import_cpu_us_per_contact": _cpu(before_import, after_import) / recipients * 1e6,
            "expansion_recipients_per_second_by_slice": expansion_slices,
            "status": job.get("status"),
            "roster_size": roster,
            "counts": counts,
            "counts_add_up": sum(counts.values()) == roster == recipients,
            "simulator_accepted": sum(per_address.values()),
            "sent_twice": sum(1 for n in per_address.values() if n > 1),
            "seconds": wall,
            "emails_per_second": roster / wall if wall else 0.0,
            "storage_requests_per_email": sum(requests.values()) / max(roster, 1),
            "requests_by_operation": requests,
            "cpu_us_per_email": _cpu(cpu_before, cpu_after) / max(roster, 1) * 1e6,
            "peak_rss_mb_per_host": [round(s.peak_rss_mb, 1) for s in cpu_after],
        }


def _import_through_api(tenant: Any, recipients: int, slice_size: int) -> list[float]:
    """POST the roster in parts; contacts/s of each slice."""
    tag = secrets.token_hex(3)
    rates: list[float] = []
    slice_started = time.monotonic()
    for first in range(0, recipients, IMPORT_PART):
        rows = [
            {"email": f"m{i:07d}-{tag}@example.com", "name": f"Recipient {i}",
             "attributes": {"plan": "pro" if i % 3 == 0 else "free", "n": i}}
            for i in range(first, min(recipients, first + IMPORT_PART))
        ]
        result = tenant.call("POST", "/contacts", json=rows)
        if result["rejected"] or result["created"] != len(rows):
            raise RuntimeError(f"import part at {first}: {result['created']} created, "
                               f"{len(result['rejected'])} rejected")
        done = first + len(rows)
        if done % slice_size == 0 or done == recipients:
            now = time.monotonic()
            rates.append(round((done - (len(rates) * slice_size)) / (now - slice_started), 1))
            _say(f"imported {done:,} through the API ({rates[-1]:,.0f} contacts/s in the last slice)")
            slice_started = now
    return rates


def _follow_job(
    storage: Storage, tenant: Any, campaign_id: str, slice_size: int, deadline: float
) -> tuple[list[float], dict[str, Any]]:
    """Poll the job until it closes; recipients/s of expansion for each slice of the roster."""
    rates: list[float] = []
    slice_started: float | None = None
    last_said = 0.0
    while time.monotonic() < deadline:
        job = job_entity(storage, tenant, campaign_id)
        now = time.monotonic()
        if job is not None:
            if slice_started is None and job.get("started_at"):
                slice_started = now
            expanded = int(job.get("roster_size") or 0)
            while slice_started is not None and expanded >= (len(rates) + 1) * slice_size:
                rates.append(round(slice_size / max(now - slice_started, 1e-6), 1))
                slice_started = now
            if job.get("status") in ("completed", "cancelled", "failed"):
                return rates, job
            if now - last_said >= 60:
                _say(f"job {job.get('status')}: roster {expanded:,}, tasks done {job.get('tasks_done') or 0}")
                last_said = now
        time.sleep(0.5)
    raise TimeoutError(f"the million campaign {campaign_id} did not close in time")


def _cpu(before: list[Any], after: list[Any]) -> float:
    return sum(a.cpu_seconds for a in after) - sum(b.cpu_seconds for b in before)


def _say(message: str) -> None:
    print(f"[bench million] {message}", file=sys.stderr, flush=True)
