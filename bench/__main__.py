"""``python -m bench`` (``make bench``): Mailroom against Azurite's ceiling and the seed design.

One run prints a table and writes ``bench/results/bench-<UTC time>.json``. Every figure
comes from this run on this machine, so compare ratios, not absolutes: the machine is
shared and noisy. Phases (each on a fresh stack, so one cannot slow the next):

1. ceiling: batched writes/s through the SDK and the lean client, queue send and receive+delete/s;
2. Mailroom end to end at each ``--recipients`` size (1 host); the largest also measures fairness;
3. the seed design (``bench.baseline``) at ``--baseline-recipients``;
4. scale-out: 1, 2 and 3 hosts at ``--scale-recipients``;
5. with ``--expansion-recipients N``: roster expansion only (``--expansion-on-disk``: Azurite on disk);
6. with ``--million-recipients N`` (e.g. 1000000): N contacts imported through the API, one campaign to
   all of them, import and expansion rates per ``--million-slice`` (``bench.million``).
7. SMTP: the same end-to-end run at ``--smtp-recipients`` with ``EMAIL_PROVIDER=smtp`` against the
   stack's local SMTP sink (``devhost/smtp_sink.py``), its CPU per email beside the SendGrid path's.
"""

from __future__ import annotations

import argparse
import json
import platform
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import profile
from bench.ceiling import measure_ceiling
from bench.cost import PRICES_AS_OF, usd_per_million_emails
from bench.endtoend import run_mailroom
from bench.expansion import run_expansion
from bench.million import run_million
from bench.report import render_table
from bench.stack import BENCH_SETTINGS, BenchStack
from core.settings import PROJECT_ROOT
from devhost.stack import SIMULATOR_KEY

RESULTS = PROJECT_ROOT / "bench" / "results"
# The host settings that select a SendGrid path (issue 18): the default batch size, or none.
SEND_PATH_SETTINGS: dict[str, dict[str, str]] = {"batched": {}, "per-recipient": {"SENDGRID_BATCH_SIZE": "0"}}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--recipients",
        type=int,
        nargs="*",
        default=[10_000, 100_000],
        help="end-to-end roster sizes (default 10000 100000); 1000000 adds the 1M case",
    )
    parser.add_argument("--baseline-recipients", type=int, default=10_000)
    parser.add_argument("--scale-recipients", type=int, default=10_000)
    parser.add_argument("--scale-hosts", type=int, nargs="*", default=[1, 2, 3])
    parser.add_argument(
        "--expansion-recipients",
        type=int,
        default=0,
        help="also expand a roster this large (no sending)",
    )
    parser.add_argument(
        "--expansion-on-disk",
        action="store_true",
        help="Azurite keeps its data on disk for the expansion run (slow: it re-saves everything often)",
    )
    parser.add_argument(
        "--million-recipients",
        type=int,
        default=0,
        help="also import this many contacts through the API and send one campaign to all (bench.million)",
    )
    parser.add_argument("--million-slice", type=int, default=100_000, help="rates are reported per slice")
    parser.add_argument(
        "--smtp-recipients",
        type=int,
        default=10_000,
        help="the SMTP phase's roster (1 host, local SMTP sink); 0 skips it",
    )
    parser.add_argument(
        "--send-paths",
        nargs="*",
        choices=["batched", "per-recipient"],
        default=["batched", "per-recipient"],
        help="SendGrid paths of the largest end-to-end run (default both, side by side): batched "
        "(SendGrid personalizations, the default SENDGRID_BATCH_SIZE) and per-recipient "
        "(SENDGRID_BATCH_SIZE=0); the smaller runs take the first",
    )
    parser.add_argument("--no-fairness", action="store_true")
    parser.add_argument("--no-providers-latency", action="store_true", help="skip bench.providers_latency")
    parser.add_argument("--ceiling-entities", type=int, default=5000)
    parser.add_argument("--no-profile", action="store_true", help="skip py-spy on the largest run")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default bench/results/...)")
    args = parser.parse_args(argv)
    args.out = args.out or RESULTS / f"bench-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    return args


