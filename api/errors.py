"""The one place errors become HTTP responses (API.md, "Conventions").

Every 4xx/5xx leaves in the same shape::

    {"error": {"code": "<snake_case>", "message": "<for people>", "details": [{"field", "message"}]}}

Domain code raises ``core.errors`` classes and never thinks about status codes; the routers
raise ``ApiError`` for what only HTTP knows (auth, missing resources). Unknown exceptions
become a generic 500 whose log line names only the exception type and the route template:
never a body, an address or a traceback in the response.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.errors import (
    AlreadyExists,
    Conflict,
    FieldProblem,
    InvalidContinuation,
    InvalidInput,
    MailroomError,
    NotFound,
    StateConflict,
    StorageError,
    StorageRefused,
)

log = logging.getLogger("mailroom.api")

RETRY_AFTER_SECONDS = "5"

_CODES_BY_STATUS = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid_fields",
    429: "rate_limited",
    500: "internal_error",
    501: "not_implemented",
    503: "unavailable",
}
_LOCATIONS = ("body", "query", "path", "header", "cookie")


class ApiError(StarletteHTTPException):
    """An error only HTTP knows about (auth, a missing resource, a bad header).

    It subclasses Starlette's HTTPException so FastAPI passes it through untouched even when
    it is raised while the request body is being read (the size limit does that).
    """

    def __init__(
        self,
        status_code: int,
        code: str,
        message: str,
        details: Iterable[FieldProblem] = (),
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(status_code=status_code, detail=message, headers=dict(headers or {}) or None)
        self.code = code
        self.message = message
        self.details = list(details)


def not_found(what: str = "resource") -> ApiError:
    """404 for anything missing *or* belonging to another tenant: ids must not be probeable."""
    return ApiError(404, "not_found", f"{what} not found")


def forbidden(message: str) -> ApiError:
    return ApiError(403, "forbidden", message)


def unauthorized(message: str = "a valid API key is required") -> ApiError:
    return ApiError(401, "unauthorized", message, headers={"WWW-Authenticate": "Bearer"})


def too_large(message: str, field: str = "body") -> ApiError:
    return ApiError(413, "too_large", message, [FieldProblem(field, message)])


def invalid(field: str, message: str, status_code: int = 422) -> ApiError:
    """One invalid field outside a pydantic model (a header, a CSV header row)."""
    code = "invalid_fields" if status_code == 422 else _CODES_BY_STATUS.get(status_code, "bad_request")
    return ApiError(status_code, code, f"{field}: {message}", [FieldProblem(field, message)])


def error_body(code: str, message: str, details: Iterable[FieldProblem] = ()) -> dict[str, Any]:
    return {
        "error": {
            "code": code,
            "message": message,
            "details": [{"field": d.field, "message": d.message} for d in details],
        }
    }


def error_response(
    status_code: int,
    code: str,
    message: str,
    details: Iterable[FieldProblem] = (),
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(error_body(code, message, details), status_code=status_code, headers=headers)


def route_name(scope: Scope) -> str:
    """The matched route's template (``/api/v1/suppressions/{email}``), never the raw path.

    Raw paths can carry addresses; templates cannot, so logs stay free of PII.
    """
    route = scope.get("route")
    return getattr(route, "path", None) or "<unmatched route>"


# -- handlers ------------------------------------------------------------------------------


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    headers = dict(exc.headers or {})
    if isinstance(exc, ApiError):
        return error_response(exc.status_code, exc.code, exc.message, exc.details, headers)
    code = _CODES_BY_STATUS.get(exc.status_code, "error")
    if exc.status_code == 404:
        message = "no such resource or route"
    elif exc.status_code == 405:
        message = f"method {request.method} is not allowed here"
    else:
        message = str(exc.detail)
    return error_response(exc.status_code, code, message, headers=headers)


def field_path(loc: Iterable[Any]) -> str:
    """``("body", "template", "subject")`` → ``template.subject``; the location word is dropped."""
    parts = [str(p) for p in loc]
    if parts and parts[0] in _LOCATIONS:
        kind, parts = parts[0], parts[1:]
        return ".".join(parts) or kind
    return ".".join(parts)


def _message(error: Mapping[str, Any]) -> str:
    message = str(error.get("msg", "invalid value"))
    return message.removeprefix("Value error, ")


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    if any(e.get("type") == "json_invalid" for e in errors):
        reason = next((e.get("ctx", {}).get("error") for e in errors if e.get("type") == "json_invalid"), "")
        message = f"the request body is not valid JSON: {reason}" if reason else "invalid JSON"
        return error_response(400, "malformed_json", message, [FieldProblem("body", message)])
    details = [FieldProblem(field_path(e.get("loc", ())), _message(e)) for e in errors]
    return error_response(422, "invalid_fields", summary(details), details)


def summary(details: list[FieldProblem]) -> str:
    """A one-line message naming the first problem, so a person reading logs sees the cause."""
    if not details:
        return "some fields are invalid"
    first = details[0]
    more = f" (and {len(details) - 1} more)" if len(details) > 1 else ""
    return f"{first.field}: {first.message}{more}"


def domain_error_response(exc: MailroomError, scope: Scope) -> JSONResponse:
    """Map the core error tree onto statuses (the most specific class first)."""
    if isinstance(exc, NotFound):
        return error_response(404, "not_found", "resource not found")
    if isinstance(exc, AlreadyExists):
        return error_response(409, "already_exists", "the resource already exists")
    if isinstance(exc, Conflict):
        return error_response(409, "conflict", "the resource changed while you edited it; reload and retry")
    if isinstance(exc, StorageRefused):
        return refused_by_storage(exc, scope)
    if isinstance(exc, StorageError):
        log.warning("storage unavailable: %s on %s", type(exc).__name__, route_name(scope))
        return error_response(
            503, "storage_unavailable", "storage is unavailable; retry shortly",
            headers={"Retry-After": RETRY_AFTER_SECONDS},
        )
    if isinstance(exc, InvalidContinuation):
        return error_response(400, "bad_request", exc.message, exc.problems)
    if isinstance(exc, InvalidInput):
        return error_response(422, "invalid_fields", exc.message, exc.problems)
    if isinstance(exc, StateConflict):
        return error_response(409, "state_conflict", str(exc))
    log.error("unhandled %s on %s", type(exc).__name__, route_name(scope))
    return error_response(500, "internal_error", "internal error")


def refused_by_storage(exc: StorageRefused, scope: Scope) -> JSONResponse:
    """Storage refused the request for good: the input's fault, so 413/400, never 503 "retry".

    The field is the stored column storage refused (``name``, ``criteria``, ``attributes``…)
    when it could be told, else ``body``.
    """
    log.warning("storage refused code=%s column=%s on %s",
                exc.code or "-", exc.column or "-", route_name(scope))
    field = exc.column or "body"
    if exc.too_large:
        message = "too large to store"
        return error_response(413, "too_large", f"{field}: {message}", [FieldProblem(field, message)])
    message = "storage cannot store this value"
    return error_response(400, "bad_request", f"{field}: {message}", [FieldProblem(field, message)])


async def _domain_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, MailroomError)
    return domain_error_response(exc, request.scope)


# -- pure ASGI middlewares -----------------------------------------------------------------


class BodyLimitMiddleware:
    """413 for bodies larger than ``max_bytes``, before or while they stream in.

    A declared ``Content-Length`` over the limit is refused before any byte is read; a body
    without one (chunked) is counted as it arrives and refused once it crosses the limit,
    so a lying or absent header cannot make us buffer more than ``max_bytes``.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        seen = 0
        started = False

        async def counted_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise self._error()
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, watched_send)
        except ApiError as exc:
            # Raised by counted_receive outside FastAPI's handlers (e.g. from a middleware).
            if started or exc.status_code != 413:
                raise
            await self._refuse(scope, receive, send)

    def _error(self) -> ApiError:
        return too_large(f"the request body exceeds {self.max_bytes} bytes")

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        exc = self._error()
        response = error_response(exc.status_code, exc.code, exc.message, exc.details,
                                  headers={"Connection": "close"})
        await response(scope, receive, send)


class CatchAllMiddleware:
    """Last line: an exception nobody handled becomes a generic 500, logged without PII.

    Starlette's own fallback re-raises after answering, which makes servers log the full
    traceback and exception message (which may quote an address); this one does not.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watched_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, watched_send)
        except Exception as exc:  # the boundary that must not leak
            log.error("unhandled %s on %s", type(exc).__name__, route_name(scope))
            if started:
                return  # the response is under way; the server closes the connection
            response = error_response(500, "internal_error", "internal error")
            await response(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def install_error_handling(app: FastAPI, max_request_bytes: int) -> None:
    """Register every handler and the two middlewares (catch-all outermost)."""
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(MailroomError, _domain_error)
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_request_bytes)
    app.add_middleware(CatchAllMiddleware)


def json_loads_or_400(raw: bytes) -> Any:
    """Parse a body we read ourselves (the contacts import) with the same 400 as FastAPI's."""
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as err:
        message = f"the request body is not valid JSON: {err}"
        raise ApiError(400, "malformed_json", message, [FieldProblem("body", message)]) from err
