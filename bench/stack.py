"""``devhost.stack.Stack`` with host processes that load ``bench.host_app`` and report their counts.

Each bench stack owns a fresh Azurite (in memory, or on disk for the million-recipient
run, where the emulator's memory would not hold the contacts), the SendGrid simulator in
the bench process, and N host processes whose CPU, RSS and storage requests the bench reads.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from bench.procstats import ProcessSample, read_request_counts, sample
from devhost.azurite import AzuriteHandle, start_azurite
from devhost.stack import Stack

# The Campaign Manager every 2 s (a job starts soon after it is scheduled), the Status
# Manager at the app's default 10 s, the default lease, no API rate limit (the bench polls).
BENCH_SETTINGS = {
    "CAMPAIGN_MANAGER_SCHEDULE": "*/2 * * * * *",
    "STATUS_MANAGER_SCHEDULE": "*/10 * * * * *",
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

    app_module = "bench.host_app"

    def start_azurite(self) -> AzuriteHandle:
        if self.disk is not None:
            return start_azurite(in_memory=False, location=self.disk)
        return start_azurite()

    def worker_env(self) -> dict[str, str]:
        return {**super().worker_env(), "BENCH_STATS_DIR": str(self.stats_dir)}

    def start(self) -> BenchStack:
        self.stats_dir.mkdir(parents=True, exist_ok=True)
        super().start()
        return self

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
