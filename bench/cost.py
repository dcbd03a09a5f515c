"""Azure Storage cost per million emails from the counted requests.

Prices: pay-as-you-go list prices, Standard general-purpose v2, LRS, East US, USD, as
listed on azure.microsoft.com/pricing (Table Storage and Queue Storage pages) in 2024-06.
They change; the point is the ratio between designs, which does not.
"""

from __future__ import annotations

PRICES_AS_OF = "2024-06"
TABLE_PER_10K = 0.00036  # any table transaction, an entity-group batch counts as one
QUEUE_WRITE_PER_10K = 0.05  # GPv2 queue "class 1": put/update/delete message, create queue
QUEUE_READ_PER_10K = 0.004  # GPv2 queue "class 2": get (receive), peek, metadata


def price_of(operation: str) -> float:
    """USD for one request of ``operation`` (a ``RequestCounter`` key)."""
    if operation.startswith("table."):
        return TABLE_PER_10K / 10_000
    if operation in ("queue.receive", "queue.peek", "queue.metadata"):
        return QUEUE_READ_PER_10K / 10_000
    return QUEUE_WRITE_PER_10K / 10_000


def usd_per_million_emails(requests_by_operation: dict[str, int], emails: int) -> float:
    if not emails:
        return 0.0
    total = sum(price_of(op) * n for op, n in requests_by_operation.items())
    return total / emails * 1_000_000
