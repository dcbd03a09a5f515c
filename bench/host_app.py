"""The function app as the bench runs it: the real ``function_app`` with its storage counted.

Host processes started by the bench load ``--app bench.host_app`` instead of
``function_app``. Nothing of the app changes except that the one ``Storage`` the API and
the managers share carries a ``RequestCounter``, and the devhost queue pollers' own
clients (the Functions host's polling, also billed in Azure) carry a second one. A daemon
thread writes both tallies to ``$BENCH_STATS_DIR/host-<pid>.json`` twice a second, where
the bench reads them; CPU and RSS the bench reads from ``/proc`` itself.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from azure.storage.queue import LinearRetry, QueueClient

import api.app
from core.request_count import RequestCounter
from core.settings import get_settings
from core.storage import Storage
from devhost import queue_poller
from function_app import app
from functions import runtime

STORAGE_REQUESTS = RequestCounter()
HOST_POLLING = RequestCounter()
WRITE_EVERY_SECONDS = 0.5


def _counted_poller_client(connection_string: str, queue_name: str) -> QueueClient:
    """``devhost.queue_poller._client`` with the polling counter on it (same retry policy)."""
    retry = LinearRetry(backoff=1, retry_total=5, random_jitter_range=1)
    return QueueClient.from_connection_string(
        connection_string, queue_name, retry_policy=retry, raw_request_hook=HOST_POLLING.hook("queue")
    )


def _install() -> None:
    settings = get_settings()
    storage = Storage(
        settings.connection_string,
        request_counter=STORAGE_REQUESTS,
        lean_batches=settings.storage_lean_batches,
    )
    storage.ensure_resources()
    api.app.app.state.storage = storage
    runtime.configure(runtime.build_runtime(settings, storage))
    queue_poller._client = _counted_poller_client  # type: ignore[assignment]


def _report_forever(directory: Path) -> None:
    path = directory / f"host-{os.getpid()}.json"
    stop = threading.Event()
    while not stop.wait(WRITE_EVERY_SECONDS):
        payload = {
            "pid": os.getpid(),
            "storage": STORAGE_REQUESTS.snapshot(),
            "polling": HOST_POLLING.snapshot(),
        }
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(payload))
        os.replace(temporary, path)


_install()
if os.environ.get("BENCH_STATS_DIR"):
    _stats_dir = Path(os.environ["BENCH_STATS_DIR"])
    _stats_dir.mkdir(parents=True, exist_ok=True)
    threading.Thread(target=_report_forever, args=(_stats_dir,), name="bench-stats", daemon=True).start()

__all__ = ["app"]
