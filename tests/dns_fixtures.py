"""A local DNS server (dnslib) that answers TXT records from a dict: sender checks without a network.

``LocalDns`` listens on UDP 127.0.0.1 on a free port; ``settings.DNS_RESOLVER`` is its
``address``. Names it does not know answer NXDOMAIN, like a real zone.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest
from dnslib import QTYPE, RCODE, RR, TXT
from dnslib.server import BaseResolver, DNSServer

# A domain that passes every check, one with none of the records, and one missing DKIM only.
GOOD_DOMAIN = "good-sender.example"
BARE_DOMAIN = "bare-sender.example"
NO_DKIM_DOMAIN = "no-dkim.example"


def good_records(domain: str, selector: str = "s1") -> dict[str, list[str]]:
    return {
        domain: ["v=spf1 include:sendgrid.net ~all"],
        f"{selector}._domainkey.{domain}": ["v=DKIM1; k=rsa; p=MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQC"],
        f"_dmarc.{domain}": ["v=DMARC1; p=quarantine; rua=mailto:dmarc@" + domain],
    }


class _ZoneResolver(BaseResolver):
    def __init__(self, records: dict[str, list[str]]) -> None:
        self.records = records

    def resolve(self, request: Any, handler: Any) -> Any:
        reply = request.reply()
        name = str(request.q.qname).rstrip(".").lower()
        texts = self.records.get(name)
        if texts is None:
            reply.header.rcode = RCODE.NXDOMAIN
            return reply
        if request.q.qtype == QTYPE.TXT:
            for text in texts:
                reply.add_answer(RR(request.q.qname, QTYPE.TXT, rdata=TXT(text), ttl=60))
        return reply


class LocalDns:
    """A running local DNS server; ``records`` may be changed while it runs."""

    def __init__(self, records: dict[str, list[str]]) -> None:
        self.records = records
        self.port = _free_udp_port()
        self._server = DNSServer(_ZoneResolver(records), port=self.port, address="127.0.0.1")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> LocalDns:
        self._server.start_thread()
        return self

    def stop(self) -> None:
        self._server.stop()


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def local_dns() -> Iterator[LocalDns]:
    records = {**good_records(GOOD_DOMAIN), **good_records(NO_DKIM_DOMAIN)}
    del records[f"s1._domainkey.{NO_DKIM_DOMAIN}"]
    server = LocalDns(records).start()
    try:
        yield server
    finally:
        server.stop()
