"""Keep-alive HTTP(S) for urllib, the transport under the ``sendgrid`` library.

``python_http_client`` (which ``sendgrid`` is built on) sends each request through a fresh
``urllib`` opener (building one scans the environment for proxies), and urllib forces
``Connection: close``: every email paid for a new opener and a TCP connect (against the real
API, a TLS handshake too); cProfile put that at 65% of a send's CPU. ``KeepAliveTransport``
keeps one opener whose ``KeepAliveHandler`` holds a connection per thread and host, reused
while it is fresh, and raises the library's own ``HTTPError`` types for 4xx/5xx.

What stays exactly as before is the line between "never reached the provider" and "may have
been accepted" (see ``providers/sendgrid.py``): failures while connecting or writing the
request are ``URLError``, failures after it are not. Reuse adds one hazard, a connection the
server closed while idle; like urllib3, a connection is reused only if its last response was
read to the end, it has been idle less than ``idle_seconds`` (below common keep-alive
timeouts) and its socket has nothing to read (a closed peer shows as readable). That last
check is a ``select()`` call, 12% of a sending host's CPU in the bench profile, so it is made
only for a connection idle ``recheck_after_seconds`` (1 s) or longer: servers close idle
connections after a keep-alive timeout of seconds, not while they are in steady use.
"""

from __future__ import annotations

import http.client
import select
import ssl
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from python_http_client.exceptions import handle_error


@dataclass
class _Kept:
    connection: http.client.HTTPConnection
    response: http.client.HTTPResponse
    used_at: float


class KeepAliveHandler(urllib.request.HTTPSHandler, urllib.request.HTTPHandler):
    """urllib handler for ``http``/``https`` that keeps a connection per thread and host."""

    def __init__(
        self,
        idle_seconds: float = 4.0,
        context: ssl.SSLContext | None = None,
        recheck_after_seconds: float = 1.0,
    ) -> None:
        urllib.request.HTTPSHandler.__init__(self, context=context)
        self._idle_seconds = idle_seconds
        self.recheck_after_seconds = recheck_after_seconds
        self._context = context
        self._local = threading.local()
        self._all: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self.connections_opened = 0

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self._open(http.client.HTTPConnection, req)

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self._open(http.client.HTTPSConnection, req, context=self._context)

    def close(self) -> None:
        """Close every connection kept by any thread."""
        with self._lock:
            connections, self._all = self._all, []
        for connection in connections:
            connection.close()

    def _open(self, kind: type[http.client.HTTPConnection], req: urllib.request.Request,
              **kwargs: Any) -> http.client.HTTPResponse:
        if not req.host:
            raise urllib.error.URLError("no host given")
        key = (kind.__name__, req.host)
        connection = self._reusable(key, req.timeout)
        if connection is None:
            connection = kind(req.host, timeout=req.timeout, **kwargs)
            with self._lock:
                self._all.append(connection)
                self.connections_opened += 1
        headers = dict(req.unredirected_hdrs)
        headers.update({k: v for k, v in req.headers.items() if k not in headers})
        headers = {name.title(): value for name, value in headers.items()}
        try:
            try:
                connection.request(req.get_method(), req.selector, req.data, headers)
            except OSError as err:  # connecting or writing: the request did not fully arrive
                raise urllib.error.URLError(err) from err
            response = connection.getresponse()
        except BaseException:
            self._drop(key, connection)
            raise
        self._kept()[key] = _Kept(connection, response, time.monotonic())
        response.url = req.get_full_url()  # what urllib's own handler sets
        response.msg = response.reason  # type: ignore[assignment]  # urllib does this too; typeshed says HTTPMessage
        return response

    def _kept(self) -> dict[tuple[str, str], _Kept]:
        kept = getattr(self._local, "kept", None)
        if kept is None:
            kept = self._local.kept = {}
        return kept

    def _reusable(self, key: tuple[str, str], timeout: float | None) -> http.client.HTTPConnection | None:
        kept = self._kept().pop(key, None)
        if kept is None:
            return None
        connection = kept.connection
        idle = time.monotonic() - kept.used_at
        sock = connection.sock
        usable = idle < self._idle_seconds and kept.response.isclosed() and sock is not None
        if usable and idle >= self.recheck_after_seconds:
            usable = not _readable(sock)
        if not usable:
            self._drop(key, connection)
            return None
        if sock.gettimeout() != timeout:  # settimeout is a system call even when nothing changes
            sock.settimeout(timeout)
        return connection

    def _drop(self, key: tuple[str, str], connection: http.client.HTTPConnection) -> None:
        self._kept().pop(key, None)
        connection.close()
        with self._lock:
            if connection in self._all:
                self._all.remove(connection)


def _readable(sock: Any) -> bool:
    """An idle keep-alive socket with something to read was closed (or spoken to) by the server."""
    try:
        return bool(select.select([sock], [], [], 0)[0])
    except (OSError, ValueError):
        return True


class KeepAliveTransport:
    """Opens urllib requests over kept-alive connections, with ``python_http_client``'s errors."""

    def __init__(self, idle_seconds: float = 4.0, context: ssl.SSLContext | None = None) -> None:
        self.handler = KeepAliveHandler(idle_seconds, context)
        self._opener = urllib.request.build_opener(self.handler)

    def open(self, request: urllib.request.Request, timeout: float | None = None) -> Any:
        """The response, or (as ``Client._make_request`` does) the library's error for 4xx/5xx."""
        try:
            return self._opener.open(request, timeout=timeout)
        except urllib.error.HTTPError as err:
            exc = handle_error(err)
            exc.__cause__ = None
            raise exc  # noqa: B904 - the library raises it bare too; callers read status and body

    def close(self) -> None:
        self.handler.close()