def _save(results: dict[str, Any], out: Path) -> None:
    """Written after every phase, so a long run that dies keeps what it measured."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))


def _log(message: str) -> None:
    print(f"[bench {datetime.now(UTC):%H:%M:%S}] {message}", file=sys.stderr, flush=True)


def run_baseline(recipients: int) -> dict[str, Any]:
    with BenchStack(workers=0) as stack:
        assert stack.azurite is not None
        out = stack.log_dir / "baseline.json"
        cmd = [
            sys.executable,
            "-m",
            "bench.baseline",
            "--connection-string",
            stack.azurite.connection_string,
            "--sendgrid-url",
            stack.simulator_url,
            "--api-key",
            SIMULATOR_KEY,
            "--recipients",
            str(recipients),
            "--out",
            str(out),
        ]
        subprocess.run(cmd, cwd=PROJECT_ROOT, check=True)
        return json.loads(out.read_text())


def run_providers_latency() -> dict[str, Any]:
    """The providers' own throughput-under-latency bench (its own Azurite and simulator)."""
    finished = subprocess.run(
        [sys.executable, "-m", "bench.providers_latency"], cwd=PROJECT_ROOT, capture_output=True, text=True
    )
    return {"returncode": finished.returncode, "output": finished.stdout[-4000:]}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every phase in order; ``args.out`` holds what is done so far."""
    results: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {_cpu_count()} CPUs, Python {platform.python_version()}",
        "command": "python -m bench " + " ".join(sys.argv[1:]),
        "host_settings": BENCH_SETTINGS,
    }
    _log("ceiling")
    with BenchStack(workers=0) as stack:
        assert stack.azurite is not None
        results["ceiling"] = measure_ceiling(stack.azurite.connection_string, args.ceiling_entities)
    _save(results, args.out)
    runs: list[dict[str, Any]] = []
    results["mailroom"] = runs
    sizes = sorted(args.recipients)
    for size in sizes:
        last = size == sizes[-1]
        fairness = last and not args.no_fairness
        spy = (
            args.out.with_suffix(".pyspy.txt")
            if last and not args.no_profile and profile.available()
            else None
        )
        paths = args.send_paths if last else args.send_paths[:1]
        for path in paths or ["batched"]:
            first = path == (paths or ["batched"])[0]
            _log(f"mailroom end to end, {size} recipients, 1 host, SendGrid {path}"
                 f"{' + fairness' if fairness and first else ''}")
            with BenchStack(workers=1, settings=SEND_PATH_SETTINGS[path]) as stack:
                run = run_mailroom(stack, size, fairness=fairness and first, profile=spy if first else None)
            run["send_path"] = path
            if first:
                runs.append(run)
            else:
                results.setdefault("other_send_paths", []).append(run)
            _save(results, args.out)
    if args.baseline_recipients:
        _log(f"seed design baseline, {args.baseline_recipients} recipients")
        results["baseline"] = run_baseline(args.baseline_recipients)
        _save(results, args.out)
    scale: list[dict[str, Any]] = []
    results["scale_out"] = scale
    for hosts in args.scale_hosts:
        _log(f"scale-out, {hosts} host(s), {args.scale_recipients} recipients")
        with BenchStack(workers=hosts) as stack:
            scale.append(run_mailroom(stack, args.scale_recipients))
        _save(results, args.out)
    if args.smtp_recipients:
        _log(f"SMTP end to end, {args.smtp_recipients} recipients, 1 host, local SMTP sink")
        with BenchStack(workers=1, settings={"EMAIL_PROVIDER": "smtp"}) as stack:
            results["smtp"] = run_mailroom(stack, args.smtp_recipients)
        _save(results, args.out)
    results.update(_headline(results))
    if args.expansion_recipients:
        _log(f"roster expansion only, {args.expansion_recipients} recipients")
        _save(results, args.out)
        results["expansion"] = run_expansion(args.expansion_recipients, on_disk=args.expansion_on_disk)
    if args.million_recipients:
        _log(f"through the API, {args.million_recipients} recipients")
        _save(results, args.out)

        def save_million(partial: dict[str, Any]) -> None:
            results["million"] = partial
            _save(results, args.out)

        results["million"] = run_million(args.million_recipients, args.million_slice, save=save_million)
        _save(results, args.out)
    if not args.no_providers_latency and (PROJECT_ROOT / "bench" / "providers_latency.py").exists():
        _log("provider latency (bench.providers_latency)")
        results["providers_latency"] = run_providers_latency()
        _save(results, args.out)
    return results


def _headline(results: dict[str, Any]) -> dict[str, Any]:
    """The keys tools read, from the largest end-to-end run (and ratios within this run)."""
    ceiling = results["ceiling"]
    main = results["mailroom"][-1] if results["mailroom"] else {}
    base = results.get("baseline", {})
    out: dict[str, Any] = {
        "raw_batch_writes_per_second": ceiling["raw_batch_writes_per_second"],
        "lean_batch_writes_per_second": ceiling["lean_batch_writes_per_second"],
        "recipients": main.get("recipients"),
        "emails_per_second": main.get("emails_per_second"),
        "storage_requests_per_email": main.get("storage_requests_per_email"),
        "cpu_us_per_email": main.get("cpu_us_per_email"),
        "peak_rss_mb": max([r["peak_rss_mb"] for r in results["mailroom"]], default=None),
        "fairness_ratio": main.get("fairness_ratio"),
        "baseline_emails_per_second": base.get("emails_per_second"),
        "baseline_storage_requests_per_email": base.get("storage_requests_per_email"),
        "prices_as_of": PRICES_AS_OF,
    }
    if main:
        out["ratio_to_sdk_ceiling"] = main["emails_per_second"] / ceiling["raw_batch_writes_per_second"]
        out["usd_per_million_emails"] = usd_per_million_emails(
            main["requests_by_operation"], main["roster_size"]
        )
    if main:
        out["send_path"] = main.get("send_path")
        out["ratio_to_lean_ceiling"] = main["emails_per_second"] / ceiling["lean_batch_writes_per_second"]
    size = (main or {}).get("roster_size")
    others = [r for r in results.get("other_send_paths", []) if r["roster_size"] == size]
    if main and others:
        # The same roster through the other SendGrid path, in the same run (issue 18).
        other = others[-1]
        out["other_send_path"] = other["send_path"]
        out["other_emails_per_second"] = other["emails_per_second"]
        out["other_cpu_us_per_email"] = other["cpu_us_per_email"]
        out["other_storage_requests_per_email"] = other["storage_requests_per_email"]
        lean = ceiling["lean_batch_writes_per_second"]
        out["other_ratio_to_lean_ceiling"] = other["emails_per_second"] / lean
        out["cpu_ratio_to_other_send_path"] = main["cpu_us_per_email"] / other["cpu_us_per_email"]
    smtp = results.get("smtp")
    if smtp:
        out["smtp_emails_per_second"] = smtp["emails_per_second"]
        out["smtp_cpu_us_per_email"] = smtp["cpu_us_per_email"]
        compared = smtp_comparison_run(results, smtp["roster_size"])
        if compared:
            out["smtp_compared_with"] = f"{compared.get('send_path', 'sendgrid')} {compared['roster_size']}"
            out["smtp_cpu_ratio_to_sendgrid"] = smtp["cpu_us_per_email"] / compared["cpu_us_per_email"]
    if main and base:
        out["ratio_to_baseline"] = main["emails_per_second"] / base["emails_per_second"]
        out["baseline_usd_per_million_emails"] = usd_per_million_emails(
            base["requests_by_operation"], base["recipients"]
        )
    return out


def smtp_comparison_run(results: dict[str, Any], roster_size: int) -> dict[str, Any] | None:
    """The SendGrid run the SMTP phase is held against: issue 18's target is ≤ 2× the CPU per email
    of the SendGrid *per-recipient* path (one message per request, as SMTP sends), so that path
    when the run has it (the same roster size first, else its largest), else any SendGrid run."""
    runs = [r for r in [*results.get("mailroom", []), *results.get("other_send_paths", [])] if r]
    per_recipient = [r for r in runs if r.get("send_path") == "per-recipient"] or runs
    if not per_recipient:
        return None
    same = [r for r in per_recipient if r["roster_size"] == roster_size]
    return (same or sorted(per_recipient, key=lambda r: r["roster_size"]))[-1]


def _cpu_count() -> int:
    import os

    return os.cpu_count() or 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so every stack stops its hosts and Azurite on the way out.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    started = time.monotonic()
    results = run(args)
    results["bench_seconds"] = time.monotonic() - started
    _save(results, args.out)
    print(render_table(results))
    print(f"\nJSON: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
