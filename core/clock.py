"""Time as the rest of the code sees it: UTC, ISO-8601 with ``Z``, injectable."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    """The default clock."""
    return datetime.now(UTC)


def iso(moment: datetime) -> str:
    """ISO-8601 UTC with millisecond precision and ``Z``: sortable as text, readable in the portal."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse_iso(text: str) -> datetime:
    """Parse what ``iso`` wrote (and any ISO-8601 with an offset)."""
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def later(clock: Clock, seconds: float) -> str:
    """``iso`` of now plus ``seconds``: lease deadlines."""
    return iso(clock() + timedelta(seconds=seconds))
