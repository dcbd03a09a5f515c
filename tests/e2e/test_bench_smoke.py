"""A small run of ``python -m bench`` end to end, so the bench cannot silently rot.

It checks that every phase runs and every figure is reported, never how fast anything was.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from core.settings import PROJECT_ROOT

pytestmark = pytest.mark.e2e

REQUIRED_KEYS = (
    "raw_batch_writes_per_second",
    "lean_batch_writes_per_second",
    "emails_per_second",
    "storage_requests_per_email",
    "baseline_emails_per_second",
    "baseline_storage_requests_per_email",
    "cpu_us_per_email",
    "peak_rss_mb",
    "fairness_ratio",
    "recipients",
)


def test_a_small_bench_run_reports_every_figure_and_sends_each_recipient_once(tmp_path: Path):
    out = tmp_path / "bench.json"
    command = [
        sys.executable, "-m", "bench", "--recipients", "500", "--baseline-recipients", "50",
        "--scale-hosts", "2", "--scale-recipients", "200", "--ceiling-entities", "200",
        "--smtp-recipients", "200", "--million-recipients", "2000", "--million-slice", "1000",
        "--no-profile", "--no-providers-latency", "--out", str(out),
    ]  # fmt: skip
    finished = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)

    assert finished.returncode == 0, finished.stderr[-3000:]
    assert "Azurite ceiling" in finished.stdout and "seed design" in finished.stdout
    results = json.loads(out.read_text())
    assert all(key in results for key in REQUIRED_KEYS)
    run = results["mailroom"][0]
    assert run["roster_size"] == 500 and run["sent"] == 500
    assert run["storage_requests_per_email"] > 0 and run["cpu_us_per_email"] > 0
    assert results["baseline"]["sent"] == 50
    assert results["scale_out"][0]["hosts"] == 2 and results["scale_out"][0]["sent"] == 200
    assert results["smtp"]["roster_size"] == 200 and results["smtp"]["sent"] == 200
    assert results["smtp_cpu_us_per_email"] > 0 and "over SMTP" in finished.stdout
    assert results["smtp_compared_with"] == "per-recipient 500"  # issue 18: one message per request, as SMTP
    million = results["million"]  # through the API, slice by slice (bench.million)
    assert million["phase"] == "closed" and million["counts_add_up"] and million["sent_twice"] == 0
    assert [s["upto"] for s in million["import_slices"]] == [1000, 2000]
    assert all(s["contacts_per_azurite_cpu_second"] > 0 for s in million["import_slices"])
    assert million["expansion_slices"][-1]["upto"] == 2000 and million["peak_rss_mb_per_host"]
    assert "imported 2,000 through the API" in finished.stderr
