"""Time-to-send: from a job's start to its close (the seed team's headline metric).

One definition shared by the API (campaigns and jobs show it) and telemetry (a histogram).
"""

from __future__ import annotations

from core.clock import parse_iso


def time_to_send_seconds(started_at: str, completed_at: str) -> float | None:
    """Seconds from ``started_at`` to ``completed_at``; ``None`` until the job has both."""
    if not started_at or not completed_at:
        return None
    try:
        seconds = (parse_iso(completed_at) - parse_iso(started_at)).total_seconds()
    except ValueError:
        return None
    return round(max(0.0, seconds), 3)
