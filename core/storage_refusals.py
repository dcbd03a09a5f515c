"""Which storage answers are final, decided in one place for the SDK and the lean batch client.

Storage answers a 400-class status when the request itself is wrong: a string property over
64 KiB (``PropertyValueTooLarge``), an entity over 1 MiB (``EntityTooLarge``), a queue message
or batch over its limit (``RequestBodyTooLarge``, 413), a value the service cannot take. The
same request fails the same way every time, so it is a ``StorageRefused`` (the API answers
413/400 naming the column) and never a ``StorageError`` that reads as an outage (503, "retry
shortly"). 401/403 stay outages: they mean our credentials, not the caller's input, are wrong.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from core.errors import StorageError, StorageRefused

TOO_LARGE_CODES = frozenset({"PropertyValueTooLarge", "EntityTooLarge", "RequestBodyTooLarge"})
_FINAL_STATUSES = frozenset({400, 411, 413, 414})
_CODE = re.compile(r'"code"\s*:\s*"(\w+)"|ErrorCode:\s*(\w+)|<Code>(\w+)</Code>')
MAX_STRING_UNITS = 32 * 1024  # a string property holds 64 KiB of UTF-16
MAX_BINARY_BYTES = 64 * 1024


def error_code_in(text: str) -> str:
    """The service's error code as it appears in an error body (JSON, the SDK's text or XML)."""
    match = _CODE.search(text or "")
    return next((group for group in match.groups() if group), "") if match else ""


def storage_failure(status: int | None, code: str, what: str) -> StorageError:
    """A ``StorageRefused`` when retrying cannot help, else a ``StorageError`` (transient)."""
    if code in TOO_LARGE_CODES or status == 413:
        return StorageRefused(f"{what}: storage refused it as too large ({code or status})", code, True)
    if status in _FINAL_STATUSES:
        return StorageRefused(f"{what}: storage refused it ({code or status})", code)
    return StorageError(f"{what} failed with status {status}")


def utf16_units(text: str) -> int:
    """Length as Table Storage counts a string (UTF-16 code units)."""
    return len(text.encode("utf-16-le")) // 2


def oversized_column(entities: Iterable[Mapping[str, Any]]) -> str:
    """The first property over a table's per-property limit, or ``""`` (then the whole entity is)."""
    for entity in entities:
        for name, value in entity.items():
            if isinstance(value, str) and len(value) > MAX_STRING_UNITS // 2:
                if utf16_units(value) > MAX_STRING_UNITS:
                    return name
            if isinstance(value, (bytes, bytearray)) and len(value) > MAX_BINARY_BYTES:
                return name
    return ""
