"""What one row write costs Azurite as its table grows: the cost model behind the 1M figures.

Azurite keeps each table in one LokiJS collection with adaptive binary indexes on PartitionKey
and RowKey. Every insert splices both index arrays (as long as the table) and every update
first scans them for the row's position and then splices twice: a write's cost grows with the
*table*, not the partition (``node_modules/lokijs/src/lokijs.js``:
``adaptiveBinaryIndexInsert``/``adaptiveBinaryIndexUpdate``). This bench measures it with
the lean client, one thread, delivery-shaped rows in partitions of 100 (a table batch each):

- ``insert``: rows/s per slice while one table fills to ``--rows``;
- ``merge``: rows/s merging a slice of rows already in that full table;
- ``spread``: the same rows spread over ``--tables`` tables (as the contact tables are), per slice.

``python -m bench.table_growth --rows 200000 --slices 4 --tables 16 64``. It starts its own Azurite.
"""

from __future__ import annotations

import argparse
import json
import secrets
import time
from typing import Any

from bench.ceiling import delivery_rows as ordered_rows
from core.storage import Storage
from devhost.azurite import start_azurite


def delivery_rows(n: int, tag: str) -> list[dict[str, Any]]:
    """Delivery-shaped rows keyed like contacts (``c`` + random hex), as the real tables are: a
    key in key order would always land at the end of the indexes and hide the splices."""
    return [{**row, "RowKey": "c" + secrets.token_hex(8)} for row in ordered_rows(n, tag)]


def _rate(rows: int, started: float) -> float:
    return rows / (time.perf_counter() - started)


def insert_rates(storage: Storage, tables: int, rows: list[dict[str, Any]], slices: int) -> list[float]:
    """Rows/s of each slice while ``tables`` tables fill with ``rows`` (batches spread round-robin)."""
    names = [f"Growth{secrets.token_hex(3)}" for _ in range(tables)]
    for name in names:
        storage._table_service.create_table(storage.table_name(name))  # noqa: SLF001 - a bench
    per_slice = len(rows) // slices
    rates = []
    for s in range(slices):
        part = rows[s * per_slice:(s + 1) * per_slice]
        started = time.perf_counter()
        for b in range(0, len(part), 100):
            storage.table(names[(b // 100) % tables]).batch_insert(part[b:b + 100])
        rates.append(_rate(len(part), started))
    return rates


def merge_rate(storage: Storage, table: str, rows: list[dict[str, Any]]) -> float:
    changed = [{**row, "status": "delivered"} for row in rows]
    started = time.perf_counter()
    storage.table(table).batch_upsert(changed)
    return _rate(len(changed), started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.table_growth", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--slices", type=int, default=4)
    parser.add_argument("--tables", type=int, nargs="*", default=[16, 64])
    parser.add_argument("--merge-rows", type=int, default=10_000)
    parser.add_argument("--no-one-table", action="store_true", help="only the spread runs")
    args = parser.parse_args(argv)
    with start_azurite() as azurite:
        storage = Storage(azurite.connection_string, namespace="g" + secrets.token_hex(3), lean_batches=True)
        result: dict[str, Any] = {"rows": args.rows, "slices": args.slices}
        if not args.no_one_table:
            result.update(one_table(storage, delivery_rows(args.rows, "g"), args.slices, args.merge_rows))
        for tables in args.tables:
            fresh = delivery_rows(args.rows, f"s{tables}")
            result[f"insert_{tables}_tables"] = insert_rates(storage, tables, fresh, args.slices)
    print(json.dumps(result, indent=1))
    for key, value in result.items():
        if isinstance(value, list):
            rates = "  ".join(f"{v:,.0f}" for v in value)
            print(f"{key:>20}: {rates}   last/first {value[-1] / value[0]:.2f}")
        elif isinstance(value, float):
            print(f"{key:>20}: {value:,.0f} rows/s")
    return 0


def one_table(storage: Storage, rows: list[dict[str, Any]], slices: int, merge_rows: int) -> dict[str, Any]:
    """Inserts per slice while one table fills, then merges into a small and into the full table."""
    one = f"Growth{secrets.token_hex(3)}"
    storage._table_service.create_table(storage.table_name(one))  # noqa: SLF001 - a bench
    small = merge_rate_in_fresh_table(storage, rows[:merge_rows])
    per_slice = len(rows) // slices
    inserts = []
    for s in range(slices):
        part = rows[s * per_slice:(s + 1) * per_slice]
        started = time.perf_counter()
        storage.table(one).batch_insert(part)
        inserts.append(_rate(len(part), started))
    return {"insert_one_table": inserts, "merge_in_small_table": small,
            "merge_in_full_table": merge_rate(storage, one, rows[-merge_rows:])}


def merge_rate_in_fresh_table(storage: Storage, rows: list[dict[str, Any]]) -> float:
    """Merging ``rows`` into a table that holds only them: the small-table baseline."""
    name = f"Growth{secrets.token_hex(3)}"
    storage._table_service.create_table(storage.table_name(name))  # noqa: SLF001 - a bench
    storage.table(name).batch_insert(rows)
    return merge_rate(storage, name, rows)


if __name__ == "__main__":
    raise SystemExit(main())
