"""The local Functions host: index ``function_app.app`` and run its triggers.

HTTP goes to the app's ASGI application (served by uvicorn; its routes already start with the
``api`` route prefix), timer triggers to :mod:`devhost.timers`, queue triggers to
:mod:`devhost.queue_poller`. Other trigger and binding types are reported and skipped, so a
function devhost cannot run is visible at start rather than silently idle.
"""

from __future__ import annotations

import importlib
import logging
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType, TracebackType
from typing import Any

import azure.functions as func
import uvicorn

from core.settings import PROJECT_ROOT
from devhost.hostconfig import (
    QueueConfig,
    expand_app_settings,
    is_function_disabled,
    load_queue_config,
    resolve_connection_string,
)
from devhost.logs import log_event
from devhost.queue_poller import QueuePoller
from devhost.timers import Schedule, TimerRunner

DEFAULT_HTTP_PORT = 7071
HTTP_START_TIMEOUT_SECONDS = 30.0


class HostError(RuntimeError):
    """The function app cannot be loaded or a part of the host did not start."""


def load_function_app(module_name: str = "function_app") -> func.FunctionRegister:
    """Import ``module_name`` and return its ``app``, as the Python worker does.

    The worker puts the app's root on ``sys.path``; so does this, so ``python -m devhost``
    works from any directory.
    """
    if str(PROJECT_ROOT) not in sys.path:
        sys.path.insert(0, str(PROJECT_ROOT))
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name != module_name:
            raise  # the app imports something missing: show the real traceback
        raise HostError(f"no module {module_name!r} in {PROJECT_ROOT} (is function_app.py there?)") from err
    app = getattr(module, "app", None)
    if not isinstance(app, func.FunctionRegister):  # FunctionApp, AsgiFunctionApp, ...
        raise HostError(f"{module_name}.app is not an azure.functions FunctionApp")
    return app


def index_functions(app: func.FunctionRegister) -> list[func.Function]:
    """The app's functions, as ``app.get_functions()`` lists them.

    ``get_functions`` remembers the names it has seen and refuses a second call on the same
    app (duplicate names); the worker indexes once per process, devhost may index an app again
    (tests, a restarted host in one process), so each call starts from a clean slate.
    """
    if hasattr(app, "functions_bindings"):
        app.functions_bindings = None
    return app.get_functions()


