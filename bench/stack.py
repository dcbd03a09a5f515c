"""``devhost.stack.Stack`` with host processes that load ``bench.host_app`` and report their counts.

Each bench stack owns a fresh Azurite (in memory, or on disk for the million-recipient
run, where the emulator's memory would not hold the contacts), the SendGrid simulator in
the bench process, and N host processes whose CPU, RSS and storage requests the bench reads.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from bench.procstats import ProcessSample, read_request_counts, sample
from core.settings import PROJECT_ROOT
from devhost.azurite import start_azurite
from devhost.stack import Stack, serve_in_thread

# The Campaign Manager every 2 s (a job starts soon after it is scheduled), the Status
# Manager at the app's default 10 s, a 10 s lease, no API rate limit (the bench polls).
# Why the lease is short: every Status Manager pass that rewrites a job's counts while the
# roster is still being expanded makes the expansion's next ETag-guarded job update fail, and
# expansion then waits for its own lease to expire before it resumes (see the README).
BENCH_SETTINGS = {
    "CAMPAIGN_MANAGER_SCHEDULE": "*/2 * * * * *",
    "STATUS_MANAGER_SCHEDULE": "*/10 * * * * *",
    "TASK_LEASE_SECONDS": "10",
    "API_RATE_LIMIT_PER_MINUTE": "0",
    "MAILROOM_LOG_LEVEL": "WARNING",
}


class BenchStack(Stack):
    """A Stack whose hosts are instrumented; ``disk`` puts Azurite's data on disk."""

    def __init__(
        self, workers: int, settings: dict[str, str] | None = None, disk: Path | None = None
    ) -> None:
        super().__init__(workers=workers, settings={**BENCH_SETTINGS, **(settings or {})})
        self.disk = disk
        self.stats_dir = self.log_dir / "stats"

    def start(self) -> BenchStack:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.stats_dir.mkdir(parents=True, exist_ok=True)
        if self.disk is not None:
            self.azurite = start_azurite(in_memory=False, location=self.disk)
        else:
            self.azurite = start_azurite()
        self._sim_cm = serve_in_thread(self.simulator.app)
        self.simulator_url = self._sim_cm.__enter__()
        for index in range(self.workers):
            self.start_worker(index)
        if self.workers:
            self.wait_healthy()
        return self

    def start_worker(self, index: int) -> None:
        env = {**os.environ, **self.env(), "PYTHONUNBUFFERED": "1", "BENCH_STATS_DIR": str(self.stats_dir)}
        env["MAILROOM_LOCAL_SETTINGS"] = str(self.log_dir / "no-local-settings.json")
        log = open(self.log_dir / f"worker-{index}.log", "ab")  # noqa: SIM115 - closed with the process
        cmd = [
            sys.executable,
            "-m",
            "devhost",
            "--no-azurite",
            "--app",
            "bench.host_app",
            "--worker-index",
            str(index),
            "--port",
            str(self.http_port),
            "--grace",
            "2",
        ]
        self.processes[index] = subprocess.Popen(cmd, cwd=PROJECT_ROOT, env=env, stdout=log, stderr=log)
        log.close()

    def host_samples(self) -> list[ProcessSample]:
        return [sample(p.pid) for p in self.processes.values() if p.poll() is None]

    def request_counts(self) -> dict[str, dict[str, int]]:
        """The hosts' tallies as last written (they write every 0.5 s: wait a beat first)."""
        time.sleep(1.2)
        return read_request_counts(self.stats_dir)

    def admin_client(self) -> httpx.Client:
        return httpx.Client(
            base_url=f"{self.base_url}/api/v1",
            headers={"Authorization": f"Bearer {self.admin_key}"},
            timeout=300,
        )
