"""The support console: one static page at ``/api/console`` that reads the REST API with the user's key.

No frontend build: plain HTML, CSS and JavaScript in ``index.html`` (its charts are SVG drawn
by that script; nothing is loaded from elsewhere, so it works offline). It reads with GETs, so
what a key sees there is exactly what the API lets it read: a support key reads its tenant (an
operator-wide one, any tenant and the operator views), a tenant key its own tenant, another
tenant's ids answer 404. Its one write is a dead letter's replay or discard, which the API
allows the admin key alone and audits. The key lives in the tab's ``sessionStorage``, never in
a URL.

The Functions host forwards only its ``api`` route prefix to the app, so the console's address
is ``/api/console``; ``/console`` redirects there where the app is served directly (devhost).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, RedirectResponse

PAGE = (Path(__file__).parent / "index.html").read_text(encoding="utf-8")
# The page loads nothing from elsewhere and runs only its own inline script.
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}

router = APIRouter(include_in_schema=False)


@router.get("/api/console", response_class=HTMLResponse)
def console_page() -> HTMLResponse:
    return HTMLResponse(PAGE, headers=HEADERS)


@router.get("/console")
def console_redirect() -> RedirectResponse:
    return RedirectResponse("/api/console", status_code=308)
