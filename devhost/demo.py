"""``make demo``: one real campaign through the whole local stack, start to finish.

Starts Azurite, the SendGrid simulator and a host process; creates a tenant and a key
through the API; imports 5,000 contacts; suppresses a few; creates a campaign whose
criteria select a subset; follows the job with a progress bar; prints the counts, the
time it took and where the delivery log is; stops everything. Exits non-zero if the
counts do not add up or the simulator saw anyone twice.
"""

from __future__ import annotations

import csv
import io
import random
import sys
import time
from collections import Counter
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from cli.main import estimate_lines
from devhost.stack import Stack, stop_on_sigterm, wait_for

CONTACTS = 5_000
TERMS = ["Spring 2024", "Fall 2023", "Spring 2023"]
COURSES = ["CSE456", "CSE142", "MATH308", "PHYS121", "ENGL131", "CSE373"]
FIRST = ["Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Radia", "Tim"]

console = Console()


def make_contacts(n: int, seed: int = 7) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        rows.append(
            {
                "email": f"student{i:05d}@uni.example",
                "name": f"{rng.choice(FIRST)} {chr(65 + i % 26)}.",
                "attributes": {
                    "term": rng.choice(TERMS),
                    "courses": rng.sample(COURSES, 2),
                    "year": rng.randint(1, 4),
                },
            }
        )
    return rows


CAMPAIGN = {
    "name": "Spring 2024 CSE456 course survey",
    "template": {
        "subject": "How was {{ contact.attributes.term }}?",
        "html": "<p>Hi {{ contact.name }},</p><p>Tell us about CSE456.</p>"
        '<p><a href="{{ unsubscribe_url }}">Unsubscribe</a></p>',
        "text": "Hi {{ contact.name }}, tell us about CSE456. Unsubscribe: {{ unsubscribe_url }}",
        "from_email": "surveys@uni.example",
        "from_name": "Surveys",
        "reply_to": "help@uni.example",
    },
    "criteria": {
        "all": [
            {"field": "attributes.term", "op": "eq", "value": "Spring 2024"},
            {"field": "attributes.courses", "op": "contains", "value": "CSE456"},
        ]
    },
}


def expected_roster(rows: list[dict[str, Any]]) -> list[str]:
    return [
        r["email"]
        for r in rows
        if r["attributes"]["term"] == "Spring 2024" and "CSE456" in r["attributes"]["courses"]
    ]


def check(response: httpx.Response) -> Any:
    if response.status_code >= 400:
        raise SystemExit(f"API error {response.status_code}: {response.text[:500]}")
    return response.json() if response.content else None


def run_demo() -> int:
    stop_on_sigterm()  # a SIGTERM stops what the demo started, as Ctrl-C does
    started = time.monotonic()
    with console.status("Starting Azurite, the SendGrid simulator and the Functions host…"):
        stack = Stack(workers=1, provider_events=True).start()
    try:
        console.print(
            f"[green]✓[/] stack up in {time.monotonic() - started:.1f}s  API: {stack.base_url}/api/docs"
        )
        return drive(stack)
    finally:
        with console.status("Stopping what the demo started…"):
            stack.stop()


def drive(stack: Stack) -> int:
    api = httpx.Client(base_url=f"{stack.base_url}/api/v1", timeout=60)
    admin = {"Authorization": f"Bearer {stack.admin_key}"}
    tenant = check(api.post("/tenants", json={"name": "State University"}, headers=admin))
    key = check(api.post(f"/tenants/{tenant['id']}/keys", json={"role": "tenant"}, headers=admin))["key"]
    auth = {"Authorization": f"Bearer {key}"}
    console.print(f"[green]✓[/] tenant {tenant['id']} with a tenant key")

    rows = with_feedback_addresses(make_contacts(CONTACTS))
    t0 = time.monotonic()
    imported = check(api.post("/contacts", json=rows, headers=auth))
    console.print(
        f"[green]✓[/] imported {imported['created']} contacts in {time.monotonic() - t0:.1f}s "
        f"({len(imported['rejected'])} rejected)"
    )
    roster = expected_roster(rows)
    suppressed = roster[:3]
    for email in suppressed:
        check(api.post("/suppressions", json={"email": email, "reason": "unsubscribed"}, headers=auth))
    console.print(f"[green]✓[/] suppressed {len(suppressed)} addresses of the roster")

    t_send = time.monotonic()
    campaign = check(api.post("/campaigns", json=CAMPAIGN, headers=auth))
    estimate = check(api.post(f"/campaigns/{campaign['id']}/estimate", json={}, headers=auth))
    console.print(f"Before pressing send (POST /campaigns/{campaign['id']}/estimate):")
    for line in estimate_lines(estimate):
        console.print(f"  {line}")
    if estimate["matching"] != len(roster):
        console.print(f"[red]✗ the estimate says {estimate['matching']} contacts, "
                      f"the criteria select {len(roster)}[/]")
        return 1
    check(api.post(f"/campaigns/{campaign['id']}/schedule", json={}, headers=auth))
    console.print(
        f"[green]✓[/] campaign {campaign['id']} scheduled now; criteria select {len(roster)} contacts"
    )

    job_id = wait_for(
        lambda: check(api.get(f"/campaigns/{campaign['id']}", headers=auth)).get("current_job_id"),
        60,
        "the Campaign Manager to start the job",
        0.3,
    )
    job = follow(api, auth, job_id)
    elapsed = time.monotonic() - t_send

    print_counts(job)
    closed_counts = dict(job["counts"])
    job = await_feedback(api, auth, job)
    show_a_timeline(api, auth, job_id)
    logged = every_delivery_logged(api, auth, job_id, job["roster_size"])
    sent = Counter(m["to"] for m in stack.simulator.messages())
    twice = [e for e, n in sent.items() if n > 1]
    adds_up = sum(job["counts"].values()) == job["roster_size"] == len(roster)
    console.print(
        f"Roster {job['roster_size']} · sent {closed_counts['sent']} · "
        f"time to send {elapsed:.1f}s · {closed_counts['sent'] / max(elapsed, 0.001):.0f} emails/s"
    )
    console.print(f"SendGrid simulator accepted {sum(sent.values())} messages; sent twice: {len(twice)}")
    console.print(
        "Delivery log: "
        f"GET {stack.base_url}/api/v1/jobs/{job_id}/deliveries (or deliveries.csv); "
        f"table Deliveries, PartitionKey '{job_id}-<task>' in Azurite"
    )
    console.print(f"Exported at close: blob delivery-logs/{tenant['id']}/{job_id}.csv (and .summary.json)")
    if not logged:
        console.print("[red]✗ a delivery has no timeline, or the CSV does not have one row per recipient[/]")
        return 1
    if not adds_up or twice or job["status"] != "completed":
        console.print("[red]✗ counts do not add up, or someone was sent twice[/]")
        return 1
    console.print("[green]✓ every recipient accounted for[/]")
    return 0


