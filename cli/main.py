"""``mailroom``: contacts, campaigns, jobs and delivery logs from a terminal.

Configured by ``MAILROOM_URL``, ``MAILROOM_KEY`` (and ``MAILROOM_TENANT`` for operator-wide
keys). Every command is one or a few REST calls (API.md); errors print the API's own message
and exit 1.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from cli.api import ApiFailure, MailroomApi
from cli.watch import watch_job

app = typer.Typer(help="Mailroom from the command line (MAILROOM_URL, MAILROOM_KEY).", no_args_is_help=True)
contacts_app = typer.Typer(help="The tenant's contacts.", no_args_is_help=True)
campaigns_app = typer.Typer(help="Campaigns: create and steer.", no_args_is_help=True)
jobs_app = typer.Typer(help="Jobs: watch, show, retry what failed.", no_args_is_help=True)
tenants_app = typer.Typer(help="Tenants (operator key).", no_args_is_help=True)
keys_app = typer.Typer(help="API keys (operator key).", no_args_is_help=True)
app.add_typer(contacts_app, name="contacts")
app.add_typer(campaigns_app, name="campaigns")
app.add_typer(jobs_app, name="jobs")
app.add_typer(tenants_app, name="tenants")
app.add_typer(keys_app, name="keys")

console = Console()
IMPORT_BATCH_ROWS = 1000
MAX_REJECTIONS_SHOWN = 50
CSV_HEADERS = {"Content-Type": "text/csv"}
TenantOption = Annotated[str | None, typer.Option("--tenant", help="Tenant to act on (operator-wide keys).")]


def connect(tenant: str | None = None) -> MailroomApi:
    try:
        return MailroomApi.from_environment(tenant)
    except ApiFailure as err:
        fail(err)


def fail(err: ApiFailure) -> NoReturn:
    Console(stderr=True).print(f"[red]error:[/red] {err}")
    raise typer.Exit(1)


def show(value: Any) -> None:
    console.print_json(json.dumps(value))


# -- contacts ----------------------------------------------------------------------------------


@dataclass
class CsvPart:
    """Some data rows of the file as one CSV body (with the header row), and where they came from."""

    body: str
    lines: list[int]  # the file line each data row starts on (the header is line 1)

    @property
    def last_line(self) -> int:
        return self.lines[-1]


def csv_parts(path: Path, rows_per_part: int, after_line: int = 0) -> Iterator[CsvPart]:
    """The file's data rows that start after ``after_line``, ``rows_per_part`` to a body, streamed."""
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            return
        rows: list[list[str]] = []
        lines: list[int] = []
        line = reader.line_num + 1
        for row in reader:
            if line > after_line:
                rows.append(row)
                lines.append(line)
            line = reader.line_num + 1  # a quoted cell may span several lines
            if len(rows) >= rows_per_part:
                yield CsvPart(_csv_text(header, rows), lines)
                rows, lines = [], []
        if rows:
            yield CsvPart(_csv_text(header, rows), lines)


