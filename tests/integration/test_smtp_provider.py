"""SmtpProvider against the aiosmtpd sink: real SMTP on a free port, no mocks."""

from __future__ import annotations

import re
import smtplib
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from unittest import mock

import pytest

from core.errors import (
    AmbiguousSendError,
    ProviderUnavailable,
    RecipientRejected,
    TransientSendError,
)
from core.settings import load_settings
from core.unsubscribe import UnsubscribeClaim, one_click_headers, unsubscribe_url
from devhost.smtp_sink import SmtpSink
from providers.base import EmailProvider, OutboundEmail
from providers.factory import build_provider
from providers.smtp import SmtpProvider
from tests.sim_fixtures import refused_port, running_smtp_sink, wait_for

IDS = {"tenant_id": "t1", "job_id": "j1", "task_id": "k1", "contact_id": "c1"}


def email(**overrides: object) -> OutboundEmail:
    fields: dict[str, object] = {
        "to_email": "ada@example.com",
        "to_name": "Ada Lovelace",
        "subject": "Hello",
        "from_email": "news@example.org",
        "from_name": "News",
        "text": "plain body",
        "html": "<p>html body</p>",
        "headers": {"List-Unsubscribe": "<https://example.org/u/1>"},
        "custom_args": dict(IDS),
    }
    fields.update(overrides)
    return OutboundEmail(**fields)  # type: ignore[arg-type]


@pytest.fixture(params=[True, False], ids=["pipelining", "one-command-at-a-time"])
def sink(request: pytest.FixtureRequest) -> Iterator[SmtpSink]:
    """Every provider test runs against a server that offers PIPELINING and one that does not."""
    with running_smtp_sink(pipelining=request.param) as running:
        yield running


@pytest.fixture
def provider(sink: SmtpSink) -> Iterator[SmtpProvider]:
    smtp = SmtpProvider(sink.host, sink.port, timeout=5.0)
    yield smtp
    smtp.close()


def test_send_delivers_with_trace_headers(sink: SmtpSink, provider: SmtpProvider) -> None:
    assert isinstance(provider, EmailProvider)
    result = provider.send(email())

    assert result.provider == "smtp"
    [message] = wait_for(sink.messages, what="the message to arrive")
    assert message.message_id == result.message_id
    assert message.message_id.endswith("@example.org>")
    assert message.rcpt_tos == ("ada@example.com",)
    assert message.mail_from == "news@example.org"
    assert message.mailroom == {
        "X-Mailroom-Tenant": "t1", "X-Mailroom-Job": "j1",
        "X-Mailroom-Task": "k1", "X-Mailroom-Contact": "c1",
    }
    assert message.headers["List-Unsubscribe"] == "<https://example.org/u/1>"
    assert message.headers["To"] == "Ada Lovelace <ada@example.com>"
    assert message.subject == "Hello"
    assert message.text == "plain body\n"
    assert message.html == "<p>html body</p>\n"


def test_non_ascii_names_and_smtputf8_addresses(sink: SmtpSink, provider: SmtpProvider) -> None:
    provider.send(email(to_email="zoë@example.com", to_name='Zoë "Ü"', subject="Grüße ✓",
                        text="héllo", html=""))

    [message] = sink.messages()
    assert message.rcpt_tos == ("zoë@example.com",)
    assert message.headers["To"] == '"Zoë \\"Ü\\"" <zoë@example.com>'
    assert (message.subject, message.text, message.html) == ("Grüße ✓", "héllo\n", "")


def test_connection_is_reused_across_sends(sink: SmtpSink, provider: SmtpProvider) -> None:
    ids = [provider.send(email(to_email=f"r{i}@example.com")).message_id for i in range(3)]

    assert len(set(ids)) == 3
    assert sink.connections == 1
    assert [m.connection for m in sink.messages()] == [1, 1, 1]


def test_pool_serves_concurrent_threads(sink: SmtpSink) -> None:
    smtp = SmtpProvider(sink.host, sink.port, timeout=5.0, pool_size=2)
    try:
        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(lambda i: smtp.send(email(to_email=f"r{i}@example.com")), range(20)))
    finally:
        smtp.close()

    assert sorted(m.rcpt_tos[0] for m in sink.messages()) == sorted(
        f"r{i}@example.com" for i in range(20)
    )


def test_connection_refused_is_transient() -> None:
    with refused_port() as port:
        smtp = SmtpProvider("127.0.0.1", port, timeout=2.0)
        with pytest.raises(TransientSendError) as caught:
            smtp.send(email())

    assert caught.value.code == "connect"


def test_rejected_recipient_is_scrubbed_and_connection_kept(
    sink: SmtpSink, provider: SmtpProvider
) -> None:
    sink.reject("gone@example.com")

    with pytest.raises(RecipientRejected) as caught:
        provider.send(email(to_email="gone@example.com"))

    assert caught.value.code == "550"
    assert "<recipient>" in caught.value.reason
    assert "gone@example.com" not in caught.value.reason
    provider.send(email())
    assert sink.connections == 1


