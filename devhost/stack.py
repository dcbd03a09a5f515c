"""The whole local stack: Azurite, the SendGrid simulator (or the SMTP sink) and N host processes.

``make serve`` runs it until Ctrl-C or SIGTERM; the demo, the end-to-end tests and the bench
start it programmatically (``Stack``) so each run owns its emulator, simulator and hosts, and
can kill or restart one host process to prove what a crash does.

App settings from the environment win, as everywhere else (README "Configuration"): the stack
only fills in what is unset, pointing the hosts at the simulators it started. The exception is
``AzureWebJobsStorage``: the stack's hosts always use the Azurite the stack started.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
import uvicorn

from core.settings import PROJECT_ROOT
from devhost.azurite import AzuriteHandle, port_is_listening, start_azurite
from devhost.sendgrid_events import EventFeedback, WebhookSigner, attach_feedback
from devhost.sendgrid_sim import SendGridSimulator
from devhost.smtp_sink import SmtpSink

LOCALHOST = "127.0.0.1"
DEMO_ADMIN_KEY = "local-admin-key"
SIMULATOR_KEY = "SG.local-simulator"
# The settings the stack always decides itself (it runs its own Azurite; see the module docstring).
STACK_OWNED_SETTINGS = frozenset({"AzureWebJobsStorage"})

log = logging.getLogger("devhost.stack")


def fill_unset(stack_values: Mapping[str, str], environ: Mapping[str, str]) -> dict[str, str]:
    """The stack's value of each setting the environment leaves unset or empty; the environment's
    own value otherwise (except the settings the stack owns)."""
    return {
        name: value if name in STACK_OWNED_SETTINGS or not environ.get(name) else environ[name]
        for name, value in stack_values.items()
    }


def stop_on_sigterm() -> None:
    """Make SIGTERM (and SIGHUP) stop the process as Ctrl-C does: the ``KeyboardInterrupt``
    unwinds through ``Stack.stop()``, so Azurite and the host processes do not outlive us.
    A second signal while stopping is ignored, so cleanup is not cut short."""

    def _interrupt(signum: int, frame: FrameType | None) -> None:
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        raise KeyboardInterrupt

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)


class HostExited(RuntimeError):
    """A host process stopped while the stack waited for it; ``port_taken``: its port was in use."""

    def __init__(self, message: str, port_taken: bool = False) -> None:
        super().__init__(message)
        self.port_taken = port_taken


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "a condition",
             interval: float = 0.05) -> Any:
    """Poll until ``predicate`` returns something truthy, or fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOCALHOST, 0))
        return sock.getsockname()[1]


