"""Start Azurite (the storage emulator) from the project's ``node_modules``.

Tests want a private, in-memory Azurite on free ports; ``python -m devhost`` wants the one the
connection string names, persistent under ``.azurite/``, started only when nobody serves it yet.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO
from urllib.parse import urlsplit

from core.settings import PROJECT_ROOT, devstore_connection_string
from devhost.logs import log_event

AZURITE_BIN = PROJECT_ROOT / "node_modules" / ".bin" / "azurite"
PERSISTENT_LOCATION = PROJECT_ROOT / ".azurite"
LOCAL_HOSTS = ("127.0.0.1", "localhost")
START_TIMEOUT_SECONDS = 30.0
_FREE_PORT_ATTEMPTS = 3


class AzuriteError(RuntimeError):
    """Azurite is not installed, or did not come up."""


class _AzuriteExited(AzuriteError):
    """Azurite quit while starting (typically a port taken since it was picked)."""


class AzuriteHandle:
    """A running Azurite process; stop it with ``stop()`` or by leaving a ``with`` block."""

    def __init__(
        self, process: subprocess.Popen[bytes], host: str, ports: tuple[int, int, int], log: IO[bytes]
    ) -> None:
        self.process = process
        self.host = host
        self.ports = ports
        self._log = log
        self._stopped = False

    @property
    def connection_string(self) -> str:
        """The explicit connection string for this Azurite (blob, queue, table endpoints)."""
        blob, queue, table = self.ports
        return devstore_connection_string(self.host, blob, queue, table)

    def output(self) -> str:
        """What Azurite printed so far (startup lines, errors), for diagnostics."""
        if self._log.closed:
            return ""
        self._log.flush()
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate Azurite, killing it (and its process group) if it does not exit in time."""
        if self._stopped:
            return
        self._stopped = True
        if self.process.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.process.wait(timeout)
        # Node may have left helpers in its group; Azurite runs in its own, so this hits only them.
        self._signal_group(signal.SIGKILL)
        self._log.close()
        log_event("azurite.stopped", pid=self.process.pid)

    def _signal(self, sig: signal.Signals) -> None:
        try:
            self.process.send_signal(sig)
        except ProcessLookupError:
            pass

    def _signal_group(self, sig: signal.Signals) -> None:
        try:
            os.killpg(self.process.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def __enter__(self) -> AzuriteHandle:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


# The brief's spelling: ``Azurite`` is the handle type.
Azurite = AzuriteHandle


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_is_listening(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _command(
    host: str, ports: tuple[int, int, int], in_memory: bool, location: Path | None, silent: bool
) -> list[str]:
    if in_memory and location is not None:
        raise AzuriteError("Azurite cannot run --inMemoryPersistence together with --location")
    blob, queue, table = ports
    cmd = [
        str(AZURITE_BIN), "--disableTelemetry", "--skipApiVersionCheck", "--loose",
        "--blobHost", host, "--queueHost", host, "--tableHost", host,
        "--blobPort", str(blob), "--queuePort", str(queue), "--tablePort", str(table),
    ]
    if in_memory:
        cmd.append("--inMemoryPersistence")
    if location is not None:
        location.mkdir(parents=True, exist_ok=True)
        cmd += ["--location", str(location)]
    if silent:
        cmd.append("--silent")
    return cmd


def _launch(
    host: str, ports: tuple[int, int, int], in_memory: bool, location: Path | None, silent: bool
) -> AzuriteHandle:
    log = tempfile.TemporaryFile()
    process = subprocess.Popen(
        _command(host, ports, in_memory, location, silent),
        cwd=PROJECT_ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,  # own process group: Ctrl-C reaches the host, which stops it in order
    )
    handle = AzuriteHandle(process, host, ports, log)
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = handle.output()
            handle.stop()
            raise _AzuriteExited(f"Azurite exited with code {process.returncode}:\n{output[-2000:]}")
        if all(port_is_listening(host, port) for port in ports):
            log_event("azurite.started", pid=process.pid, blob=ports[0], queue=ports[1], table=ports[2])
            return handle
        time.sleep(0.1)
    handle.stop()
    raise AzuriteError(f"Azurite did not listen on {ports} within {START_TIMEOUT_SECONDS:.0f} s")


def _require_installed() -> None:
    if not AZURITE_BIN.exists():
        raise AzuriteError(
            f"Azurite is not installed ({AZURITE_BIN} is missing): run `npm install` "
            "in the project root (or `make setup`)"
        )


def start_azurite(
    ports: tuple[int, int, int] | None = None,
    in_memory: bool = True,
    location: Path | str | None = None,
    silent: bool = True,
    host: str = "127.0.0.1",
) -> AzuriteHandle:
    """Start Azurite serving blob, queue and table, and wait until all three accept connections.

    Without ``ports`` it picks free ones; another process may grab a picked port before Azurite
    binds it, so that case is retried with fresh ports.
    """
    _require_installed()
    where = Path(location) if location is not None else None
    if ports is not None:
        return _launch(host, ports, in_memory, where, silent)
    for attempt in range(_FREE_PORT_ATTEMPTS):
        free = (_free_port(host), _free_port(host), _free_port(host))
        if len(set(free)) < 3:
            continue
        try:
            return _launch(host, free, in_memory, where, silent)
        except _AzuriteExited:
            if attempt == _FREE_PORT_ATTEMPTS - 1:
                raise
    raise AzuriteError("could not find three free ports for Azurite")


def _endpoints(connection_string: str) -> dict[str, tuple[str, int]]:
    parts = dict(
        item.split("=", 1) for item in connection_string.strip().split(";") if "=" in item
    )
    keys = {key.lower(): value for key, value in parts.items()}
    if keys.get("usedevelopmentstorage", "").lower() == "true":
        return {"blob": ("127.0.0.1", 10000), "queue": ("127.0.0.1", 10001), "table": ("127.0.0.1", 10002)}
    found: dict[str, tuple[str, int]] = {}
    for service in ("blob", "queue", "table"):
        url = keys.get(f"{service}endpoint")
        if not url:
            continue
        split = urlsplit(url)
        default = 443 if split.scheme == "https" else 80
        found[service] = (split.hostname or "", split.port or default)
    return found


def ensure_azurite(connection_string: str) -> AzuriteHandle | None:
    """Start a persistent Azurite where ``connection_string`` points, unless one already runs.

    Returns the handle of what it started (the caller stops it), or None when the endpoints
    are remote or already served, so an Azurite started elsewhere (another devhost, a test) is reused.
    """
    endpoints = _endpoints(connection_string)
    if len(endpoints) < 3 or any(host not in LOCAL_HOSTS for host, _ in endpoints.values()):
        return None
    listening = {name: port_is_listening(host, port) for name, (host, port) in endpoints.items()}
    if all(listening.values()):
        log_event("azurite.reused", **{name: port for name, (_, port) in endpoints.items()})
        return None
    if any(listening.values()):
        busy = ", ".join(f"{name}:{endpoints[name][1]}" for name, up in listening.items() if up)
        raise AzuriteError(
            f"only some storage endpoints answer ({busy}); stop whatever holds them or point "
            "AzureWebJobsStorage at a complete Azurite"
        )
    ports = (endpoints["blob"][1], endpoints["queue"][1], endpoints["table"][1])
    return start_azurite(ports=ports, in_memory=False, location=PERSISTENT_LOCATION)