def test_temporary_rcpt_failure_is_transient(sink: SmtpSink, provider: SmtpProvider) -> None:
    sink.reject("busy@example.com", "451 4.7.1 Try again later")

    with pytest.raises(TransientSendError) as caught:
        provider.send(email(to_email="busy@example.com"))

    assert caught.value.code == "451"


def test_stale_pooled_connection_is_replaced(sink: SmtpSink, provider: SmtpProvider) -> None:
    provider.send(email())
    sink.close_idle_connections()
    idle_socket = provider._idle[0].sock  # white-box: the pooled session's socket
    wait_for(lambda: _peer_closed(idle_socket), what="the server to close the session")

    provider.send(email())

    assert sink.connections == 2
    assert [m.connection for m in sink.messages()] == [1, 2]


def test_disconnect_during_data_is_ambiguous(sink: SmtpSink, provider: SmtpProvider) -> None:
    sink.drop_connection_on_data()

    with pytest.raises(AmbiguousSendError):
        provider.send(email())

    provider.send(email())
    assert sink.connections == 2


def test_bad_credentials_are_provider_unavailable() -> None:
    with running_smtp_sink(credentials=("user", "secret")) as sink:
        with pytest.raises(ProviderUnavailable):
            SmtpProvider(sink.host, sink.port, username="user", password="wrong").send(email())

        good = SmtpProvider(sink.host, sink.port, username="user", password="secret")
        try:
            good.send(email())
        finally:
            good.close()
        assert len(sink.messages()) == 1


def test_missing_login_is_provider_unavailable() -> None:
    with running_smtp_sink(credentials=("user", "secret")) as sink:
        with pytest.raises(ProviderUnavailable) as caught:
            SmtpProvider(sink.host, sink.port).send(email())

    assert caught.value.code == "530"


def test_header_injection_is_rejected_before_sending(sink: SmtpSink, provider: SmtpProvider) -> None:
    with pytest.raises(RecipientRejected):
        provider.send(email(headers={"X-Bad": "a\r\nBcc: someone@example.com"}))

    assert sink.connections == 0


def test_factory_builds_smtp_provider() -> None:
    settings = load_settings(EMAIL_PROVIDER="smtp", SMTP_HOST="127.0.0.1", SMTP_PORT=2525)
    assert isinstance(build_provider(settings), SmtpProvider)


def test_a_pipelining_server_gets_the_envelope_in_one_write_and_the_message_in_another() -> None:
    with running_smtp_sink(pipelining=True) as sink:
        smtp = SmtpProvider(sink.host, sink.port, timeout=5.0)
        try:
            smtp.send(email())  # opens the session (greeting, EHLO)
            writes = mock.patch.object(smtplib.SMTP, "send", autospec=True, side_effect=smtplib.SMTP.send)
            with writes as writes:
                smtp.send(email(to_email="bob@example.com"))
        finally:
            smtp.close()

    assert writes.call_count == 2
    assert [m.rcpt_tos for m in sink.messages()] == [("ada@example.com",), ("bob@example.com",)]


def test_factory_pools_an_idle_connection_for_every_sending_thread() -> None:
    """With fewer, every send beyond the pool opened and closed a whole SMTP session."""
    settings = load_settings(EMAIL_PROVIDER="smtp", SEND_CONCURRENCY=24)

    smtp = build_provider(settings)

    assert isinstance(smtp, SmtpProvider) and smtp.pool_size == 24


def _peer_closed(sock: socket.socket) -> bool:
    """True once the server's FIN is readable on an idle client socket."""
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False


def _raw_header(raw: bytes, name: str) -> str:
    """One header as it crossed the wire, unfolded (RFC 5322 §2.2.3: CRLF before WSP is removed)."""
    head = raw.split(b"\r\n\r\n", 1)[0].decode("ascii")
    unfolded = re.sub(r"\r\n(?=[ \t])", "", head)
    (line,) = [h for h in unfolded.split("\r\n") if h.lower().startswith(name.lower() + ":")]
    return line.split(":", 1)[1].strip()


def test_list_unsubscribe_with_a_long_token_url_goes_out_verbatim_not_as_encoded_words(
    sink: SmtpSink, provider: SmtpProvider
) -> None:
    claim = UnsubscribeClaim("tenant-" + "7" * 24, "c" * 64, "campaign-" + "9" * 24)
    url = unsubscribe_url("https://mailroom.university.example.edu", "signing-key", claim)
    assert len(url) > 200
    provider.send(email(headers=one_click_headers(url)))

    (received,) = wait_for(sink.messages)
    assert _raw_header(received.raw, "List-Unsubscribe") == f"<{url}>"
    assert _raw_header(received.raw, "List-Unsubscribe-Post") == "List-Unsubscribe=One-Click"
    assert b"=?" not in received.raw.split(b"\r\n\r\n", 1)[0]
    assert all(len(line) <= 998 for line in received.raw.split(b"\r\n"))
    assert received.mailroom["X-Mailroom-Contact"] == "c1" and received.subject == "Hello"
