"""A server span per API request, named by its route template, joining the caller's trace.

Written here instead of using the generic ASGI instrumentation because that records the raw
URL and query string, and those can carry addresses (``/suppressions/{email}``,
``?email=``); this span records only the method, the route template and the status code.
"""

from __future__ import annotations

from opentelemetry.trace import SpanKind
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import route_name
from core import telemetry


class TracingMiddleware:
    def __init__(self, app: ASGIApp, prefix: str = "") -> None:
        self.app = app
        self.prefix = prefix  # routers are included under it; their route templates are relative

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not telemetry.enabled():
            await self.app(scope, receive, send)
            return
        traceparent = dict(scope.get("headers", ())).get(b"traceparent", b"").decode("latin-1") or None
        method = scope.get("method", "")
        with telemetry.span(f"{method} request", {"http.request.method": method},
                            traceparent, SpanKind.SERVER) as span:

            async def watched_send(message: Message) -> None:
                if message["type"] == "http.response.start":
                    span.set_attribute("http.response.status_code", message["status"])
                await send(message)

            try:
                await self.app(scope, receive, watched_send)
            finally:
                route = route_name(scope)
                if self.prefix and scope.get("path", "").startswith(self.prefix + "/") \
                        and not route.startswith(self.prefix):
                    route = self.prefix + route
                span.update_name(f"{method} {route}")
                span.set_attribute("http.route", route)
