"""Structured logging for every Mailroom process: one JSON object per line, ids and counts only.

DESIGN invariant 6: no addresses, names, bodies or keys in logs. Code logs ids and counts;
this module makes sure the *machinery* adds nothing either: an exception is written as its
type and innermost code location, never its message or traceback text (both can quote an
address), and the storage SDK's request/response logging (URLs with filter values, headers)
is held at WARNING.

devhost (``python -m devhost``) and ``function_app`` both call ``configure_logging``.
"""

from __future__ import annotations

import json
import logging
import sys
import traceback
from datetime import UTC, datetime
from typing import Any, TextIO

# Loggers of libraries that log request URLs or payloads at INFO/DEBUG.
NOISY_LOGGERS = ("azure", "urllib3", "httpx", "httpcore", "uvicorn.access", "python_http_client")


def describe_exception(err: BaseException) -> dict[str, str]:
    """Type and innermost code location of an exception, without its message."""
    frames = traceback.extract_tb(err.__traceback__)
    where = f"{frames[-1].filename}:{frames[-1].lineno} in {frames[-1].name}" if frames else "?"
    return {"error": type(err).__name__, "where": where}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, worker, then the event's fields or ``msg``."""

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
        if record.exc_info and record.exc_info[1] is not None:
            out.update(describe_exception(record.exc_info[1]))  # never the message or traceback
        return json.dumps(out, default=str)


class PlainFormatter(logging.Formatter):
    """For people at a terminal; like the JSON one, exceptions by type and place only."""

    def __init__(self, worker: int | None = None) -> None:
        prefix = f"[worker {worker}] " if worker is not None else ""
        super().__init__(f"%(asctime)s %(levelname)s {prefix}%(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        exc_info, record.exc_info, record.exc_text = record.exc_info, None, None
        try:
            text = super().format(record)
        finally:
            record.exc_info = exc_info
        if exc_info and exc_info[1] is not None:
            described = describe_exception(exc_info[1])
            text += f" error={described['error']} where={described['where']}"
        return text


def configure_logging(
    fmt: str = "json", level: str = "INFO", worker: int | None = None, stream: TextIO | None = None
) -> None:
    """Make the root logger write ``fmt`` lines at ``level`` to ``stream`` (stderr)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter(worker) if fmt == "json" else PlainFormatter(worker))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    quiet_noisy_loggers(root.level)


def quiet_noisy_loggers(level: int) -> None:
    """Libraries that log URLs, headers or payloads speak only at WARNING and above."""
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(max(level, logging.WARNING))


def configure_host_logging(fmt: str, level: str) -> None:
    """For ``function_app``: configure logging unless the host process already has.

    The Azure Functions worker installs its own root handler (it ships each record to the host
    and Application Insights as a structured trace) and devhost configures logging before it
    imports the app; both are left as they are, only the noisy libraries are quieted.
    """
    root = logging.getLogger()
    if not root.handlers:
        configure_logging(fmt, level)
        return
    quiet_noisy_loggers(root.level)
