"""The FastAPI app the Functions host serves (``AsgiFunctionApp(app=api.app.app)``).

Everything lives under ``/api/v1`` because the host passes the full path, its ``api`` route
prefix included. Building the app does no I/O: the Functions host imports this module while
indexing, possibly with storage unreachable, so tables and queues are created on the first
request that needs them (``api.dependencies.ResourceGate``).
"""

from __future__ import annotations

from fastapi import FastAPI

from api.audit import SupportAuditMiddleware
from api.auth import Directory
from api.console import router as console_router
from api.dependencies import ResourceGate
from api.errors import install_error_handling
from api.rate_limit import KeyRateLimiter
from api.routers import campaigns, contacts, control, forecast, health, jobs, suppressions, tenants
from api.routers import contact_history as contact_history_routes
from api.routers import emails as email_routes
from api.routers import job_insights as job_insight_routes
from api.routers import operator as operator_routes
from api.routers import unsubscribe as unsubscribe_routes
from api.routers import webhooks as webhook_routes
from api.tracing import TracingMiddleware
from core.settings import Settings, get_settings
from core.storage import Storage
from core.telemetry import FASTAPI_TELEMETRY_OFF, configure_telemetry

API_PREFIX = "/api/v1"


def create_app(settings: Settings | None = None, storage: Storage | None = None) -> FastAPI:
    """Build the app around ``settings`` and ``storage`` (defaults: the process-wide ones)."""
    settings = settings or get_settings()
    storage = storage or Storage(settings.connection_string, lean_batches=settings.storage_lean_batches)
    app = FastAPI(
        title="Mailroom",
        version="1.0.0",
        summary="Email campaigns for many tenants, accounting for every recipient.",
        openapi_url="/api/openapi.json",
        docs_url="/api/docs",
        redoc_url=None,
        strict_content_type=False,
        telemetry=FASTAPI_TELEMETRY_OFF,
    )
    app.state.settings = settings
    app.state.storage = storage
    app.state.resource_gate = ResourceGate()
    app.state.directory = Directory()
    app.state.rate_limiter = KeyRateLimiter(settings.api_rate_limit_per_minute)
    install_error_handling(app, settings.max_request_bytes)
    if configure_telemetry(settings) != "off":
        app.add_middleware(TracingMiddleware, prefix=API_PREFIX)  # a span per request, no URL in it
    app.add_middleware(SupportAuditMiddleware)  # outermost: no support read answered unaudited
    for module in (health, tenants, contacts, campaigns, jobs, suppressions, control, forecast):
        app.include_router(module.router, prefix=API_PREFIX)
    app.include_router(console_router)  # /api/console: the read-only support console
    for module in (webhook_routes, unsubscribe_routes, contact_history_routes):
        app.include_router(module.router, prefix=API_PREFIX)
    app.include_router(email_routes.router, prefix=API_PREFIX)
    for module in (job_insight_routes, operator_routes):  # the console's charts and operator views
        app.include_router(module.router, prefix=API_PREFIX)
    return app


app = create_app()
