"""One log line per host event, plain or JSON, carrying ids and counts only.

Invariant 6 (no PII in logs) applies to the host too: message bodies and exception messages
may hold addresses, so failures are logged by exception type and code location, never text.
The formatters live in ``core.logging_setup`` (shared with ``function_app``).
"""

from __future__ import annotations

import logging
from typing import Any

from core.logging_setup import JsonFormatter, configure_logging, describe_exception

logger = logging.getLogger("devhost")


def log_event(event: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log ``event`` with ``fields`` (ids, counts, durations) as one line."""
    if not logger.isEnabledFor(level):
        return
    text = "".join(f" {key}={value}" for key, value in fields.items())
    logger.log(level, "%s%s", event, text, extra={"event": event, "fields": fields})


__all__ = ["JsonFormatter", "configure_logging", "describe_exception", "log_event"]
