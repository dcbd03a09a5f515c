"""Counts storage requests by operation type, for the bench and capacity planning.

Azure bills Table and Queue Storage per transaction, and the design's main claim is that
chunking makes storage work per email a small fraction of a request. ``RequestCounter``
is how that claim is measured: ``Storage(..., request_counter=counter)`` installs
``counter.hook(service)`` as the SDK clients' ``raw_request_hook`` (the SDKs' request-hook
policy runs after their retry policy, so a retried request counts twice, as it is billed
twice), and the lean batch path counts its own requests.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from urllib.parse import urlsplit

from azure.core.pipeline import PipelineRequest


class RequestCounter:
    """A thread-safe tally of storage requests, keyed like ``table.batch`` or ``queue.receive``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def add(self, operation: str, n: int = 1) -> None:
        with self._lock:
            self._counts[operation] += n

    def snapshot(self) -> dict[str, int]:
        """The counts so far (a copy)."""
        with self._lock:
            return dict(self._counts)

    def hook(self, service: str) -> Callable[[PipelineRequest], None]:
        """A ``raw_request_hook`` for an SDK client of ``service`` (``table`` or ``queue``)."""

        def count(request: PipelineRequest) -> None:
            http = request.http_request
            self.add(classify(http.method, http.url, service))

        return count

    def total(self) -> int:
        with self._lock:
            return sum(self._counts.values())


def classify(method: str, url: str, service: str) -> str:
    """Name one request's operation from its method and URL alone (no body parsing)."""
    path = urlsplit(url).path
    query = urlsplit(url).query
    last = path.rstrip("/").rsplit("/", 1)[-1]
    if service == "queue":
        if last == "messages":
            return {
                "POST": "queue.send",
                "GET": "queue.peek" if "peekonly" in query else "queue.receive",
                "DELETE": "queue.clear",
            }.get(method, "queue.other")
        if "/messages/" in path:
            return {"DELETE": "queue.delete", "PUT": "queue.update"}.get(method, "queue.other")
        return "queue.metadata" if "comp=metadata" in query else "queue.admin"
    if last == "$batch":
        return "table.batch"
    if "(" in last:  # Table(PartitionKey='..',RowKey='..') or Table() for a query
        if last.endswith("()"):
            return "table.query"
        return {
            "GET": "table.get",
            "PUT": "table.replace",
            "PATCH": "table.merge",
            "MERGE": "table.merge",
            "DELETE": "table.delete",
        }.get(method, "table.other")
    if last.lower() == "tables" or last.startswith("Tables"):
        return "table.admin"
    return {"POST": "table.insert", "GET": "table.query"}.get(method, "table.other")
