"""One log line per host event, plain or JSON, carrying ids and counts only.

Invariant 6 (no PII in logs) applies to the host too: message bodies and exception messages
may hold addresses, so failures are logged by exception type and code location, never text.
"""

from __future__ import annotations

import json
import logging
import sys
import traceback
from datetime import UTC, datetime
from typing import Any

logger = logging.getLogger("devhost")


def log_event(event: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log ``event`` with ``fields`` (ids, counts, durations) as one line."""
    if not logger.isEnabledFor(level):
        return
    text = "".join(f" {key}={value}" for key, value in fields.items())
    logger.log(level, "%s%s", event, text, extra={"event": event, "fields": fields})


def describe_exception(err: BaseException) -> dict[str, str]:
    """Type and innermost code location of an exception, without its message."""
    frames = traceback.extract_tb(err.__traceback__)
    where = f"{frames[-1].filename}:{frames[-1].lineno} in {frames[-1].name}" if frames else "?"
    return {"error": type(err).__name__, "where": where}


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for tools that read logs."""

    def __init__(self, worker: int | None = None) -> None:
        super().__init__()
        self.worker = worker

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        if self.worker is not None:
            out["worker"] = self.worker
        event = getattr(record, "event", None)
        if event:
            out["event"] = event
            out.update(getattr(record, "fields", {}))
        else:
            out["msg"] = record.getMessage()
        return json.dumps(out, default=str)


def configure_logging(fmt: str = "plain", level: str = "INFO", worker: int | None = None) -> None:
    """Set up root logging once for a devhost process (``worker`` tells host processes apart)."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter(worker))
    else:
        prefix = f"[worker {worker}] " if worker is not None else ""
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s %(levelname)s {prefix}%(name)s: %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # The storage SDK logs every request and response at INFO: noise, and not ids-only.
    logging.getLogger("azure").setLevel(max(root.level, logging.WARNING))
