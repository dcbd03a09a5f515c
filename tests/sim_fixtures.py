"""Start the local simulators on free ports for tests (real servers, no mocks).

Plain context managers rather than pytest fixtures so any test module can wrap them in its
own fixture without conftest changes or import-for-side-effect tricks.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

from devhost.sendgrid_sim import SendGridSimulator
from devhost.smtp_sink import SmtpSink

LOCALHOST = "127.0.0.1"


def wait_for(predicate: Callable[[], Any], timeout: float = 5.0, interval: float = 0.01,
             what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail loudly at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def free_port() -> int:
    """A port that was free a moment ago (for servers that cannot take a bound socket)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOCALHOST, 0))
        return sock.getsockname()[1]


@contextmanager
def refused_port() -> Iterator[int]:
    """A port that refuses connections: bound (so nobody else takes it) but not listening."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOCALHOST, 0))
        yield sock.getsockname()[1]


@contextmanager
def serve_in_thread(app: Any) -> Iterator[str]:
    """Run an ASGI app with uvicorn in a background thread; yields its base URL.

    The listening socket is bound here first (port 0), so there is no free-port race.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((LOCALHOST, 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started or not thread.is_alive(), what="uvicorn to start")
        if not server.started:
            raise RuntimeError("uvicorn exited before it started")
        yield f"http://{LOCALHOST}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


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
