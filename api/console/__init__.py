"""The support console: one static page at ``/api/console`` that reads the REST API with the user's key.

No frontend build: plain HTML, CSS and JavaScript in ``index.html``. The page is read-only (it
only sends GETs), so what a key sees there is exactly what the API lets it read: a support key
reads its tenant (an operator-wide one, any tenant), a tenant key its own tenant, another
tenant's ids answer 404. The key lives in the tab's ``sessionStorage``, never in a URL.

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