def _csv_text(header: list[str], rows: list[list[str]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def count_rows(path: Path) -> int:
    with path.open(newline="", encoding="utf-8-sig") as handle:
        return max(0, sum(1 for _ in csv.reader(handle)) - 1)


@dataclass
class ImportCheckpoint:
    """How far an import of one file got: every data row up to ``line`` was acknowledged by the API.

    Written (atomically) after each acknowledged part, next to the file, so an interrupted
    import resumes after the last acknowledged line instead of sending those rows again.
    """

    path: Path
    size: int
    line: int = 0
    rows: int = 0
    created: int = 0
    updated: int = 0
    rejected: int = 0

    @classmethod
    def beside(cls, file: Path) -> ImportCheckpoint:
        return cls(path=file.with_name(file.name + ".import-checkpoint"), size=file.stat().st_size)

    def load(self) -> bool:
        """Take the saved progress; False when there is none. A changed file cannot resume."""
        if not self.path.exists():
            return False
        saved = json.loads(self.path.read_text())
        if saved.get("size") != self.size:
            raise ApiFailure(f"{self.path.name} was written for another version of the file "
                             "(its size changed): run again with --restart")
        for name in ("line", "rows", "created", "updated", "rejected"):
            setattr(self, name, int(saved.get(name, 0)))
        return True

    def save(self) -> None:
        fields = {"size": self.size, "line": self.line, "rows": self.rows, "created": self.created,
                  "updated": self.updated, "rejected": self.rejected}
        temporary = self.path.with_name(self.path.name + ".tmp")
        temporary.write_text(json.dumps(fields))
        os.replace(temporary, self.path)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


@contacts_app.command("import")
def import_contacts(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="CSV: email,name,<attribute>...")],
    batch: Annotated[int, typer.Option(min=1, max=100_000, help="Rows per request.")] = IMPORT_BATCH_ROWS,
    restart: Annotated[bool, typer.Option(help="Ignore a saved checkpoint; start at the first row.")] = False,
    tenant: TenantOption = None,
) -> None:
    """Upsert contacts from a CSV file of any size, streamed in parts with a progress bar.

    Resumable: after each acknowledged part a checkpoint (``<file>.import-checkpoint``) records
    the last line done, and a re-run continues after it. Bad rows are listed with their line.
    """
    api = connect(tenant)
    checkpoint = ImportCheckpoint.beside(file)
    if restart:
        checkpoint.remove()
    try:
        resumed = checkpoint.load()
    except ApiFailure as err:
        fail(err)
    if resumed:
        console.print(f"resuming after line {checkpoint.line} ({checkpoint.rows} rows already imported)")
    rejected: list[tuple[int, dict[str, Any]]] = []
    columns = (TextColumn("importing"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
               TimeRemainingColumn())
    try:
        with Progress(*columns, console=console) as progress:
            bar = progress.add_task("import", total=count_rows(file), completed=checkpoint.rows, rate="")
            started, sent = time.monotonic(), 0
            for part in csv_parts(file, batch, after_line=checkpoint.line):
                result = api.post("/contacts", content=part.body.encode(), headers=CSV_HEADERS)
                rejected += [(part.lines[r["index"]], r) for r in result["rejected"]]
                checkpoint.line, checkpoint.rows = part.last_line, checkpoint.rows + len(part.lines)
                checkpoint.created += result["created"]
                checkpoint.updated += result["updated"]
                checkpoint.rejected += len(result["rejected"])
                checkpoint.save()
                sent += len(part.lines)
                rate = f"{sent / max(time.monotonic() - started, 1e-6):,.0f} rows/s"
                progress.update(bar, completed=checkpoint.rows, rate=rate)
    except ApiFailure as err:
        for line, problem in rejected[:MAX_REJECTIONS_SHOWN]:
            console.print(f"  line {line}: {problem['field']}: {problem['message']}")
        Console(stderr=True).print(f"stopped after line {checkpoint.line}; the same command resumes there")
        fail(err)
    checkpoint.remove()
    done = checkpoint
    console.print(f"created {done.created}, updated {done.updated}, rejected {done.rejected}")
    for line, problem in rejected[:MAX_REJECTIONS_SHOWN]:
        console.print(f"  line {line}: {problem['field']}: {problem['message']}")
    if len(rejected) > MAX_REJECTIONS_SHOWN:
        console.print(f"  … and {len(rejected) - MAX_REJECTIONS_SHOWN} more")


# -- campaigns ---------------------------------------------------------------------------------


@campaigns_app.command("create")
def create_campaign(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="Campaign JSON (API.md).")],
    tenant: TenantOption = None,
) -> None:
    """Create a campaign from a JSON file; prints its id and status."""
    try:
        body = json.loads(file.read_text(encoding="utf-8"))
    except ValueError as err:
        fail(ApiFailure(f"{file} is not JSON: {err}"))
    try:
        campaign = connect(tenant).post("/campaigns", json=body)
    except ApiFailure as err:
        fail(err)
    console.print(f"campaign {campaign['id']} {campaign['status']}")


def _campaign_action(action: str, campaign_id: str, tenant: str | None) -> None:
    try:
        campaign = connect(tenant).post(f"/campaigns/{campaign_id}/{action}")
    except ApiFailure as err:
        fail(err)
    console.print(f"campaign {campaign['id']} {campaign['status']}")


@campaigns_app.command("schedule")
def schedule_campaign(
    campaign_id: str,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Run the pipeline, deliver nothing.")] = False,
    tenant: TenantOption = None,
) -> None:
    """Send now (or, with --dry-run, validate every message now and deliver none)."""
    body = {"dry_run": True} if dry_run else {}
    try:
        campaign = connect(tenant).post(f"/campaigns/{campaign_id}/schedule", json=body)
    except ApiFailure as err:
        fail(err)
    if dry_run:
        console.print(f"dry run {campaign['dry_run_job_id']} of campaign {campaign['id']} scheduled "
                      f"(mailroom jobs watch {campaign['dry_run_job_id']})")
        return
    console.print(f"campaign {campaign['id']} {campaign['status']}")


