"""``python -m devhost``: run the function app locally, like ``func start``.

One process by default. ``--workers N`` starts N host processes against the same storage, the
way Azure scales a Functions app out: worker 0 serves HTTP and runs the timers (the real host
runs timers as singletons across instances), the others poll queues only.
"""

from __future__ import annotations

import argparse
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

from azure.core.exceptions import ServiceRequestError

from core.errors import SettingsError
from core.settings import PROJECT_ROOT, get_settings
from devhost.azurite import AzuriteError, AzuriteHandle, ensure_azurite
from devhost.host import DEFAULT_HTTP_PORT, HostError, load_function_app, run_host
from devhost.hostconfig import HostConfigError, load_queue_config
from devhost.logs import configure_logging, log_event

CHILD_STOP_TIMEOUT_SECONDS = 30.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; children of ``--workers`` get the same flags plus ``--worker-index``."""
    parser = argparse.ArgumentParser(
        prog="python -m devhost", description="Run the function app locally, like `func start`."
    )
    parser.add_argument("--port", type=int, default=DEFAULT_HTTP_PORT, help="HTTP port (default 7071)")
    parser.add_argument("--workers", type=int, default=0, help="run N host processes (N >= 1)")
    parser.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--no-http", action="store_true", help="do not serve the HTTP app")
    parser.add_argument("--no-timers", action="store_true", help="do not run timer triggers")
    parser.add_argument("--no-queues", action="store_true", help="do not poll queue triggers")
    parser.add_argument("--no-azurite", action="store_true", help="never start Azurite")
    parser.add_argument("--app", default="function_app", help="module holding `app`")
    parser.add_argument("--host-json", type=Path, default=None, help="host.json to read queue semantics from")
    parser.add_argument("--grace", type=float, default=10.0, help="seconds in-flight work gets on stop")
    parser.add_argument("--log-format", choices=("plain", "json"), default=None,
                        help="log lines as JSON or plain text (default: MAILROOM_LOG_FORMAT, json)")
    args = parser.parse_args(argv)
    if args.workers < 0:
        parser.error("--workers must be >= 1")
    return args


def _child_command(args: argparse.Namespace, index: int) -> list[str]:
    cmd = [sys.executable, "-m", "devhost", "--worker-index", str(index), "--no-azurite",
           "--port", str(args.port), "--app", args.app, "--grace", str(args.grace),
           *(["--log-format", args.log_format] if args.log_format else [])]
    if args.host_json is not None:
        cmd += ["--host-json", str(args.host_json.resolve())]
    cmd += [flag for flag, on in (("--no-http", args.no_http), ("--no-timers", args.no_timers),
                                  ("--no-queues", args.no_queues)) if on]
    return cmd


def _supervise(args: argparse.Namespace) -> int:
    """Start the workers, forward SIGINT/SIGTERM to them, return when all have exited."""
    children = [subprocess.Popen(_child_command(args, i), cwd=PROJECT_ROOT) for i in range(args.workers)]
    log_event("workers.started", count=len(children), pids=",".join(str(c.pid) for c in children))
    kill_at: list[float] = []

    def _forward(signum: int, frame: FrameType | None) -> None:
        if not kill_at:
            kill_at.append(time.monotonic() + CHILD_STOP_TIMEOUT_SECONDS)
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    previous = {sig: signal.signal(sig, _forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while any(child.poll() is None for child in children):
            if kill_at and time.monotonic() > kill_at[0]:
                for child in children:
                    if child.poll() is None:
                        child.kill()
            time.sleep(0.2)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    codes = [child.returncode for child in children]
    log_event("workers.exited", codes=",".join(str(code) for code in codes))
    return next((code for code in codes if code not in (0, -signal.SIGTERM, -signal.SIGINT)), 0)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = parse_args(argv)
    try:
        settings = get_settings()
    except SettingsError as err:
        print(f"devhost: {err}", file=sys.stderr)  # one line naming the setting, no traceback
        return 2
    configure_logging(args.log_format or settings.log_format, settings.log_level, args.worker_index)
    azurite: AzuriteHandle | None = None
    try:
        if not args.no_azurite:
            azurite = ensure_azurite(settings.connection_string)
        if args.workers >= 1:
            return _supervise(args)
        secondary = args.worker_index is not None and args.worker_index > 0
        queue_config = load_queue_config(args.host_json) if args.host_json else None
        run_host(
            serve_http=not (args.no_http or secondary), run_timers=not (args.no_timers or secondary),
            run_queues=not args.no_queues, http_port=args.port, queue_config=queue_config,
            app=load_function_app(args.app), grace_seconds=args.grace,
        )
        return 0
    except (AzuriteError, HostConfigError, HostError) as err:
        logging.getLogger("devhost").error("%s", err)
        return 2
    except ServiceRequestError:
        logging.getLogger("devhost").error(
            "cannot reach storage at AzureWebJobsStorage; is Azurite running? "
            "(without --no-azurite devhost starts one)"
        )
        return 2
    except KeyboardInterrupt:
        return 130
    finally:
        if azurite is not None:
            azurite.stop()


if __name__ == "__main__":
    sys.exit(main())
