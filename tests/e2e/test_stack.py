"""The local stack itself: what makes e2e runs dependable on a busy machine."""

from __future__ import annotations

import socket

import httpx
import pytest

from devhost.azurite import AzuriteHandle
from devhost.stack import HostExited, Stack


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
