"""Azurite's raw ceiling on this machine: what storage alone allows, before any Mailroom logic.

Batched table writes through the SDK and through the lean client (``core.table_batches``:
the minimal HTTP client), queue sends, and queue receive+delete, each single-threaded
from the bench process with delivery-shaped rows, so the figures compare with the pipeline's.
"""

from __future__ import annotations

import secrets
import time

from core.storage import DELIVERIES, TASK_QUEUE, Storage

QUEUE_MESSAGES = 500  # Azurite's queue store freezes with thousands queued (DESIGN §3)


def delivery_rows(n: int, tag: str) -> list[dict[str, object]]:
    return [
        {
            "PartitionKey": f"{tag}-{i // 100:06d}",
            "RowKey": f"c{i:08d}",
            "email": f"r{i:07d}@example.com",
            "status": "sent",
            "reason": "",
            "provider": "sendgrid",
            "provider_message_id": secrets.token_hex(11),
            "attempts": 1,
            "updated_at": "2026-01-01T00:00:00.000000Z",
        }
        for i in range(n)
    ]


def batch_writes_per_second(connection_string: str, lean: bool, entities: int) -> float:
    storage = Storage(connection_string, namespace="ceil" + secrets.token_hex(3), lean_batches=lean)
    storage.ensure_resources()
    rows = delivery_rows(entities, "w")
    table = storage.table(DELIVERIES)
    table.batch_upsert(rows[:100])  # connection and table warm
    started = time.perf_counter()
    table.batch_upsert(rows[100:])
    return (entities - 100) / (time.perf_counter() - started)


def queue_rates(connection_string: str) -> tuple[float, float]:
    """(sends/s, receive+deletes/s) for ``QUEUE_MESSAGES`` small messages."""
    storage = Storage(connection_string, namespace="ceil" + secrets.token_hex(3))
    storage.ensure_resources()
    queue = storage.queue(TASK_QUEUE)
    body = '{"tenant_id":"t","job_id":"j","task_index":1}'
    started = time.perf_counter()
    for _ in range(QUEUE_MESSAGES):
        queue.send(body)
    send_rate = QUEUE_MESSAGES / (time.perf_counter() - started)
    done = 0
    started = time.perf_counter()
    while done < QUEUE_MESSAGES:
        for message in queue.receive(32, visibility_timeout=60):
            queue.delete(message)
            done += 1
    return send_rate, done / (time.perf_counter() - started)


def measure_ceiling(connection_string: str, entities: int = 5000) -> dict[str, float]:
    lean = batch_writes_per_second(connection_string, True, entities)
    sdk = batch_writes_per_second(connection_string, False, entities)
    send, receive_delete = queue_rates(connection_string)
    return {
        "raw_batch_writes_per_second": sdk,
        "lean_batch_writes_per_second": lean,
        "queue_sends_per_second": send,
        "queue_receive_deletes_per_second": receive_delete,
    }
