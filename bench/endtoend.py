"""Mailroom end to end through the API and real host processes: import → schedule → closed job.

Per run: emails/s (schedule to closed), Python CPU µs per email summed over the host
processes (from /proc, so every thread counts: API, timers, pollers, sends), storage
requests per email by operation (the hosts' counters), peak RSS per host, and the wall
time of each stage read from the job's own timestamps.
"""

from __future__ import annotations

import json
import secrets
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.procstats import diff_counts
from bench.profile import Profiler, top_functions
from bench.stack import BenchStack
from core.clock import parse_iso
from core.contact_tables import ContactTables
from core.errors import StorageError
from core.ids import contact_id_for
from core.storage import JOBS, TENANTS, Storage

IMPORT_CHUNK = 20_000  # well under MAX_REQUEST_BYTES per request
# Larger rosters are written straight to the table, so the 10k/100k figures stay comparable
# with earlier runs; ``--million-recipients`` (bench.million) imports through the API instead.
API_IMPORT_LIMIT = 20_000
WRITE_CHUNK = 10_000
FAIRNESS_SAMPLES = 3
TEMPLATE = {
    "subject": "Hello {{ contact.name }}",
    "text": "Hi {{ contact.name }}, your plan is {{ contact.attributes.plan }}.\n"
    "Unsubscribe: {{ unsubscribe_url }}",
    "html": "<p>Hi {{ contact.name }}, your plan is {{ contact.attributes.plan }}.</p>"
    '<p><a href="{{ unsubscribe_url }}">Unsubscribe</a></p>',
    "from_email": "news@example.org",
    "from_name": "Bench",
}


@dataclass
class Tenant:
    id: str
    api: httpx.Client

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.api.request(method, path, **kwargs)
        if response.status_code >= 400:
            raise RuntimeError(f"{method} {path} → {response.status_code} {response.text[:300]}")
        return response.json() if response.content else None


def new_tenant(stack: BenchStack, name: str) -> Tenant:
    with stack.admin_client() as admin:
        tenant = admin.post("/tenants", json={"name": name}).json()
        key = admin.post(f"/tenants/{tenant['id']}/keys", json={"role": "tenant"}).json()["key"]
    api = httpx.Client(
        base_url=f"{stack.base_url}/api/v1", headers={"Authorization": f"Bearer {key}"}, timeout=600
    )
    return Tenant(tenant["id"], api)


def import_contacts(tenant: Tenant, count: int) -> float:
    """POST the roster in chunks; returns the seconds it took."""
    tag = secrets.token_hex(3)
    started = time.monotonic()
    for first in range(0, count, IMPORT_CHUNK):
        rows = [
            {
                "email": f"r{i:07d}-{tag}@example.com",
                "name": f"Recipient {i}",
                "attributes": {"plan": "pro" if i % 3 == 0 else "free", "n": i},
            }
            for i in range(first, min(count, first + IMPORT_CHUNK))
        ]
        result = tenant.call("POST", "/contacts", json=rows)
        if result["rejected"]:
            raise RuntimeError(f"import rejected {len(result['rejected'])} rows")
    return time.monotonic() - started


def write_contacts(
    storage: Storage, tenant_id: str, count: int, progress: Callable[[int], None] | None = None
) -> float:
    salt = storage.table(TENANTS).get("tenant", tenant_id)["contact_salt"]
    tag = secrets.token_hex(3)
    started = time.monotonic()
    for first in range(0, count, WRITE_CHUNK):
        rows = []
        for i in range(first, min(count, first + WRITE_CHUNK)):
            email = f"r{i:07d}-{tag}@example.com"
            rows.append(
                {
                    "PartitionKey": tenant_id,
                    "RowKey": contact_id_for(salt, email),
                    "email": email,
                    "name": f"Recipient {i}",
                    "attributes": json.dumps({"plan": "pro" if i % 3 == 0 else "free"}),
                    "lists": "[]",
                    "state": "active",
                }
            )
        _upsert_with_retries(storage, rows)
        if progress is not None and (first + WRITE_CHUNK) % 100_000 == 0:
            progress(first + WRITE_CHUNK)
    return time.monotonic() - started


def _upsert_with_retries(storage: Storage, rows: list[dict[str, Any]], attempts: int = 5) -> None:
    """Azurite resets a connection now and then once its store holds ~10^6 rows; upserts repeat safely."""
    for attempt in range(1, attempts + 1):
        try:
            ContactTables(storage).batch_upsert(rows)
            return
        except StorageError:
            if attempt == attempts:
                raise
            time.sleep(2.0 * attempt)


def schedule_campaign(tenant: Tenant, name: str) -> str:
    campaign = tenant.call("POST", "/campaigns", json={"name": name, "template": TEMPLATE})
    tenant.call("POST", f"/campaigns/{campaign['id']}/schedule", json={})
    return campaign["id"]


def job_entity(storage: Storage, tenant: Tenant, campaign_id: str) -> dict[str, Any] | None:
    """The job row itself (the bench reads the table so its polling costs the hosts nothing)."""
    from core.storage import CAMPAIGNS

    campaign = storage.table(CAMPAIGNS).find(tenant.id, campaign_id)
    job_id = (campaign or {}).get("current_job_id")
    return storage.table(JOBS).find(tenant.id, job_id) if job_id else None


