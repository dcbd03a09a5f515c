"""Where a host process spends its CPU: py-spy samples of every thread, summed per function.

``Profiler(pid, path)`` runs ``py-spy record --format raw`` (collapsed stacks) while a
job runs; ``top_functions`` turns the file into the functions with the most samples,
self (the leaf frame) and inclusive (anywhere on the stack). Idle threads are left out.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

PY_SPY = Path(sys.executable).parent / "py-spy"


def available() -> bool:
    return PY_SPY.exists() or shutil.which("py-spy") is not None


class Profiler:
    def __init__(self, pid: int, path: Path, rate: int = 50) -> None:
        self.path = path
        binary = str(PY_SPY) if PY_SPY.exists() else "py-spy"
        cmd = [
            binary,
            "record",
            "--pid",
            str(pid),
            "--format",
            "raw",
            "--rate",
            str(rate),
            "--nonblocking",
            "--output",
            str(path),
        ]
        self._process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> None:
        self._process.send_signal(signal.SIGINT)
        try:
            self._process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(timeout=5)


def _frame_name(frame: str) -> str:
    # "send (providers/sendgrid.py:95)" → "providers/sendgrid.py:send"
    name, _, where = frame.partition(" (")
    file = where.split(":")[0].rstrip(")")
    for marker in ("site-packages/", "/work/main/", "lib/python3.11/"):
        if marker in file:
            file = file.split(marker, 1)[1]
    return f"{file}:{name}"


def top_functions(path: Path, limit: int = 15) -> dict[str, list[tuple[str, float]]]:
    """The busiest functions as (name, share of active samples), self and inclusive."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        frames = [_frame_name(f) for f in stack.split(";")[1:]]  # first is the thread
        if not frames or _idle(frames[-1]):
            continue
        count = int(count_text)
        total += count
        own[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count
    if not total:
        return {"self": [], "inclusive": []}
    return {
        "self": [(n, c / total) for n, c in own.most_common(limit)],
        "inclusive": [(n, c / total) for n, c in inclusive.most_common(limit * 2)],
    }


def _idle(frame: str) -> bool:
    return any(
        word in frame
        for word in (
            ":wait",
            ":select",
            ":poll",
            ":sleep",
            ":_wait_for_tstate_lock",
            ":accept",
            ":recv_into",
            ":readinto",
            ":epoll",
        )
    )
