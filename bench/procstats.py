"""CPU seconds and peak RSS of a process, read from ``/proc`` (Linux), and the hosts' request tallies."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ProcessSample:
    pid: int
    cpu_seconds: float  # user + system, all threads
    rss_mb: float
    peak_rss_mb: float  # VmHWM: the high-water mark since the process started


def sample(pid: int) -> ProcessSample:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    cpu = (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime (fields 14 and 15 of stat)
    status = {
        line.split(":", 1)[0]: line.split(":", 1)[1].strip()
        for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if ":" in line
    }
    rss = int(status.get("VmRSS", "0 kB").split()[0]) / 1024
    peak = int(status.get("VmHWM", "0 kB").split()[0]) / 1024
    return ProcessSample(pid, cpu, rss, peak)


def read_request_counts(stats_dir: Path) -> dict[str, dict[str, int]]:
    """Per host pid: ``storage`` (app) and ``polling`` (host queue polling) tallies, merged by op."""
    merged: dict[str, dict[str, int]] = {"storage": {}, "polling": {}}
    for path in stats_dir.glob("host-*.json"):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        for kind in merged:
            for op, n in data.get(kind, {}).items():
                merged[kind][op] = merged[kind].get(op, 0) + int(n)
    return merged


def diff_counts(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {op: n - before.get(op, 0) for op, n in after.items() if n - before.get(op, 0)}
