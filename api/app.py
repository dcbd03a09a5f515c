"""The FastAPI app the Functions host serves (``AsgiFunctionApp(app=api.app.app)``).

Everything lives under ``/api/v1`` because the host passes the full path, its ``api`` route
prefix included. Building the app does no I/O: the Functions host imports this module while
indexing, possibly with storage unreachable, so tables and queues are created on the first
request that needs them (``api.dependencies.ResourceGate``).
"""

from __future__ import annotations

from fastapi import FastAPI

from api.auth import Directory
from api.dependencies import ResourceGate
from api.errors import install_error_handling
from api.routers import campaigns, contacts, health, jobs, suppressions, tenants
from core.settings import Settings, get_settings
from core.storage import Storage

API_PREFIX = "/api/v1"


def create_app(settings: Settings | None = None, storage: Storage | None = None) -> FastAPI:
    """Build the app around ``settings`` and ``storage`` (defaults: the process-wide ones)."""
    settings = settings or get_settings()
    storage = storage or Storage(settings.connection_string)
    app = FastAPI(
        title="Mailroom",
        version="1.0.0",
        summary="Email campaigns for many tenants, accounting for every recipient.",
        openapi_url="/api/openapi.json",
        docs_url="/api/docs",
        redoc_url=None,
        strict_content_type=False,
    )
    app.state.settings = settings
    app.state.storage = storage
    app.state.resource_gate = ResourceGate()
    app.state.directory = Directory()
    install_error_handling(app, settings.max_request_bytes)
    for module in (health, tenants, contacts, campaigns, jobs, suppressions):
        app.include_router(module.router, prefix=API_PREFIX)
    return app


app = create_app()
