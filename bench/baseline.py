"""The seed design, written compactly: one task record and one queue message per recipient.

What the seed did for each recipient: insert a task entity, enqueue a message naming it;
a worker receives the message, reads the task, marks it ``sending`` (ETag-guarded),
renders, sends through the provider, records the outcome on the task and deletes the
message. The same template engine, provider adapter, simulator and Azurite as Mailroom;
the roster is generated in memory (no contact scan), which flatters the baseline.

Run as its own process (``python -m bench.baseline ...``) so its CPU is its own; it keeps
at most ``WINDOW`` messages queued because Azurite's queue store freezes with thousands.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import secrets
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from core.errors import AlreadyExists, SendError, StorageError
from core.models import Recipient
from core.request_count import RequestCounter
from core.storage import TASK_QUEUE, TASKS, Storage
from core.templates import TemplateSpec, build_context, compile_template
from providers.base import OutboundEmail
from providers.sendgrid import SendGridProvider

# Its own namespace on the same Azurite: the Tasks table and task-queue hold the seed's records.
TABLE, QUEUE = TASKS, TASK_QUEUE
WINDOW = 256
WORKERS = 8
MIN_POLL_SECONDS, MAX_POLL_SECONDS = 0.1, 2.0
TEMPLATE = {
    "subject": "Hello {{ contact.name }}",
    "text": "Hi {{ contact.name }}, your plan is {{ contact.attributes.plan }}. {{ unsubscribe_url }}",
    "html": "<p>Hi {{ contact.name }}, your plan is {{ contact.attributes.plan }}.</p>",
    "from_email": "news@example.org",
}


class SeedPipeline:
    def __init__(self, storage: Storage, provider: SendGridProvider, recipients: int) -> None:
        self.storage = storage
        self.provider = provider
        self.recipients = recipients
        self.job = secrets.token_hex(6)
        self.template = compile_template(TemplateSpec.model_validate(TEMPLATE))
        self.done = 0
        self.sent = 0
        self._lock = threading.Lock()
        self._room = threading.Semaphore(WINDOW)

    def expand(self) -> None:
        """One task entity and one message per recipient."""
        tasks, queue = self.storage.table(TABLE), self.storage.queue(QUEUE)
        for index in range(self.recipients):
            self._room.acquire()
            task = {
                "PartitionKey": self.job,
                "RowKey": f"{index:08d}",
                "status": "pending",
                "email": f"seed{index:07d}@example.com",
                "name": f"Recipient {index}",
                "attributes": json.dumps({"plan": "pro" if index % 3 == 0 else "free"}),
            }
            _with_one_retry(lambda: tasks.insert(task))  # noqa: B023 - called at once
            _with_one_retry(lambda: queue.send(json.dumps({"job": self.job, "index": index})))  # noqa: B023

    def work(self) -> None:
        tasks, queue = self.storage.table(TABLE), self.storage.queue(QUEUE)
        idle = MIN_POLL_SECONDS
        while self.done < self.recipients:
            messages = queue.receive(32, visibility_timeout=60)
            if not messages:  # back off like the Functions host's queue polling
                time.sleep(idle)
                idle = min(idle * 2, MAX_POLL_SECONDS)
                continue
            idle = MIN_POLL_SECONDS
            for message in messages:
                try:
                    self.handle(tasks, json.loads(message.content))
                    queue.delete(message)
                except StorageError:
                    continue  # Azurite dropped a connection: the message comes back after its timeout
                self._room.release()

    def handle(self, tasks, ticket: dict) -> None:
        row = f"{ticket['index']:08d}"
        entity = tasks.get(ticket["job"], row)
        if entity["status"] != "pending":
            with self._lock:
                self.done += 1
            return
        etag = tasks.update(
            {"PartitionKey": ticket["job"], "RowKey": row, "status": "sending"}, etag=entity.metadata["etag"]
        )
        recipient = Recipient(row, entity["email"], entity["name"], json.loads(entity["attributes"]))
        rendered = self.template.render(build_context(recipient, "Seed", "http://127.0.0.1/u/x"))
        email = OutboundEmail(
            to_email=recipient.email,
            to_name=recipient.name,
            subject=rendered.subject,
            from_email=TEMPLATE["from_email"],
            from_name="",
            reply_to="",
            html=rendered.html,
            text=rendered.text,
            headers={},
            custom_args={"job_id": ticket["job"], "task_id": row},
        )
        try:
            result = self.provider.send(email)
            outcome = {"status": "sent", "message_id": result.message_id}
        except SendError as err:
            outcome = {"status": "failed", "reason": err.reason}
        tasks.update({"PartitionKey": ticket["job"], "RowKey": row, **outcome}, etag=etag)
        with self._lock:
            self.done += 1
            self.sent += outcome["status"] == "sent"


def _with_one_retry(write: Callable[[], object]) -> None:
    """Azurite under load sometimes resets a connection: try once more (a landed insert is fine)."""
    for attempt in (1, 2):
        try:
            write()
            return
        except AlreadyExists:
            return
        except StorageError:
            if attempt == 2:
                raise
            time.sleep(0.5)


def run(connection_string: str, sendgrid_url: str, api_key: str, recipients: int) -> dict:
    counter = RequestCounter()
    storage = Storage(connection_string, namespace="seed" + secrets.token_hex(3), request_counter=counter)
    storage.ensure_resources()
    pipeline = SeedPipeline(storage, SendGridProvider(api_key, sendgrid_url), recipients)
    before = counter.snapshot()
    cpu0, wall0 = sum(os.times()[:2]), time.monotonic()
    workers = [threading.Thread(target=pipeline.work, daemon=True) for _ in range(WORKERS)]
    for thread in workers:
        thread.start()
    pipeline.expand()
    for thread in workers:
        thread.join()
    wall, cpu = time.monotonic() - wall0, sum(os.times()[:2]) - cpu0
    counts = {op: n - before.get(op, 0) for op, n in counter.snapshot().items() if n - before.get(op, 0)}
    requests = sum(counts.values())
    return {
        "recipients": recipients,
        "sent": pipeline.sent,
        "seconds": wall,
        "emails_per_second": recipients / wall,
        "storage_requests": requests,
        "storage_requests_per_email": requests / recipients,
        "requests_by_operation": counts,
        "cpu_us_per_email": cpu / recipients * 1e6,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.baseline", description=__doc__)
    parser.add_argument("--connection-string", required=True)
    parser.add_argument("--sendgrid-url", required=True)
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--recipients", type=int, default=10_000)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    result = run(args.connection_string, args.sendgrid_url, args.api_key, args.recipients)
    args.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
