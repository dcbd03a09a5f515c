"""The million phase: a roster imported through the API like a user's, then one campaign to all.

``python -m bench --million-recipients 1000000`` (``BENCH_ARGS`` in ``make bench``). Unlike the
other phases nothing is written straight to the table: the roster goes through
``POST /contacts`` in parts of ``IMPORT_PART`` rows (what ``mailroom contacts import`` does;
smaller when the slice is),
then one campaign to every contact runs to its close. Reported per slice of ``slice_size``
(100k by default): import contacts/s and expansion recipients/s, so a cost that grows with the
table shows as a falling rate, each beside Azurite's CPU seconds in that slice (contacts per
Azurite CPU-second is the emulator's own per-row cost, less sensitive to the other processes on a
shared machine than the wall rate); and for the whole run emails/s, storage requests and host CPU
per email, peak RSS per host (sampled every poll and the kernel's high-water mark), the final
counts (they must add up to the roster) and the simulator's record (each recipient accepted once).

Each slice is printed to stderr when it completes and handed to ``save`` (``python -m bench``
writes the results JSON then), so a run cut short still leaves its figures.
"""

from __future__ import annotations

import secrets
import sys
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from bench.endtoend import job_entity, new_tenant, schedule_campaign
from bench.procstats import ProcessSample, diff_counts, sample
from bench.stack import BenchStack
from core.storage import Storage

IMPORT_PART = 5_000  # rows per POST /contacts, as a CLI import with --batch 5000

Save = Callable[[dict[str, Any]], None]


class _Watch:
    """Azurite's CPU and RSS, and the hosts' RSS, sampled as the run goes (peaks kept)."""

    def __init__(self, stack: BenchStack) -> None:
        assert stack.azurite is not None
        self.stack = stack
        self.azurite_pid = stack.azurite.process.pid
        self.peak_host_rss: dict[int, float] = {}
        self.peak_azurite_rss = 0.0

    def azurite(self) -> ProcessSample:
        s = sample(self.azurite_pid)
        self.peak_azurite_rss = max(self.peak_azurite_rss, s.rss_mb)
        return s

    def hosts(self) -> list[ProcessSample]:
        samples = self.stack.host_samples()
        for s in samples:
            self.peak_host_rss[s.pid] = max(self.peak_host_rss.get(s.pid, 0.0), s.rss_mb)
        return samples


