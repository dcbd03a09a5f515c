"""An SMTP server that accepts everything and remembers it, for development and tests.

Built on ``aiosmtpd`` so ``providers.smtp`` talks real SMTP. Each received message is
recorded with its envelope, parsed headers, Message-ID and ``X-Mailroom-*`` trace headers,
plus the number of the connection it arrived on, so tests can see connection reuse.

A few switches let tests exercise the provider's error paths: rejecting a recipient,
dropping the connection during DATA, requiring AUTH, and closing idle connections.

Run it with ``python -m devhost.smtp_sink --port 1025``.
"""

from __future__ import annotations

import argparse
import email
import email.policy
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

DEFAULT_PORT = 1025
TRACE_PREFIX = "x-mailroom-"


class _Controller(Controller):
    """Silences aiosmtpd's per-connection warning about AUTH without TLS (fine locally)."""

    def factory(self) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return super().factory()


@dataclass(frozen=True)
class SinkMessage:
    """One message as the sink received it."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    headers: dict[str, str]
    message_id: str
    mailroom: dict[str, str]
    subject: str
    text: str
    html: str
    connection: int
    received_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    raw: bytes = field(default=b"", repr=False)  # as it arrived: tests check header folding on the wire


class SmtpSink:
    """A threaded aiosmtpd server with a thread-safe record of what it received.

    ``credentials`` (user, password) makes AUTH mandatory before MAIL, like a real relay.
    ``pipelining`` advertises RFC 2920 PIPELINING, as Postfix and Exim do (aiosmtpd reads
    commands in order from its stream, so a pipelined group is answered in order);
    ``pipelining=False`` is a server that offers it not, for the one-command-at-a-time path.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        credentials: tuple[str, str] | None = None,
        on_message: Callable[[SinkMessage], None] | None = None,
        pipelining: bool = True,
    ) -> None:
        self.host = host
        self._pipelining = pipelining
        self.port = port
        self._credentials = credentials
        self._on_message = on_message
        self._lock = threading.Lock()
        self._messages: list[SinkMessage] = []
        self._connections = 0
        self._transports: list[Any] = []
        self._rejects: dict[str, str] = {}
        self._deferrals: dict[str, tuple[float, str]] = {}  # domain -> (monotonic deadline, reply)
        self.deferred = 0  # RCPTs answered with a deferral
        self._drop_data = 0
        kwargs: dict[str, Any] = {}
        if credentials is not None:
            kwargs = {"authenticator": self._authenticate, "auth_required": True,
                      "auth_require_tls": False}
        self._controller = _Controller(self, hostname=host, port=port, **kwargs)

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> None:
        """Listen in a background thread; returns once the server answers."""
        self._controller.start()

    def stop(self) -> None:
        self._controller.stop()

    def __enter__(self) -> SmtpSink:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- record -----------------------------------------------------------------------

    def messages(self) -> list[SinkMessage]:
        """Received messages, oldest first."""
        with self._lock:
            return list(self._messages)

    def clear(self) -> None:
        with self._lock:
            self._messages.clear()

    @property
    def connections(self) -> int:
        """SMTP sessions that greeted (EHLO/HELO); the start-up probe is not counted."""
        with self._lock:
            return self._connections

    # -- fault switches ---------------------------------------------------------------

    def reject(self, address: str, reply: str | None = None) -> None:
        """Answer RCPT for ``address`` with ``reply`` (default: a Postfix-style 550)."""
        with self._lock:
            self._rejects[address.lower()] = reply or (
                f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
            )

    def defer_domain(self, domain: str, seconds: float,
                     reply: str = "451 4.7.1 Temporarily deferred, try again later") -> None:
        """Answer RCPT for every address at ``domain`` with a temporary refusal for ``seconds``."""
        with self._lock:
            self._deferrals[domain.lower()] = (time.monotonic() + seconds, reply)

    def drop_connection_on_data(self, count: int = 1) -> None:
        """Close the next ``count`` connections after the message data arrives, unanswered."""
        with self._lock:
            self._drop_data = count

    def close_idle_connections(self) -> None:
        """Close every open session from the server side, as an idle timeout would."""
        with self._lock:
            transports, self._transports = self._transports, []
        for transport in transports:
            self._controller.loop.call_soon_threadsafe(transport.close)

    # -- aiosmtpd handler hooks -------------------------------------------------------

    async def handle_EHLO(self, server: Any, session: Any, envelope: Any, hostname: str,
                          responses: list[str]) -> list[str]:
        session.host_name = hostname
        self._count_session(server, session)
        if self._pipelining:
            return [*responses[:-1], "250-PIPELINING", responses[-1]]
        return responses

    async def handle_HELO(self, server: Any, session: Any, envelope: Any,
                          hostname: str) -> str:
        session.host_name = hostname
        self._count_session(server, session)
        return f"250 {server.hostname}"

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          rcpt_options: list[str]) -> str:
        with self._lock:
            reply = self._rejects.get(address.lower())
            until, deferral = self._deferrals.get(address.rpartition("@")[2].lower(), (0.0, ""))
        if reply:
            return reply
        if deferral and time.monotonic() < until:
            self.deferred += 1
            return deferral
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self._lock:
            drop = self._drop_data > 0
            if drop:
                self._drop_data -= 1
        if drop:
            server.transport.close()
            return "421 4.3.0 connection dropped by the sink"
        raw = envelope.original_content or envelope.content
        parsed = email.message_from_bytes(raw, policy=email.policy.default)
        headers = {name: str(value) for name, value in parsed.items()}
        text_part = parsed.get_body(("plain",))
        html_part = parsed.get_body(("html",))
        message = SinkMessage(
            mail_from=envelope.mail_from,
            rcpt_tos=tuple(envelope.rcpt_tos),
            headers=headers,
            message_id=str(parsed.get("Message-ID", "")),
            mailroom={k: v for k, v in headers.items() if k.lower().startswith(TRACE_PREFIX)},
            subject=str(parsed.get("Subject", "")),
            text=_content(text_part),
            html=_content(html_part),
            connection=getattr(session, "sink_connection", 0),
            raw=raw,
        )
        with self._lock:
            self._messages.append(message)
        if self._on_message is not None:
            self._on_message(message)
        return "250 2.0.0 Ok: queued"

    def _count_session(self, server: Any, session: Any) -> None:
        if getattr(session, "sink_connection", 0):
            return
        with self._lock:
            self._connections += 1
            session.sink_connection = self._connections
            self._transports.append(server.transport)

    def _authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str,
                      auth_data: Any) -> AuthResult:
        ok = (
            isinstance(auth_data, LoginPassword)
            and self._credentials is not None
            and (auth_data.login.decode(), auth_data.password.decode()) == self._credentials
        )
        return AuthResult(success=ok, handled=False)


def _content(part: Any) -> str:
    """A decoded body part with the wire's CRLF line ends turned into ``\\n``."""
    return part.get_content().replace("\r\n", "\n") if part is not None else ""


def main(argv: list[str] | None = None) -> None:
    """``python -m devhost.smtp_sink [--host H] [--port N]``: print ids of what arrives."""
    parser = argparse.ArgumentParser(description="SMTP sink for local development")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    args = parser.parse_args(argv)

    def show(message: SinkMessage) -> None:
        # Ids and counts only: no addresses or bodies in the output.
        trace = " ".join(f"{k}={v}" for k, v in sorted(message.mailroom.items()))
        print(f"received {message.message_id} recipients={len(message.rcpt_tos)} {trace}",
              flush=True)

    sink = SmtpSink(args.host, args.port, on_message=show)
    sink.start()
    print(f"SMTP sink listening on {args.host}:{args.port}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        sink.stop()


if __name__ == "__main__":
    main()
