"""The local stack itself: what makes e2e runs dependable on a busy machine."""

from __future__ import annotations

import socket

import httpx

from devhost.stack import Stack


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