def estimate_lines(estimate: dict[str, Any]) -> list[str]:
    """An audience estimate as a person reads it (the CLI and ``make demo`` print these lines)."""
    how = "exactly" if estimate["exact"] else (
        f"estimated from {estimate['scanned']:,} contacts scanned, "
        f"between {estimate['bounds']['low']:,} and {estimate['bounds']['high']:,}")
    by_reason = sorted(estimate["suppressed"].items())
    suppressed = ", ".join(f"{n:,} {reason}" for reason, n in by_reason) or "none"
    forecast = estimate["forecast"]
    lines = [
        f"matching contacts: {estimate['matching']:,} ({how})",
        f"suppressed: {suppressed}",
        f"invalid addresses: {estimate['invalid']:,}",
        f"over max_roster: {estimate['over_limit']:,}"
        + (" (a run would be refused)" if estimate["over_limit"] else ""),
        f"would be sent: {estimate['recipients']:,}",
        f"finish: {forecast['finish_at']} ({forecast['seconds']:,} s at {forecast['emails_per_second']:,}/s "
        f"via {forecast['provider']}, bound: {forecast['bound']})",
        f"sample contact ids: {', '.join(estimate['sample'][:5]) or '-'}",
    ]
    return lines


@campaigns_app.command("estimate")
def estimate_campaign(
    campaign_id: str,
    as_json: Annotated[bool, typer.Option("--json", help="Print the API's answer as JSON.")] = False,
    tenant: TenantOption = None,
) -> None:
    """Who the campaign would reach (matching, suppressed by reason, invalid) and when it would finish."""
    try:
        estimate = connect(tenant).post(f"/campaigns/{campaign_id}/estimate", json={})
    except ApiFailure as err:
        fail(err)
    if as_json:
        show(estimate)
        return
    for line in estimate_lines(estimate):
        console.print(line)


@campaigns_app.command("pause")
def pause_campaign(campaign_id: str, tenant: TenantOption = None) -> None:
    """Pause the running job at its next chunk boundary."""
    _campaign_action("pause", campaign_id, tenant)


@campaigns_app.command("resume")
def resume_campaign(campaign_id: str, tenant: TenantOption = None) -> None:
    """Continue the paused job."""
    _campaign_action("resume", campaign_id, tenant)


@campaigns_app.command("cancel")
def cancel_campaign(campaign_id: str, tenant: TenantOption = None) -> None:
    """Cancel the running job; unsent recipients end cancelled."""
    _campaign_action("cancel", campaign_id, tenant)


@campaigns_app.command("test")
def test_campaign(
    campaign_id: str,
    to: Annotated[list[str], typer.Option("--to", help="An address to send the test to (up to 5).")],
    tenant: TenantOption = None,
) -> None:
    """Send the campaign, subject marked [Test], to a few addresses; prints the email id to follow."""
    try:
        sent = connect(tenant).post(f"/campaigns/{campaign_id}/test", json={"to": to})
    except ApiFailure as err:
        fail(err)
    console.print(f"test email {sent['id']} queued (GET /emails/{sent['id']} follows it)")


# -- jobs and deliveries -----------------------------------------------------------------------


@jobs_app.command("watch")
def watch(
    job_id: str,
    interval: Annotated[float, typer.Option(min=0.1, help="Seconds between polls.")] = 1.0,
    tenant: TenantOption = None,
) -> None:
    """A live progress bar and counts until the job closes."""
    try:
        watch_job(connect(tenant), job_id, console, interval)
    except ApiFailure as err:
        fail(err)


@jobs_app.command("show")
def show_job(job_id: str, tenant: TenantOption = None) -> None:
    """The job as JSON (status, counts, progress, eta, time to send)."""
    try:
        show(connect(tenant).get(f"/jobs/{job_id}"))
    except ApiFailure as err:
        fail(err)


@jobs_app.command("retry-failed")
def retry_failed(job_id: str, tenant: TenantOption = None) -> None:
    """Start a new job for the recipients that ended failed (asking twice gives the same job)."""
    try:
        job = connect(tenant).post(f"/jobs/{job_id}/retry-failed")
    except ApiFailure as err:
        fail(err)
    console.print(f"job {job['id']} {job['status']} (retries {job_id})")


DELIVERY_COLUMNS = ("email", "status", "reason", "provider", "attempts", "updated_at")


@app.command("deliveries")
def deliveries(
    job_id: str,
    status: Annotated[str | None, typer.Option(help="Only this status, e.g. bounced.")] = None,
    email: Annotated[str | None, typer.Option(help="Only this recipient.")] = None,
    as_csv: Annotated[bool, typer.Option("--csv", help="CSV on stdout instead of a table.")] = False,
    tenant: TenantOption = None,
) -> None:
    """A job's delivery log, as a table or CSV."""
    api = connect(tenant)
    params = {k: v for k, v in {"status": status, "email": email, "limit": 1000}.items() if v}
    try:
        if as_csv:
            sys.stdout.write(api.get(f"/jobs/{job_id}/deliveries.csv", params=params))
            return
        table = Table(*DELIVERY_COLUMNS)
        for item in api.pages(f"/jobs/{job_id}/deliveries", params):
            table.add_row(*(str(item.get(column) or "") for column in DELIVERY_COLUMNS))
    except ApiFailure as err:
        fail(err)
    console.print(table)


