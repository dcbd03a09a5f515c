"""RFC 8058 one-click unsubscribe (API.md "Delivery feedback and compliance").

Every campaign email carries ``List-Unsubscribe: <https://…/api/v1/unsubscribe/{token}>``
and ``List-Unsubscribe-Post: List-Unsubscribe=One-Click``. The token is HMAC-signed
(``core.unsubscribe``), so it is checked without a lookup and cannot be forged or altered.

- ``GET`` shows a small confirmation page and changes nothing: mail scanners and link
  previewers fetch links, and a GET must not unsubscribe anyone.
- ``POST`` (the mailbox provider's one-click, or the page's button) suppresses the address
  at once: no login, no redirect, 200. Repeating it is harmless.
"""

from __future__ import annotations

import html
import logging

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from api.dependencies import SettingsDep, StorageDep
from api.errors import not_found
from api.routers.conventions import ERROR_RESPONSES
from core.contact_tables import ContactTables
from core.storage import TENANTS, Storage
from core.suppressions import add_suppression
from core.unsubscribe import UnsubscribeClaim, read_token

router = APIRouter(tags=["compliance"], responses={404: ERROR_RESPONSES[404]})
log = logging.getLogger("mailroom.unsubscribe")

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<meta name="robots" content="noindex"><title>{title}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem}}
button{{font-size:1rem;padding:.5rem 1rem}}</style></head>
<body><h1>{title}</h1>{body}</body></html>
"""


def _claim(settings: SettingsDep, token: str) -> UnsubscribeClaim:
    claim = read_token(settings.signing_key, token)
    if claim is None:
        raise not_found("unsubscribe link")
    return claim


def _page(title: str, body: str) -> HTMLResponse:
    return HTMLResponse(_PAGE.format(title=html.escape(title), body=body),
                        headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"})


@router.get("/unsubscribe/{token}", response_class=HTMLResponse)
def unsubscribe_page(token: str, settings: SettingsDep, storage: StorageDep) -> HTMLResponse:
    """A confirmation page with one button; nothing changes until it is pressed."""
    claim = _claim(settings, token)
    tenant = storage.table(TENANTS).find("tenant", claim.tenant_id)
    sender = html.escape(tenant.get("name", "") if tenant else "") or "this sender"
    action = html.escape(f"/api/v1/unsubscribe/{token}", quote=True)
    return _page(
        "Unsubscribe",
        f"<p>Stop receiving campaign emails from {sender}?</p>"
        f'<form method="post" action="{action}">'
        '<input type="hidden" name="List-Unsubscribe" value="One-Click">'
        "<button type=\"submit\">Unsubscribe</button></form>",
    )


@router.post("/unsubscribe/{token}", response_class=HTMLResponse)
def unsubscribe_one_click(token: str, settings: SettingsDep, storage: StorageDep) -> HTMLResponse:
    """RFC 8058: suppress the address now; answer 200 without a redirect."""
    claim = _claim(settings, token)
    unsubscribe_contact(storage, claim)
    return _page("Unsubscribed", "<p>You will not receive campaign emails from this sender again.</p>")


def unsubscribe_contact(storage: Storage, claim: UnsubscribeClaim) -> bool:
    """Suppress the claim's contact; ``False`` when the contact no longer exists (erased)."""
    contact = ContactTables(storage).find(claim.tenant_id, claim.contact_id)
    if contact is None or not contact.get("email"):
        log.info("one-click unsubscribe for a missing contact tenant=%s", claim.tenant_id)
        return False
    add_suppression(storage, claim.tenant_id, contact["email"], reason="unsubscribed", source="one_click",
                    campaign_id=claim.campaign_id)
    log.info("one-click unsubscribe tenant=%s contact=%s", claim.tenant_id, claim.contact_id)
    return True
