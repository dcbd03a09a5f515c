"""The local stack itself: what makes e2e runs dependable on a busy machine."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from core.settings import PROJECT_ROOT
from devhost.azurite import AzuriteHandle, port_is_listening
from devhost.sendgrid_events import SIGNATURE_HEADER, TIMESTAMP_HEADER
from devhost.stack import HostExited, Stack, free_port, wait_for
from tests.e2e.conftest import new_tenant


def test_a_host_port_taken_before_the_host_binds_it_is_replaced_by_another():
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        stack = Stack(workers=1)
        stack.http_port = taken  # as if another process took the port picked for the host
        with stack:
            assert stack.http_port != taken
            assert httpx.get(f"{stack.base_url}/api/v1/health", timeout=10).status_code == 200


class _UnloadableApp(Stack):
    app_module = "no_such_module"  # every host process exits at start


def test_a_stack_that_fails_to_start_stops_what_it_had_started():
    stack = _UnloadableApp(workers=1)
    emulators: list[AzuriteHandle] = []

    def start_azurite() -> AzuriteHandle:
        emulators.append(Stack.start_azurite(stack))
        return emulators[-1]

    stack.start_azurite = start_azurite  # type: ignore[method-assign]
    with pytest.raises(HostExited):
        stack.start()
    assert stack.azurite is None
    assert emulators and emulators[0].process.poll() is not None, "Azurite outlived the failed start"


# SendGrid's own signed test vector (sendgrid-python's EventWebhook tests): a real key, body and signature.
SENDGRID_TEST_KEY = ("MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE83T4O/n84iotIvIW4mdBgQ/7dAfSmpqIM8kF9mN1flpVKS3G"
                     "Rqe62gw+2fNNRaINXvVpiglSI8eNEc6wEA3F+g==")
SENDGRID_TEST_SIGNATURE = ("MEUCIGHQVtGj+Y3LkG9fLcxf3qfI10QysgDWmMOVmxG0u6ZUAiEAyBiXDWzM+uOe5W0JuG"
                           "+luQAbPIqHh89M15TluLtEZtM=")
SENDGRID_TEST_BODY = json.dumps([{
    "email": "hello@world.com", "event": "dropped", "reason": "Bounced Address",
    "sg_event_id": "ZHJvcC0xMDk5NDkxOS1MUnpYbF9OSFN0T0doUTRrb2ZTbV9BLTA",
    "sg_message_id": "LRzXl_NHStOGhQ4kofSm_A.filterdrecv-p3mdw1-756b745b58-kmzbl-18-5F5FC76C-9.0",
    "smtp-id": "<LRzXl_NHStOGhQ4kofSm_A@ismtpd0039p1iad1.sendgrid.net>", "timestamp": 1600112492,
}], sort_keys=True, separators=(",", ":")) + "\r\n"


def test_smtp_and_a_webhook_key_from_the_environment_win_over_the_stacks_simulator():
    environ = {**os.environ, "EMAIL_PROVIDER": "smtp", "SENDGRID_WEBHOOK_PUBLIC_KEY": SENDGRID_TEST_KEY,
               "SENDGRID_WEBHOOK_MAX_AGE_SECONDS": "0"}
    with Stack(workers=1, environ=environ, provider_events=True) as stack:
        assert stack.smtp_sink is not None and stack.feedback is None
        signed = {SIGNATURE_HEADER: SENDGRID_TEST_SIGNATURE, TIMESTAMP_HEADER: "1600112502"}
        webhook = httpx.post(f"{stack.base_url}/api/v1/webhooks/sendgrid", content=SENDGRID_TEST_BODY,
                             headers=signed, timeout=30)
        assert webhook.status_code == 200, webhook.text

        tenant = new_tenant(stack)
        tenant.call("POST", "/emails", json={"to": ["ada@example.com"], "from_email": "app@example.org",
                                             "subject": "Hello", "text": "Hi"})
        (received,) = wait_for(stack.smtp_sink.messages, 60, "the email to reach the SMTP sink", 0.2)
        assert received.rcpt_tos == ("ada@example.com",)
        assert stack.simulator.messages() == []


def _children(pid: int) -> set[int]:
    """Every live descendant of ``pid`` (read from /proc)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_sigterm_stops_the_served_stack_with_its_azurite_and_hosts():
    http_port, *storage_ports = (free_port() for _ in range(4))
    command = [sys.executable, "-m", "devhost.stack", "--port", str(http_port),
               "--azurite-ports", ",".join(str(p) for p in storage_ports)]
    serve = subprocess.Popen(command, cwd=PROJECT_ROOT, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    started: set[int] = set()
    try:
        wait_for(lambda: _answers(f"http://127.0.0.1:{http_port}/api/v1/health") or serve.poll() is not None,
                 120, "make serve to answer", 0.5)
        assert serve.poll() is None, "the stack exited while starting"
        started = _children(serve.pid)
        assert len(started) >= 2, "expected Azurite and a host process"

        serve.send_signal(signal.SIGTERM)

        assert serve.wait(timeout=60) == 0
        wait_for(lambda: not any(_alive(pid) for pid in started), 20, "the stack's children to exit")
        assert not any(port_is_listening("127.0.0.1", port) for port in (http_port, *storage_ports))
    finally:
        for pid in {serve.pid} | started:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        serve.wait(timeout=10)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.HTTPError:
        return False