# Local parts the SendGrid simulator answers with bounces, complaints and deferrals.
FEEDBACK_PREFIXES = ["bounce-"] * 3 + ["complain-"] * 2 + ["slow-"] * 3


def with_feedback_addresses(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Give a few roster members (after the three the demo suppresses) addresses with bad news."""
    roster = set(expected_roster(rows)[3:3 + len(FEEDBACK_PREFIXES)])
    prefixes = iter(FEEDBACK_PREFIXES)
    for row in rows:
        if row["email"] in roster:
            row["email"] = next(prefixes) + row["email"]
    return rows


def await_feedback(api: httpx.Client, auth: dict[str, str], job: dict[str, Any],
                   timeout: float = 30) -> dict[str, Any]:
    """Poll the closed job while the provider's events move ``sent`` to delivered/bounced/complained."""
    started = time.monotonic()
    deadline = started + timeout
    with console.status("Waiting for SendGrid's delivery events (signed webhooks)…"):
        while job["counts"]["sent"] > 0 and time.monotonic() < deadline:
            time.sleep(0.5)
            job = check(api.get(f"/jobs/{job['id']}", headers=auth))
    counts = job["counts"]
    console.print(
        f"[green]✓[/] provider feedback: delivered {counts['delivered']} · bounced {counts['bounced']} · "
        f"complained {counts['complained']} · deferred {counts['deferred']} · still sent {counts['sent']} "
        f"({time.monotonic() - started:.1f}s after the job closed)"
    )
    print_counts(job)
    return job


def show_a_timeline(api: httpx.Client, auth: dict[str, str], job_id: str) -> None:
    """What support staff see for one bounced recipient."""
    params = {"status": "bounced", "limit": 1}
    page = check(api.get(f"/jobs/{job_id}/deliveries", params=params, headers=auth))
    if not page["items"]:
        return
    item = page["items"][0]
    console.print(f"Timeline of a bounced delivery (contact {item['contact_id']}):")
    for event in item["events"]:
        console.print(f"  {event['at']}  {event['type']:<10} {event.get('detail') or ''}")


def every_delivery_logged(api: httpx.Client, auth: dict[str, str], job_id: str, roster: int) -> bool:
    """Every delivery has a timeline and the CSV export has one row per recipient."""
    timelines, token = 0, None
    while True:
        params = {"limit": 1000, **({"continuation": token} if token else {})}
        page = check(api.get(f"/jobs/{job_id}/deliveries", params=params, headers=auth))
        timelines += sum(1 for item in page["items"] if item["events"])
        token = page["continuation"]
        if not token:
            break
    exported = api.get(f"/jobs/{job_id}/deliveries.csv", headers=auth).text
    rows = len(list(csv.DictReader(io.StringIO(exported))))
    console.print(f"[green]✓[/] {timelines} deliveries with a timeline; the CSV export has {rows} rows")
    return timelines == rows == roster


def follow(api: httpx.Client, auth: dict[str, str], job_id: str, timeout: float = 600) -> dict[str, Any]:
    """A live progress bar until the Status Manager closes the job."""
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
    )
    deadline = time.monotonic() + timeout
    with Progress(*columns, console=console) as progress:
        bar = progress.add_task("sending", total=1.0, detail="")
        while True:
            job = check(api.get(f"/jobs/{job_id}", headers=auth))
            done = job["roster_size"] - job["counts"]["pending"] - job["counts"]["sending"]
            progress.update(
                bar,
                completed=job["progress"] or 0.0,
                description=job["status"],
                detail=f"{done}/{job['roster_size']} recipients",
            )
            if job["status"] in ("completed", "cancelled", "failed"):
                progress.update(bar, completed=1.0)
                return job
            if time.monotonic() > deadline:
                raise SystemExit(f"job {job_id} did not finish within {timeout:.0f}s")
            time.sleep(0.5)


def print_counts(job: dict[str, Any]) -> None:
    table = Table(title=f"Job {job['id']} — {job['status']}")
    table.add_column("status")
    table.add_column("recipients", justify="right")
    for status, n in job["counts"].items():
        if n:
            table.add_row(status, str(n))
    table.add_row("[bold]total[/]", f"[bold]{sum(job['counts'].values())}[/]")
    console.print(table)


if __name__ == "__main__":
    try:
        sys.exit(run_demo())
    except KeyboardInterrupt:
        sys.exit(130)
