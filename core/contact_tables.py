"""Contacts live in sixteen tables, ``Contacts0`` … ``ContactsF``, by the first hex digit of the id.

Why not one table: Azurite keeps a table in one in-memory collection with sorted indexes on
PartitionKey and RowKey, so every insert splices arrays as long as the table and every query
runs its filter over the whole table. Measured on this VM (``/tmp``-style probe kept in README
"Performance"): inserting 200k contacts into one table fell from 6,953 to 1,802 rows/s from the
first 40k slice to the last; the same rows spread over sixteen tables held 6,340–6,995 rows/s.
On Azure a table is its own set of partitions, so sixteen tables also let a roster scan (and an
import) run past one partition's ~2,000 entities/s.

Why by the id's first digit: contact ids are ``c`` + hex of a keyed hash (``core.ids``), so the
tables fill evenly, and the tables in name order hold the keys in key order: reading them one
after another *is* a scan in RowKey order, so the roster cursor ("everything after this id")
and the contact listing keep their meaning. A person in the portal finds contact ``c3f…`` in
``Contacts3``. A key of any other shape still has exactly one table: the last whose first key
sorts at or before it (``table_digit``).

This module is the only one that names a contact table; records (``core.models.Contact``) say
what a row holds.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Iterator

from core.storage import CONTACT_TABLES, Entity, Storage, Table

DIGITS = "0123456789abcdef"
# The first RowKey of each table after the first: "c1", "c2", … "cf".
_FIRST_KEYS = tuple("c" + digit for digit in DIGITS[1:])


def table_digit(contact_id: str) -> int:
    """Which of the sixteen tables holds ``contact_id`` (0-15); monotonic in the key."""
    return bisect_right(_FIRST_KEYS, contact_id)


def first_key(digit: int) -> str:
    """The lowest key the table ``digit`` holds ("" for the first)."""
    return _FIRST_KEYS[digit - 1] if digit else ""


def last_key(digit: int) -> str | None:
    """The key the table ``digit`` stops before (``None`` for the last)."""
    return _FIRST_KEYS[digit] if digit < len(_FIRST_KEYS) else None


class ContactTables:
    """Point reads, writes and ordered scans of one storage account's contact tables."""

    def __init__(self, storage: Storage) -> None:
        self._storage = storage

    def table(self, digit: int) -> Table:
        return self._storage.table(CONTACT_TABLES[digit])

    def table_for(self, contact_id: str) -> Table:
        return self.table(table_digit(contact_id))

    def find(self, tenant_id: str, contact_id: str, select: list[str] | None = None) -> Entity | None:
        return self.table_for(contact_id).find(tenant_id, contact_id, select=select)

    def delete(self, tenant_id: str, contact_id: str) -> None:
        self.table_for(contact_id).delete(tenant_id, contact_id)

    def by_table(self, entities: Iterable[Entity]) -> dict[int, list[Entity]]:
        """Entities grouped by the table that holds them (a batch is one table's)."""
        groups: dict[int, list[Entity]] = {}
        for entity in entities:
            groups.setdefault(table_digit(entity["RowKey"]), []).append(entity)
        return groups

    def batch_upsert(self, entities: Iterable[Entity]) -> int:
        return sum(self.table(digit).batch_upsert(group) for digit, group in self.by_table(entities).items())

    def tables_after(self, after: str) -> Iterator[tuple[int, Table]]:
        """The tables that may hold keys after ``after``, in key order."""
        for digit in range(table_digit(after) if after else 0, len(DIGITS)):
            yield digit, self.table(digit)

    def scan_after(self, tenant_id: str, after: str, page_size: int = 1000) -> Iterator[Entity]:
        """The tenant's contacts after ``after`` in id order, one table after another."""
        for _digit, table in self.tables_after(after):
            query, params = "PartitionKey eq @t", {"t": tenant_id}
            if after:
                query += " and RowKey gt @after"
                params["after"] = after
            yield from table.query(query, params, page_size=page_size)

    def page_after(self, tenant_id: str, after: str, limit: int) -> tuple[list[Entity], str | None]:
        """Up to ``limit`` of the tenant's contacts after ``after`` in id order, and the next cursor."""
        items: list[Entity] = []
        for entity in self.scan_after(tenant_id, after, page_size=min(1000, limit)):
            items.append(entity)
            if len(items) >= limit:
                return items, entity["RowKey"]
        return items, None