class FunctionHost:
    """All triggers of one function app, started and stopped together.

    ``queue_config`` defaults to host.json's ``extensions.queues``; ``connection_string``
    overrides every queue trigger's ``connection`` setting (tests point it at their Azurite).
    """

    def __init__(
        self,
        app: func.FunctionRegister,
        *,
        serve_http: bool = True,
        run_timers: bool = True,
        run_queues: bool = True,
        http_port: int = DEFAULT_HTTP_PORT,
        http_host: str = "127.0.0.1",
        queue_config: QueueConfig | None = None,
        connection_string: str | None = None,
        grace_seconds: float = 10.0,
    ) -> None:
        self.app = app
        self.serve_http = serve_http
        self.run_timers = run_timers
        self.run_queues = run_queues
        self.http_host = http_host
        self.http_port = http_port
        self.queue_config = queue_config or load_queue_config()
        self.connection_string = connection_string
        self.grace_seconds = grace_seconds
        self.pollers: list[QueuePoller] = []
        self.timers: list[TimerRunner] = []
        self._server: uvicorn.Server | None = None
        self._server_thread: threading.Thread | None = None

    @property
    def http_url(self) -> str | None:
        """Base URL of the HTTP app once it serves (``http_port=0`` picks a free port)."""
        if self._server is None or not self._server.started:
            return None
        return f"http://{self.http_host}:{self.http_port}"

    def start(self) -> None:
        """Index the app, then start queue pollers, timers and the HTTP server."""
        self._plan()
        try:
            for poller in self.pollers:
                poller.start()
            for timer in self.timers:
                timer.start()
            if self._server is not None:
                self._start_http()
        except BaseException:
            self.stop()
            raise
        log_event("host.ready", queues=len(self.pollers), timers=len(self.timers),
                  http=self.http_url or "off")

    def stop(self) -> None:
        """Stop receiving and firing, let in-flight work finish (up to the grace), stop HTTP."""
        deadline = time.monotonic() + self.grace_seconds
        for poller in self.pollers:
            poller.request_stop()  # all stop receiving at once; then each gets the rest of the grace
        for timer in self.timers:
            timer.request_stop()
        if self._server is not None:
            self._server.should_exit = True
        for poller in self.pollers:
            poller.stop(_left(deadline))
        for timer in self.timers:
            timer.stop(_left(deadline))
        if self._server_thread is not None:
            self._server_thread.join(_left(deadline) + 1.0)
        log_event("host.stopped")

    def is_healthy(self) -> bool:
        """False once a part that should run (the HTTP server) has died."""
        return self._server_thread is None or self._server_thread.is_alive()

    def __enter__(self) -> FunctionHost:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _plan(self) -> None:
        """Turn the indexed functions into runners; bad config fails here, before anything runs."""
        self.pollers, self.timers, self._server = [], [], None
        http_functions = []
        for function in index_functions(self.app):
            name = function.get_function_name()
            trigger: dict[str, Any] = function.get_trigger().get_dict_repr()
            _warn_unsupported_bindings(function, trigger)
            if is_function_disabled(name):
                log_event("function.disabled", function=name)
                continue
            kind = trigger.get("type")
            if kind == "queueTrigger" and self.run_queues:
                self.pollers.append(self._queue_poller(function, trigger))
            elif kind == "timerTrigger" and self.run_timers:
                self.timers.append(TimerRunner(
                    name, Schedule(expand_app_settings(str(trigger["schedule"]))),
                    function.get_user_function(), str(trigger["name"]),
                    bool(trigger.get("runOnStartup", False)),
                ))
            elif kind == "httpTrigger":
                http_functions.append(name)
            elif kind not in ("queueTrigger", "timerTrigger"):
                log_event("function.unsupported", logging.WARNING, function=name, trigger=kind)
        if self.serve_http and http_functions:
            middleware = getattr(self.app, "middleware", None)
            if not isinstance(self.app, func.AsgiFunctionApp) or middleware is None:
                log_event("http.unsupported", logging.WARNING, functions=",".join(http_functions),
                          reason="only AsgiFunctionApp HTTP apps are served")
                return
            config = uvicorn.Config(
                middleware._app, host=self.http_host, port=self.http_port, log_level="warning",
                access_log=False, lifespan="auto", timeout_graceful_shutdown=max(1, int(self.grace_seconds)),
            )
            self._server = uvicorn.Server(config)

    def _queue_poller(self, function: func.Function, trigger: dict[str, Any]) -> QueuePoller:
        connection = self.connection_string or resolve_connection_string(trigger.get("connection"))
        return QueuePoller(
            function.get_function_name(), expand_app_settings(str(trigger["queueName"])),
            connection, function.get_user_function(), str(trigger["name"]), self.queue_config,
        )

    def _start_http(self) -> None:
        assert self._server is not None
        self._server_thread = threading.Thread(target=self._server.run, name="http", daemon=True)
        self._server_thread.start()
        deadline = time.monotonic() + HTTP_START_TIMEOUT_SECONDS
        while not self._server.started:
            if not self._server_thread.is_alive():
                raise HostError(f"HTTP server did not start on {self.http_host}:{self.http_port}")
            if time.monotonic() > deadline:
                raise HostError("HTTP server did not start in time")
            time.sleep(0.05)
        sockets = [s for server in self._server.servers for s in server.sockets]
        if sockets:
            self.http_port = int(sockets[0].getsockname()[1])


def _left(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


def _warn_unsupported_bindings(function: func.Function, trigger: dict[str, Any]) -> None:
    for binding in function.get_bindings():
        info = binding.get_dict_repr()
        if info.get("name") != trigger.get("name") and info.get("type") != "http":
            log_event("binding.unsupported", logging.WARNING, function=function.get_function_name(),
                      binding=info.get("type"), name=info.get("name"))


@contextmanager
def _stop_on_signals(stop_event: threading.Event) -> Iterator[None]:
    """SIGINT/SIGTERM set ``stop_event`` (only the main thread may install handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _handle(signum: int, frame: FrameType | None) -> None:
        log_event("host.signal", signal=signal.Signals(signum).name)
        stop_event.set()

    previous = {sig: signal.signal(sig, _handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_host(
    serve_http: bool = True,
    run_timers: bool = True,
    run_queues: bool = True,
    http_port: int = DEFAULT_HTTP_PORT,
    stop_event: threading.Event | None = None,
    *,
    app: func.FunctionRegister | None = None,
    queue_config: QueueConfig | None = None,
    connection_string: str | None = None,
    grace_seconds: float = 10.0,
) -> None:
    """Run the host until Ctrl-C, SIGTERM or ``stop_event``; then stop everything cleanly."""
    stop = stop_event or threading.Event()
    host = FunctionHost(
        app or load_function_app(), serve_http=serve_http, run_timers=run_timers,
        run_queues=run_queues, http_port=http_port, queue_config=queue_config,
        connection_string=connection_string, grace_seconds=grace_seconds,
    )
    with _stop_on_signals(stop):
        host.start()
        try:
            while not stop.wait(0.5):
                if not host.is_healthy():
                    raise HostError("the HTTP server stopped unexpectedly")
        finally:
            host.stop()
