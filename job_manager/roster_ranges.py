"""The roster scan reads a tenant's contacts in key ranges of about one page each.

Why not one query with continuation tokens: Azurite answers every page of a query by
filtering the whole table and *sorting every match after the continuation point*, so the
first pages of a 1M-contact scan cost ~13 s each (README "Performance": expansion of 1M ran at
75 recipients/s). A query bounded above (``RowKey lt``) lets Azurite sort only the rows of
its range, and on Azure a key range of one partition costs the same as a continued scan.

Contact ids are ``c`` + hex of a keyed hash (``core.ids.contact_id_for``), so they spread
evenly over the key space; a range's width is learned from the previous full page (the span
of key space that held one page) and widened while ranges come back sparse. Keys of any other
shape are still read, in order, exactly once: ranges tile the whole key space, and a range
that cannot be narrowed is simply continued page by page.
"""

from __future__ import annotations

from collections.abc import Iterator

from core.contact_tables import ContactTables, last_key
from core.storage import Entity, Table

PAGE = 1000
_HEX_DIGITS = 8
KEY_SPACE = 16**_HEX_DIGITS  # positions of the boundary keys "c00000000" … "cffffffff"
# Aim a range at this share of a page, so that few ranges overflow into a second query.
_FILL = 0.8


def boundary(position: int) -> str:
    """The key at ``position`` of the contact-id key space (keys sort like the positions)."""
    return "c" + format(position, f"0{_HEX_DIGITS}x")


def position_of(key: str) -> int:
    """The last position whose boundary key sorts at or before ``key`` (0 if none does)."""
    low, high = 0, KEY_SPACE  # boundary(low) <= key (or low == 0) < boundary(high)
    while high - low > 1:
        middle = (low + high) // 2
        if boundary(middle) <= key:
            low = middle
        else:
            high = middle
    return low


def scan_partition_in_ranges(
    table: Table, partition: str, after: str, select: list[str], page: int = PAGE,
    until: str | None = None,
) -> Iterator[Entity]:
    """Every entity of ``partition`` with a RowKey after ``after`` (and before ``until``), in RowKey order.

    Each query covers one key range ``[lower, upper)`` expected to hold under a page; a
    range that fills a page is left after that page and the scan goes on with a narrower
    one from the last row read, so no query asks the service to order more than about a
    page of rows. A small partition is read with one query (the first range is all of it).
    ``until`` bounds the scan to one contact table's keys (``core.contact_tables``).
    """
    lower, inclusive = after, False
    width = KEY_SPACE
    stop = position_of(until) if until is not None else KEY_SPACE
    while True:
        start = position_of(lower) if lower else 0
        end = start + width
        upper = boundary(end) if end < stop else until
        query, params = "PartitionKey eq @t", {"t": partition}
        if lower:
            query += f" and RowKey {'ge' if inclusive else 'gt'} @lo"
            params["lo"] = lower
        if upper is not None:
            query += " and RowKey lt @hi"
            params["hi"] = upper
        rows = table.query(query, params, select=select, page_size=page, strings_only=True)
        read, last = 0, ""
        for entity in rows:
            yield entity
            read, last = read + 1, entity["RowKey"]
            if read >= page:
                break
        if read >= page:
            span = position_of(last) - start
            if span > 0:  # narrow: the next range should hold about one page
                _close(rows)
                lower, inclusive, width = last, False, max(1, int(span * _FILL))
                continue
            yield from rows  # keys this range cannot split: read the rest of it page by page
        elif read < page * _FILL / 2:
            width = min(KEY_SPACE, width * 2)  # sparse: widen the next range
        if upper is None or upper == until:
            return
        lower, inclusive = upper, True


def scan_contacts(
    tables: ContactTables, tenant_id: str, after: str, select: list[str], page: int = PAGE
) -> Iterator[Entity]:
    """A tenant's contacts after ``after`` in id order: each contact table in turn, in key ranges."""
    for digit, table in tables.tables_after(after):
        yield from scan_partition_in_ranges(table, tenant_id, after, select, page, until=last_key(digit))


def _close(rows: Iterator[Entity]) -> None:
    close = getattr(rows, "close", None)
    if close is not None:
        close()