def run_million(
    recipients: int,
    slice_size: int = 100_000,
    timeout: float = 6 * 3600,
    save: Save | None = None,
) -> dict[str, Any]:
    """Import ``recipients`` contacts through the API, send one campaign to all, measure by slice."""
    out: dict[str, Any] = {"recipients": recipients, "slice_size": slice_size, "phase": "import"}

    def checkpoint() -> None:
        if save is not None:
            save(out)

    with BenchStack(workers=1) as stack:
        assert stack.azurite is not None
        storage = Storage(stack.azurite.connection_string)
        watch = _Watch(stack)
        tenant = new_tenant(stack, "bench million")
        before_import = watch.hosts()
        out["import_slices"] = []
        _import_through_api(tenant, recipients, slice_size, watch, out["import_slices"], checkpoint)
        out["import_contacts_per_second_by_slice"] = [s["contacts_per_second"] for s in out["import_slices"]]
        out["import_cpu_us_per_contact"] = _cpu(before_import, watch.hosts()) / recipients * 1e6
        out["phase"] = "campaign"
        checkpoint()

        counts_before = stack.request_counts()
        cpu_before = watch.hosts()
        started = time.monotonic()
        campaign_id = schedule_campaign(tenant, "bench million")
        out["expansion_slices"] = []
        job = _follow_job(
            storage, stack, tenant, campaign_id, slice_size, started + timeout, watch,
            out["expansion_slices"], checkpoint,
        )
        wall = time.monotonic() - started
        cpu_after = watch.hosts()
        counts_after = stack.request_counts()
        requests = diff_counts(counts_after["storage"], counts_before["storage"])
        roster = int(job.get("roster_size") or 0)
        counts = {k.removeprefix("count_"): int(v) for k, v in job.items() if k.startswith("count_") and v}
        per_address = Counter(m["to"] for m in stack.simulator.messages())
        out.update({
            "phase": "closed",
            "expansion_recipients_per_second_by_slice": [
                s["recipients_per_second"] for s in out["expansion_slices"]
            ],
            "status": job.get("status"),
            "roster_size": roster,
            "counts": counts,
            "counts_add_up": sum(counts.values()) == roster == recipients,
            "simulator_accepted": sum(per_address.values()),
            "simulator_distinct": len(per_address),
            "sent_twice": sum(1 for n in per_address.values() if n > 1),
            "seconds": wall,
            "emails_per_second": roster / wall if wall else 0.0,
            "storage_requests_per_email": sum(requests.values()) / max(roster, 1),
            "requests_by_operation": requests,
            "cpu_us_per_email": _cpu(cpu_before, cpu_after) / max(roster, 1) * 1e6,
            # VmHWM: the kernel's high-water mark over the host's life (import included).
            "peak_rss_mb_per_host": [round(s.peak_rss_mb, 1) for s in cpu_after],
            "peak_rss_mb_per_host_sampled": [round(v, 1) for v in watch.peak_host_rss.values()],
            "azurite_peak_rss_mb": round(watch.peak_azurite_rss, 1),
        })
        checkpoint()
        _say(f"closed: {job.get('status')}, counts {counts}, simulator accepted "
             f"{out['simulator_accepted']:,} ({out['simulator_distinct']:,} distinct, {out['sent_twice']} "
             f"twice), {out['emails_per_second']:,.0f} emails/s, peak RSS per host "
             f"{out['peak_rss_mb_per_host']} MB")
        return out


def _import_through_api(
    tenant: Any, recipients: int, slice_size: int, watch: _Watch, slices: list[dict[str, Any]],
    checkpoint: Callable[[], None],
) -> None:
    """POST the roster in parts; one record per slice (wall and Azurite CPU), saved as it completes."""
    tag = secrets.token_hex(3)
    phase_started = slice_started = time.monotonic()
    azurite_before = watch.azurite().cpu_seconds
    hosts_before = watch.hosts()
    part = min(IMPORT_PART, slice_size)  # a slice ends on a part's end
    for first in range(0, recipients, part):
        rows = [
            {"email": f"m{i:07d}-{tag}@example.com", "name": f"Recipient {i}",
             "attributes": {"plan": "pro" if i % 3 == 0 else "free", "n": i}}
            for i in range(first, min(recipients, first + part))
        ]
        result = tenant.call("POST", "/contacts", json=rows)
        if result["rejected"] or result["created"] != len(rows):
            raise RuntimeError(f"import part at {first}: {result['created']} created, "
                               f"{len(result['rejected'])} rejected")
        done = first + len(rows)
        if done % slice_size == 0 or done == recipients:
            now = time.monotonic()
            azurite = watch.azurite()
            hosts = watch.hosts()
            contacts = done - len(slices) * slice_size
            seconds = now - slice_started
            azurite_cpu = azurite.cpu_seconds - azurite_before
            slices.append({
                "upto": done,
                "seconds": round(seconds, 1),
                "elapsed_seconds": round(now - phase_started, 1),
                "contacts_per_second": round(contacts / seconds, 1),
                "azurite_cpu_seconds": round(azurite_cpu, 1),
                "contacts_per_azurite_cpu_second": round(contacts / max(azurite_cpu, 1e-6), 1),
                "host_cpu_seconds": round(_cpu(hosts_before, hosts), 1),
                "azurite_rss_mb": round(azurite.rss_mb, 1),
                "host_rss_mb": [round(h.rss_mb, 1) for h in hosts],
            })
            s = slices[-1]
            _say(f"imported {done:,} through the API in {s['elapsed_seconds']:,.0f} s: last slice "
                 f"{s['contacts_per_second']:,.0f} contacts/s, "
                 f"{s['contacts_per_azurite_cpu_second']:,.0f} per Azurite CPU-s, "
                 f"Azurite RSS {s['azurite_rss_mb']:,.0f} MB")
            checkpoint()
            slice_started, azurite_before, hosts_before = now, azurite.cpu_seconds, hosts


