"""Start the local simulators on free ports for tests (real servers, no mocks).

Plain context managers rather than pytest fixtures so any test module can wrap them in its
own fixture without conftest changes or import-for-side-effect tricks.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from devhost.sendgrid_sim import SendGridSimulator
from devhost.smtp_sink import SmtpSink
from devhost.stack import free_port, serve_in_thread, wait_for

__all__ = [
    "free_port",
    "read_http_request",
    "refused_port",
    "running_sendgrid_simulator",
    "running_smtp_sink",
    "wait_for",
]

LOCALHOST = "127.0.0.1"


@contextmanager
def refused_port() -> Iterator[int]:
    """A port that refuses connections: bound (so nobody else takes it) but not listening."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOCALHOST, 0))
        yield sock.getsockname()[1]


@contextmanager
def running_sendgrid_simulator(api_key: str | None = None
                               ) -> Iterator[tuple[SendGridSimulator, str]]:
    """A fresh SendGrid simulator; yields (simulator, base URL)."""
    sim = SendGridSimulator(api_key=api_key)
    with serve_in_thread(sim.app) as url:
        yield sim, url


@contextmanager
def running_smtp_sink(**kwargs: Any) -> Iterator[SmtpSink]:
    """A fresh SMTP sink on a free port (aiosmtpd binds by port number)."""
    sink = SmtpSink(LOCALHOST, free_port(), **kwargs)
    sink.start()
    try:
        yield sink
    finally:
        sink.stop()


def read_http_request(conn: socket.socket) -> bytes:
    """Read one HTTP/1.1 request with a Content-Length body from ``conn``; return the body.

    For tests whose server must misbehave at the socket level (reset, hang up), which no
    framework server will do on request.
    """
    data = b""
    while b"\r\n\r\n" not in data:
        data += conn.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length")))
    while len(body) < length:
        body += conn.recv(65536)
    return body
