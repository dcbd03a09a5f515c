"""A local stand-in for the Azure Communication Services Email REST API.

The real ``azure-communication-email`` client talks to it through a connection string
``endpoint=http://127.0.0.1:<port>/;accesskey=<base64 key>`` (``connection_string()``):

- ``POST /emails:send?api-version=...``: HMAC-SHA256 checked the way ACS does it (the
  signature over ``VERB\\npath?query\\nx-ms-date;host;x-ms-content-sha256``, the content
  hash over the body), then 202 with ``Operation-Location`` and ``{id, status: Running}``;
- ``GET /emails/operations/{id}?api-version=...``: ``{id, status: Succeeded}`` (the
  poller's terminal answer), ``retry-after`` only while not terminal.

Errors are ACS-shaped: ``{"error": {"code", "message"}}``. Faults are the SendGrid
simulator's (``devhost.sendgrid_sim.FaultsIn``): latency, a status for a count or a
window (with ``Retry-After``), per-address failures, connection resets and accept-then-hang.
Test endpoints: ``/__sim/messages``, ``/__sim/faults``, ``/__sim/requests``, ``/__sim/reset``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from devhost.sendgrid_sim import Faults, FaultsIn, _drop_connection

API_VERSIONS = frozenset({"2023-03-31", "2024-07-01-preview", "2025-09-01"})


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


class AcsSimulator:
    """State and FastAPI ``app`` of the simulator; thread-safe."""

    def __init__(self, access_key: str | None = None) -> None:
        self.access_key = access_key or base64.b64encode(secrets.token_bytes(32)).decode()
        self._lock = threading.Lock()
        self._messages: list[dict[str, Any]] = []
        self._operations: dict[str, str] = {}
        self._faults = Faults()
        self._request_log: list[dict[str, Any]] = []
        self.app = self._build_app()

    def connection_string(self, base_url: str, access_key: str | None = None) -> str:
        return f"endpoint={base_url.rstrip('/')}/;accesskey={access_key or self.access_key}"

    # -- state ------------------------------------------------------------------------
    def messages(self, to: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            found = [dict(m) for m in self._messages]
        return [m for m in found if to is None or m["to"].lower() == to.lower()]

    def request_log(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(e) for e in self._request_log]

    def set_faults(self, faults: FaultsIn | dict[str, Any]) -> dict[str, Any]:
        faults = faults if isinstance(faults, FaultsIn) else FaultsIn.model_validate(faults)
        with self._lock:
            f = self._faults
            f.apply(faults)
            return f.as_dict()

    def clear_faults(self) -> None:
        with self._lock:
            self._faults = Faults()

    def reset(self) -> None:
        with self._lock:
            self._messages.clear()
            self._operations.clear()
            self._request_log.clear()
            self._faults = Faults()

    def _take_fault(self) -> tuple[int, int | None, int | None, str | None]:
        """(latency, status, retry-after, connection fault) for one send request."""
        with self._lock:
            f = self._faults
            status, retry_after = f.take_status()
            connection = None
            if f.reset_count > 0:
                f.reset_count, connection = f.reset_count - 1, "reset"
            elif f.accept_then_hang > 0:
                f.accept_then_hang, connection = f.accept_then_hang - 1, "hang"
            return f.latency_ms, status, retry_after, connection

    def _log(self, at: float, status: int | str) -> None:
        with self._lock:
            self._request_log.append({"at": at, "status": status})

    def _authorized(self, request: Request, body: bytes) -> bool:
        """ACS's HMAC scheme, checked exactly as the service documents it."""
        auth = request.headers.get("authorization", "")
        date = request.headers.get("x-ms-date", "")
        content_hash = request.headers.get("x-ms-content-sha256", "")
        if not auth.startswith("HMAC-SHA256 ") or not date or not content_hash:
            return False
        if base64.b64encode(hashlib.sha256(body).digest()).decode() != content_hash:
            return False
        params = dict(p.split("=", 1) for p in auth[len("HMAC-SHA256 "):].split("&") if "=" in p)
        path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        to_sign = f"{request.method.upper()}\n{path}\n{date};{request.headers.get('host', '')};{content_hash}"
        try:
            key = base64.b64decode(self.access_key)
        except ValueError:
            return False
        expected = base64.b64encode(hmac.new(key, to_sign.encode(), hashlib.sha256).digest()).decode()
        return hmac.compare_digest(expected, params.get("Signature", ""))

    # -- HTTP -------------------------------------------------------------------------
    def _build_app(self) -> FastAPI:
        app = FastAPI(title="ACS Email simulator", docs_url=None, redoc_url=None)
        app.state.simulator = self

        @app.post("/emails:send")
        async def send(request: Request) -> Response:
            raw = await request.body()
            arrived = time.monotonic()
            latency_ms, status, retry_after, connection = self._take_fault()
            if connection == "reset":
                self._log(arrived, "reset")
                _drop_connection(request)
                return Response(status_code=500)
            if latency_ms:
                await asyncio.sleep(latency_ms / 1000)
            if request.query_params.get("api-version") not in API_VERSIONS:
                return _error(400, "InvalidApiVersion", "The api-version is missing or not supported.")
            if not self._authorized(request, raw):
                self._log(arrived, 401)
                return _error(401, "Denied", "Denied by the resource provider.")
            if status is not None:
                self._log(arrived, status)
                headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
                code = "TooManyRequests" if status == 429 else "ServiceUnavailable"
                return _error(status, code, "injected failure", headers)
            try:
                message = json.loads(raw)
                to = message["recipients"]["to"][0]["address"]
                sender = message["senderAddress"]
                subject = message["content"]["subject"]
            except (ValueError, KeyError, IndexError, TypeError):
                return _error(400, "BadRequest", "The request body is not a valid email message.")
            with self._lock:
                fail = self._faults.fail_addresses.get(str(to).lower())
            if fail:
                self._log(arrived, fail)
                return _error(fail, "InvalidRecipient", "The recipient address is not valid.")
            operation_id = request.headers.get("operation-id") or str(secrets.token_hex(16))
            with self._lock:
                self._operations[operation_id] = "Succeeded"
                self._messages.append({
                    "operation_id": operation_id, "to": to, "from": sender, "subject": subject,
                    "headers": message.get("headers") or {}, "content": message["content"],
                    "received_at": datetime.now(UTC).isoformat(),
                })
            if connection == "hang":
                self._log(arrived, "hang")
                await asyncio.sleep(self._faults.hang_seconds)
                _drop_connection(request)
                return Response(status_code=500)
            self._log(arrived, 202)
            location = f"{str(request.base_url).rstrip('/')}/emails/operations/{operation_id}" \
                       f"?api-version={request.query_params['api-version']}"
            return JSONResponse({"id": operation_id, "status": "Running"}, status_code=202,
                                headers={"Operation-Location": location, "operation-id": operation_id})

        @app.get("/emails/operations/{operation_id}")
        async def operation(operation_id: str, request: Request) -> Response:
            if not self._authorized(request, b""):
                return _error(401, "Denied", "Denied by the resource provider.")
            with self._lock:
                status = self._operations.get(operation_id)
            if status is None:
                return _error(404, "NotFound", "No such operation.")
            return JSONResponse({"id": operation_id, "status": status})

        @app.get("/__sim/messages")
        async def list_messages(to: str | None = None) -> dict[str, Any]:
            return {"messages": self.messages(to)}

        @app.get("/__sim/requests")
        async def requests_() -> dict[str, Any]:
            return {"requests": self.request_log()}

        @app.post("/__sim/faults")
        async def post_faults(faults: FaultsIn) -> dict[str, Any]:
            return self.set_faults(faults)

        @app.delete("/__sim/faults", status_code=204)
        async def delete_faults() -> Response:
            self.clear_faults()
            return Response(status_code=204)

        @app.post("/__sim/reset", status_code=204)
        async def reset() -> Response:
            self.reset()
            return Response(status_code=204)

        return app