def _follow_job(
    storage: Storage, stack: BenchStack, tenant: Any, campaign_id: str, slice_size: int, deadline: float,
    watch: _Watch, slices: list[dict[str, Any]], checkpoint: Callable[[], None],
) -> dict[str, Any]:
    """Poll the job until it closes; one record per slice of the roster expanded, saved as it completes."""
    slice_started: float | None = None
    phase_started = time.monotonic()
    azurite_before = watch.azurite().cpu_seconds
    hosts_before = watch.hosts()
    last_said = 0.0
    while time.monotonic() < deadline:
        job = job_entity(storage, tenant, campaign_id)
        now = time.monotonic()
        watch.hosts()
        if job is not None:
            if slice_started is None and job.get("started_at"):
                slice_started = now
            expanded = int(job.get("roster_size") or 0)
            # Slices completed since the last record (one poll may cross several: one record then).
            upto = (expanded // slice_size) * slice_size
            done_before = slices[-1]["upto"] if slices else 0
            if slice_started is not None and upto > done_before:
                azurite = watch.azurite()
                hosts = watch.hosts()
                seconds = max(now - slice_started, 1e-6)
                azurite_cpu = azurite.cpu_seconds - azurite_before
                recipients = upto - done_before
                sent = stack.simulator.stats()["messages"]
                slices.append({
                    "upto": upto,
                    "recipients": recipients,
                    "seconds": round(seconds, 1),
                    "elapsed_seconds": round(now - phase_started, 1),
                    "recipients_per_second": round(recipients / seconds, 1),
                    "azurite_cpu_seconds": round(azurite_cpu, 1),
                    "recipients_per_azurite_cpu_second": round(recipients / max(azurite_cpu, 1e-6), 1),
                    "host_cpu_seconds": round(_cpu(hosts_before, hosts), 1),
                    "simulator_accepted_so_far": sent,
                    "azurite_rss_mb": round(azurite.rss_mb, 1),
                    "host_rss_mb": [round(h.rss_mb, 1) for h in hosts],
                })
                s = slices[-1]
                _say(f"expanded {s['upto']:,} in {s['elapsed_seconds']:,.0f} s: last slice "
                     f"{s['recipients_per_second']:,.0f} recipients/s, "
                     f"{s['recipients_per_azurite_cpu_second']:,.0f} per Azurite CPU-s; "
                     f"{sent:,} accepted by the simulator so far, host RSS "
                     f"{s['host_rss_mb']} MB")
                checkpoint()
                slice_started, azurite_before, hosts_before = now, azurite.cpu_seconds, hosts
            if job.get("status") in ("completed", "cancelled", "failed"):
                return job
            if now - last_said >= 60:
                _say(f"job {job.get('status')}: roster {expanded:,}, "
                     f"tasks done {job.get('tasks_done') or 0}, "
                     f"{stack.simulator.stats()['messages']:,} accepted by the simulator, host RSS peak "
                     f"{[round(v) for v in watch.peak_host_rss.values()]} MB")
                last_said = now
        time.sleep(0.5)
    raise TimeoutError(f"the million campaign {campaign_id} did not close in time")


def _cpu(before: list[Any], after: list[Any]) -> float:
    return sum(a.cpu_seconds for a in after) - sum(b.cpu_seconds for b in before)


def _say(message: str) -> None:
    print(f"[bench million {datetime.now(UTC):%H:%M:%S}] {message}", file=sys.stderr, flush=True)
