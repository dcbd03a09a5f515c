"""Where a campaign's or an email's template is kept: its table row, or a blob when too large.

A template (subject, html, text, sender) is one JSON string column of the Campaigns and Jobs
rows, and Table Storage caps a string at 64 KiB (32K UTF-16 characters), while marketing HTML
is often 30–100 KB and a template part may be up to 512 KiB (``core.templates``). So:

- a template whose JSON fits ``INLINE_TEMPLATE_MAX_UNITS`` stays in the row's ``template``
  column, readable in the portal as before;
- a larger one is written to the ``templates`` blob container as
  ``{tenant}/{campaign or email id}/{sha256 of the JSON}.json`` and the row keeps only that
  name in ``template_ref`` (``template`` is then empty).

Blobs are content-addressed and never overwritten with other content: editing a campaign
writes a new blob, and a job (which copies the campaign's ``template_ref``) keeps the one it
was made from. The blob is written before the row, so a row never names a missing blob; a
crash in between leaves at most an unreferenced blob.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from core.blobs import templates
from core.storage import Storage
from core.storage_refusals import utf16_units

# A string column holds 32,768 UTF-16 units; keep headroom for the rest of the row.
INLINE_TEMPLATE_MAX_UNITS = 30_000


def template_json(template: dict[str, Any]) -> str:
    """The one serialization of a template, for its column and its blob alike."""
    return json.dumps(template, separators=(",", ":"), ensure_ascii=False)


def store_template(storage: Storage, tenant_id: str, owner_id: str, template: dict[str, Any]) -> str:
    """Keep ``template`` where it fits: ``""`` when the row's column can hold it, else the blob name.

    ``owner_id`` is the campaign id (or a transactional email's id): it groups a campaign's
    versions under one prefix.
    """
    text = template_json(template)
    if utf16_units(text) <= INLINE_TEMPLATE_MAX_UNITS:
        return ""
    raw = text.encode("utf-8")
    name = f"{tenant_id}/{owner_id}/{hashlib.sha256(raw).hexdigest()}.json"
    templates(storage).put(name, raw, "application/json")
    return name


def load_template(storage: Storage, inline: dict[str, Any], ref: str) -> dict[str, Any]:
    """The whole template of a row: ``inline`` when there is no ``ref``, else the blob's content."""
    if not ref:
        return inline
    return json.loads(templates(storage).read(ref))