def wait_closed(
    storage: Storage, tenant: Tenant, campaign_id: str, timeout: float, on_progress: Any = None
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = job_entity(storage, tenant, campaign_id)
        if job is not None and job.get("status") in ("completed", "cancelled", "failed"):
            return job
        if on_progress is not None and job is not None:
            on_progress(job)
        time.sleep(0.5)
    raise TimeoutError(f"campaign {campaign_id} did not close within {timeout:.0f}s")


def _seconds(job: dict[str, Any], start: str, end: str) -> float | None:
    if not job.get(start) or not job.get(end):
        return None
    return (parse_iso(job[end]) - parse_iso(job[start])).total_seconds()


def run_mailroom(
    stack: BenchStack,
    recipients: int,
    fairness: bool = False,
    timeout: float = 3600,
    profile: Path | None = None,
) -> dict:
    """One campaign of ``recipients`` through the stack.

    With ``fairness`` a 100-recipient job of another tenant runs three times idle and three times
    during this one (medians compared: a small job's time is mostly the wait for the Status
    Manager's next tick, so one sample of each is a coin toss on the timer's phase); with
    ``profile`` host 0 is sampled by py-spy while the job runs.
    """
    assert stack.azurite is not None
    storage = Storage(stack.azurite.connection_string)
    big = new_tenant(stack, "bench big")
    import_samples = stack.host_samples()
    via_api = recipients <= API_IMPORT_LIMIT
    if via_api:
        import_seconds = import_contacts(big, recipients)
    else:
        import_seconds = write_contacts(storage, big.id, recipients)
    after_import = stack.host_samples()
    import_counts = stack.request_counts()["storage"]

    small = None
    idle_small: list[float] = []
    if fairness:
        small = new_tenant(stack, "bench small")
        import_contacts(small, 100)
        idle_small = [_small_job_seconds(storage, small) for _ in range(FAIRNESS_SAMPLES)]

    counts_before = stack.request_counts()
    cpu_before = stack.host_samples()
    profiler = Profiler(stack.processes[0].pid, profile) if profile is not None else None
    scheduled = time.monotonic()
    campaign_id = schedule_campaign(big, "bench big")
    loaded_small: list[float] = []

    def run_small_jobs_once(job: dict[str, Any]) -> None:
        if small is None or loaded_small or int(job.get("tasks_done") or 0) < 2:
            return
        loaded_small.extend(_small_job_seconds(storage, small) for _ in range(FAIRNESS_SAMPLES))

    job = wait_closed(storage, big, campaign_id, timeout, run_small_jobs_once if fairness else None)
    wall = time.monotonic() - scheduled
    cpu_after = stack.host_samples()
    if profiler is not None:
        profiler.stop()
    counts_after = stack.request_counts()
    app_requests = diff_counts(counts_after["storage"], counts_before["storage"])
    polling_requests = diff_counts(counts_after["polling"], counts_before["polling"])
    roster = int(job.get("roster_size") or 0)
    cpu = sum(a.cpu_seconds for a in cpu_after) - sum(b.cpu_seconds for b in cpu_before)
    import_cpu = sum(a.cpu_seconds for a in after_import) - sum(b.cpu_seconds for b in import_samples)
    result: dict[str, Any] = {
        "recipients": recipients,
        "roster_size": roster,
        "sent": int(job.get("count_sent") or 0),
        "counts": {k.removeprefix("count_"): v for k, v in job.items() if k.startswith("count_") and v},
        "hosts": len(cpu_after),
        "seconds": wall,
        "emails_per_second": roster / wall if wall else 0.0,
        "storage_requests_per_email": sum(app_requests.values()) / max(roster, 1),
        "host_polling_requests_per_email": sum(polling_requests.values()) / max(roster, 1),
        "requests_by_operation": app_requests,
        "host_polling_by_operation": polling_requests,
        "cpu_us_per_email": cpu / max(roster, 1) * 1e6,
        "peak_rss_mb": max(s.peak_rss_mb for s in cpu_after),
        "peak_rss_mb_per_host": [round(s.peak_rss_mb, 1) for s in cpu_after],
        "stages": {
            "import_via": "api" if via_api else "direct table writes (lean batches)",
            "import_seconds": import_seconds,
            "import_contacts_per_second": recipients / import_seconds if import_seconds else 0.0,
            "import_cpu_us_per_contact": import_cpu / max(recipients, 1) * 1e6,
            "import_storage_requests": sum(import_counts.values()),
            "pickup_seconds": _seconds(job, "created_at", "started_at"),
            "expansion_seconds": _seconds(job, "started_at", "expanded_at"),
            "after_expansion_seconds": _seconds(job, "expanded_at", "completed_at"),
            "job_seconds": _seconds(job, "created_at", "completed_at"),
        },
    }
    if profile is not None and profile.exists():
        result["profile"] = {"file": str(profile), **top_functions(profile)}
    if fairness and idle_small and loaded_small:
        result["small_job_idle_seconds"] = statistics.median(idle_small)
        result["small_job_loaded_seconds"] = statistics.median(loaded_small)
        result["small_job_samples"] = {"idle": idle_small, "loaded": loaded_small}
        result["fairness_ratio"] = result["small_job_loaded_seconds"] / result["small_job_idle_seconds"]
    return result


def _small_job_seconds(storage: Storage, tenant: Tenant) -> float:
    """Schedule → closed for a 100-recipient campaign of ``tenant``."""
    started = time.monotonic()
    campaign_id = schedule_campaign(tenant, f"small {secrets.token_hex(2)}")
    wait_closed(storage, tenant, campaign_id, 600)
    return time.monotonic() - started