@contextmanager
def serve_in_thread(app: Any) -> Iterator[str]:
    """Run an ASGI app with uvicorn on a free port in a daemon thread; yields its URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((LOCALHOST, 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started or not thread.is_alive(), 10, "the simulator to start", 0.01)
        yield f"http://{LOCALHOST}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


class Stack:
    """Azurite + SendGrid simulator + host processes, all on free ports by default."""

    def __init__(
        self,
        workers: int = 1,
        http_port: int | None = None,
        settings: dict[str, str] | None = None,
        azurite_ports: tuple[int, int, int] | None = None,
        log_dir: Path | None = None,
        provider_events: bool = False,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        """``provider_events``: the simulator posts SendGrid's signed event webhooks back to the
        host (delivered/bounced/…), as ``make demo`` and ``make serve`` do. Off by default so a
        run's counts stay ``sent`` where a test checks the send path alone.

        ``settings`` win over ``environ`` (default: this process's environment), which wins over
        what the stack fills in."""
        self.workers = workers
        self._choose_port = http_port is None  # ours to change if another process takes it first
        self.http_port = http_port or free_port()
        self.extra_settings = settings or {}
        self.environ: Mapping[str, str] = os.environ if environ is None else environ
        self.azurite_ports = azurite_ports
        self.log_dir = log_dir or PROJECT_ROOT / ".devhost" / f"stack-{os.getpid()}-{self.http_port}"
        self.azurite: AzuriteHandle | None = None
        self.simulator = SendGridSimulator(api_key=SIMULATOR_KEY)
        self.simulator_url = ""
        self.smtp_sink: SmtpSink | None = None
        self.processes: dict[int, subprocess.Popen[bytes]] = {}
        self._log_offsets: dict[int, int] = {}
        self._sim_cm: Any = None
        # The simulator posts signed event webhooks back to the host, as SendGrid does.
        self.webhook_signer = WebhookSigner()
        self.provider_events = provider_events
        self.feedback: EventFeedback | None = None

    @property
    def base_url(self) -> str:
        return f"http://{LOCALHOST}:{self.http_port}"

    @property
    def admin_key(self) -> str:
        return self.env()["MAILROOM_ADMIN_KEY"]

    def given(self, name: str) -> str:
        """A setting the caller or the environment gave (``""``: left to the stack)."""
        return self.extra_settings.get(name) or self.environ.get(name) or ""

    @property
    def providers(self) -> list[str]:
        """The providers the hosts will use, as ``core.settings`` reads them."""
        listed = self.given("EMAIL_PROVIDERS") or self.given("EMAIL_PROVIDER") or "sendgrid"
        return [name.strip().lower() for name in listed.split(",") if name.strip()]

    @property
    def wants_smtp_sink(self) -> bool:
        """SMTP is among the providers and nobody named an SMTP server: the stack brings one."""
        return "smtp" in self.providers and not (self.given("SMTP_HOST") or self.given("SMTP_PORT"))

    @property
    def webhook_key_given(self) -> bool:
        """A SendGrid webhook key from outside: the simulator's signed events cannot verify."""
        return bool(self.given("SENDGRID_WEBHOOK_PUBLIC_KEY"))

    def env(self) -> dict[str, str]:
        """The app settings every host process gets: the caller's ``settings``, then the
        environment, then what the stack fills in (its Azurite, simulators and fast timers)."""
        assert self.azurite is not None
        values = {
            "AzureWebJobsStorage": self.azurite.connection_string,
            "MAILROOM_ADMIN_KEY": DEMO_ADMIN_KEY,
            "MAILROOM_PUBLIC_URL": self.base_url,
            "EMAIL_PROVIDER": "sendgrid",
            "SENDGRID_API_KEY": SIMULATOR_KEY,
            "SENDGRID_API_URL": self.simulator_url,
            "CAMPAIGN_MANAGER_SCHEDULE": "*/2 * * * * *",
            "STATUS_MANAGER_SCHEDULE": "*/2 * * * * *",
            "SENDGRID_WEBHOOK_PUBLIC_KEY": self.webhook_signer.public_key,
        }
        if self.smtp_sink is not None:
            values.update(SMTP_HOST=self.smtp_sink.host, SMTP_PORT=str(self.smtp_sink.port))
        values = fill_unset(values, self.environ)
        values.update(self.extra_settings)
        return values

    # The module whose ``app`` the host processes load (the bench loads an instrumented one).
    app_module = "function_app"

    def start_azurite(self) -> AzuriteHandle:
        return start_azurite(ports=self.azurite_ports)

    def worker_env(self) -> dict[str, str]:
        """The environment of a host process: ours, plus the app settings, never local.settings.json."""
        env = {**self.environ, **self.env(), "PYTHONUNBUFFERED": "1"}
        env["MAILROOM_LOCAL_SETTINGS"] = str(self.log_dir / "no-local-settings.json")
        return env

    def start(self) -> Stack:
        """Start everything; if any part fails, stop what did start (``with`` would not)."""
        try:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            self.azurite = self.start_azurite()
            self._sim_cm = serve_in_thread(self.simulator.app)
            self.simulator_url = self._sim_cm.__enter__()
            if self.wants_smtp_sink:
                self.smtp_sink = SmtpSink(LOCALHOST, free_port())
                self.smtp_sink.start()
            self.start_workers()
            if self.provider_events and self.webhook_key_given:
                log.warning("SENDGRID_WEBHOOK_PUBLIC_KEY is set, so the SendGrid simulator's signed event "
                            "webhooks would not verify: the simulator posts no delivery events")
            elif self.provider_events:
                self.feedback = attach_feedback(
                    self.simulator, f"{self.base_url}/api/v1/webhooks/sendgrid", self.webhook_signer
                )
        except BaseException:
            self.stop()
            raise
        return self

    def start_workers(self, attempts: int = 3) -> None:
        """Start every host process and wait until worker 0 answers.

        A free port is only free until someone binds it: under load an outgoing connection
        can take the port picked for the host's HTTP server before the host binds it. When
        that port was ours to pick, pick another and start again.
        """
        for attempt in range(1, attempts + 1):
            for index in range(self.workers):
                self.start_worker(index)
            if not self.workers:
                return
            try:
                self.wait_healthy()
                return
            except HostExited as err:
                if not (self._choose_port and err.port_taken and attempt < attempts):
                    raise
                self.stop_workers()
                self.http_port = free_port()

    def start_worker(self, index: int) -> None:
        """Start host process ``index``; worker 0 serves HTTP and runs the timers."""
        log = open(self.log_dir / f"worker-{index}.log", "ab")  # noqa: SIM115 - closed with the process
        self._log_offsets[index] = log.tell()  # this run's lines start here
        cmd = [sys.executable, "-m", "devhost", "--no-azurite", "--app", self.app_module,
               "--worker-index", str(index), "--port", str(self.http_port), "--grace", "2"]
        # Its own process group: a terminal's Ctrl-C reaches only the stack, which stops hosts in order.
        self.processes[index] = subprocess.Popen(
            cmd, cwd=PROJECT_ROOT, env=self.worker_env(), stdout=log, stderr=log, start_new_session=True
        )
        log.close()

    def kill_worker(self, index: int) -> None:
        """SIGKILL: the process gets no chance to finish or clean up, as in a crash."""
        process = self.processes[index]
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)

    def wait_healthy(self, timeout: float = 60) -> None:
        def healthy() -> bool:
            for index, process in self.processes.items():
                if process.poll() is not None:
                    log = self.log_dir / f"worker-{index}.log"
                    with log.open("rb") as lines:
                        lines.seek(self._log_offsets.get(index, 0))
                        taken = b"address already in use" in lines.read()
                    raise HostExited(f"host worker {index} exited with {process.returncode}; see {log}",
                                     port_taken=taken)
            if not port_is_listening(LOCALHOST, self.http_port):
                return False
            try:
                return httpx.get(f"{self.base_url}/api/v1/health", timeout=5).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(healthy, timeout, "the host to answer /api/v1/health", 0.2)

    def stop(self) -> None:
        if self.feedback is not None:
            self.feedback.stop()
            self.feedback = None
        self.stop_workers()
        if self._sim_cm is not None:
            self._sim_cm.__exit__(None, None, None)
            self._sim_cm = None
        if self.smtp_sink is not None:
            self.smtp_sink.stop()
            self.smtp_sink = None
        if self.azurite is not None:
            self.azurite.stop()
            self.azurite = None

    def stop_workers(self) -> None:
        """SIGTERM every host process (they finish what they can), SIGKILL what outlives 15 s."""
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def azurite_ports(text: str) -> tuple[int, int, int] | None:
    """``--azurite-ports``: ``blob,queue,table``, ``auto`` (free ports) or ``default``."""
    if text == "auto":
        return None
    if text == "default":
        return None if port_is_listening(LOCALHOST, 10002) else (10000, 10001, 10002)
    try:
        blob, queue, table = (int(port) for port in text.split(","))
    except ValueError as err:
        raise argparse.ArgumentTypeError("expected blob,queue,table ports, 'auto' or 'default'") from err
    return blob, queue, table


def main(argv: list[str] | None = None) -> int:
    """``python -m devhost.stack``: keep the stack up for exploring (``make serve``)."""
    parser = argparse.ArgumentParser(prog="python -m devhost.stack", description=main.__doc__)
    parser.add_argument("--port", type=int, default=7071)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--azurite-ports", default="default",
                        help="blob,queue,table; 'auto' picks free ones; default 10000-10002 when free")
    args = parser.parse_args(argv)
    stop_on_sigterm()
    ports = azurite_ports(args.azurite_ports)
    stack = Stack(workers=args.workers, http_port=args.port, azurite_ports=ports, provider_events=True)
    try:
        with stack:
            print(f"Mailroom is up: {stack.base_url}/api/docs  (admin key: {stack.admin_key})")
            sink = f"  SMTP sink: {stack.smtp_sink.host}:{stack.smtp_sink.port}" if stack.smtp_sink else ""
            print(f"Providers: {','.join(stack.providers)}  SendGrid simulator: {stack.simulator_url}{sink}")
            print(f"Logs: {stack.log_dir}  Ctrl-C (or SIGTERM) stops it all.", flush=True)
            while all(p.poll() is None for p in stack.processes.values()):
                time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