# -- operator ----------------------------------------------------------------------------------


@tenants_app.command("create")
def create_tenant(
    name: str,
    rate_limit_per_minute: Annotated[int | None, typer.Option(help="Send rate cap.")] = None,
    max_roster: Annotated[int | None, typer.Option(help="Largest roster a job may have.")] = None,
) -> None:
    """Create a tenant (operator key)."""
    body: dict[str, Any] = {"name": name}
    if rate_limit_per_minute is not None:
        body["rate_limit_per_minute"] = rate_limit_per_minute
    if max_roster is not None:
        body["max_roster"] = max_roster
    try:
        show(connect().post("/tenants", json=body))
    except ApiFailure as err:
        fail(err)


@tenants_app.command("update")
def update_tenant(
    tenant_id: str,
    name: Annotated[str | None, typer.Option(help="A new name.")] = None,
    providers: Annotated[str | None, typer.Option(help="Provider order, e.g. sendgrid,acs.")] = None,
    rate_limit: Annotated[int | None, typer.Option(help="Sends per minute (0 clears the cap).")] = None,
    max_roster: Annotated[int | None, typer.Option(help="Largest roster of a job (0 clears it).")] = None,
    delivery_semantics: Annotated[
        str | None, typer.Option(help="at-most-once, at-least-once or reconcile.")
    ] = None,
    sender_domain: Annotated[
        list[str] | None, typer.Option("--sender-domain", help="A domain from_email may use (repeat it).")
    ] = None,
    any_sender_domain: Annotated[
        bool, typer.Option("--any-sender-domain", help="Lift the sender domain restriction.")
    ] = False,
) -> None:
    """Change a tenant's settings (operator key); only the options given change."""
    body: dict[str, Any] = {}
    if name is not None:
        body["name"] = name
    if providers is not None:
        body["providers"] = [p.strip() for p in providers.split(",") if p.strip()]
    if rate_limit is not None:
        body["rate_limit_per_minute"] = rate_limit or None
    if max_roster is not None:
        body["max_roster"] = max_roster or None
    if delivery_semantics is not None:
        body["delivery_semantics"] = delivery_semantics
    if sender_domain:
        body["sender_domains"] = sender_domain
    if any_sender_domain:
        body["sender_domains"] = []
    try:
        show(connect().patch(f"/tenants/{tenant_id}", json=body))
    except ApiFailure as err:
        fail(err)


@app.command("forecast")
def forecast(
    as_json: Annotated[bool, typer.Option("--json", help="Print the API's answer as JSON.")] = False,
) -> None:
    """Emails scheduled per hour for the next 7 days, per provider (operator or support key)."""
    try:
        answer = connect().get("/forecast")
    except ApiFailure as err:
        fail(err)
    if as_json:
        show(answer)
        return
    table = Table("hour (UTC)", "emails", *sorted(answer["providers"]))
    for hour in answer["hours"]:
        if hour["emails"]:
            table.add_row(hour["hour"], f"{hour['emails']:,}",
                          *(f"{hour['providers'].get(p, 0):,}" for p in sorted(answer["providers"])))
    console.print(table)
    console.print(f"{answer['emails']:,} emails in {len(answer['runs'])} scheduled runs, "
                  f"{answer['start']} to {answer['end']}")


@tenants_app.command("list")
def list_tenants() -> None:
    """Tenants (operator or support key)."""
    try:
        table = Table("id", "name")
        for tenant in connect().pages("/tenants"):
            table.add_row(tenant["id"], tenant["name"])
    except ApiFailure as err:
        fail(err)
    console.print(table)


@keys_app.command("create")
def create_key(
    tenant: Annotated[str | None, typer.Option("--tenant", help="The tenant the key is for.")] = None,
    role: Annotated[str, typer.Option(help="tenant or support")] = "tenant",
) -> None:
    """Create an API key for a tenant, or (without --tenant) an operator-wide support key.

    The key is shown once.
    """
    try:
        api = connect()
        made = api.post(f"/tenants/{tenant}/keys" if tenant else "/keys", json={"role": role})
    except ApiFailure as err:
        fail(err)
    show(made)


if __name__ == "__main__":
    app()
