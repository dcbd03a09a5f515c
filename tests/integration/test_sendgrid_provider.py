"""SendGridProvider against the SendGrid simulator: real client, real HTTP, no mocks."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from python_http_client.exceptions import BadRequestsError

from core.errors import (
    AmbiguousSendError,
    ProviderUnavailable,
    RecipientRejected,
    TransientSendError,
)
from core.settings import load_settings
from devhost.sendgrid_sim import MSG_AUTH, SendGridSimulator
from providers.base import EmailProvider, OutboundEmail
from providers.factory import build_provider
from providers.sendgrid import SendGridProvider, _from_http_error, build_payload
from tests.sim_fixtures import read_http_request, refused_port, running_sendgrid_simulator, wait_for

API_KEY = "SG.test-key"
IDS = {"tenant_id": "t1", "job_id": "j1", "task_id": "k1", "contact_id": "c1"}


def email(**overrides: object) -> OutboundEmail:
    fields: dict[str, object] = {
        "to_email": "ada@example.com",
        "to_name": "Ada",
        "subject": "Hello",
        "from_email": "news@example.org",
        "from_name": "News",
        "reply_to": "help@example.org",
        "text": "plain body",
        "html": "<p>html body</p>",
        "headers": {"List-Unsubscribe": "<https://example.org/u/1>"},
        "custom_args": dict(IDS),
    }
    fields.update(overrides)
    return OutboundEmail(**fields)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def running_sim() -> Iterator[tuple[SendGridSimulator, str]]:
    with running_sendgrid_simulator(api_key=API_KEY) as running:
        yield running


@pytest.fixture
def sim(running_sim: tuple[SendGridSimulator, str]) -> tuple[SendGridSimulator, str]:
    """The module's simulator, reset so each test starts from nothing."""
    running_sim[0].reset()
    return running_sim


@pytest.fixture
def provider(sim: tuple[SendGridSimulator, str]) -> SendGridProvider:
    return SendGridProvider(API_KEY, sim[1], timeout=5.0)


def test_payload_orders_content_and_skips_empty_parts() -> None:
    body = build_payload(email(html=""))
    assert body["content"] == [{"type": "text/plain", "value": "plain body"}]
    body = build_payload(email())
    assert [c["type"] for c in body["content"]] == ["text/plain", "text/html"]
    assert body["personalizations"][0]["to"] == [{"email": "ada@example.com", "name": "Ada"}]
    assert body["reply_to"] == {"email": "help@example.org"}


def test_accepted_send_returns_message_id_and_is_recorded(
    sim: tuple[SendGridSimulator, str], provider: SendGridProvider
) -> None:
    assert isinstance(provider, EmailProvider)
    result = provider.send(email())

    assert result.provider == "sendgrid"
    assert len(result.message_id) == 22
    records = httpx.get(f"{sim[1]}/__sim/messages").json()["messages"]
    assert len(records) == 1
    record = records[0]
    assert record["message_id"] == result.message_id
    assert record["to"] == "ada@example.com"
    assert record["from"] == "news@example.org"
    assert record["reply_to"] == "help@example.org"
    assert record["subject"] == "Hello"
    assert record["custom_args"] == IDS
    assert record["headers"] == {"List-Unsubscribe": "<https://example.org/u/1>"}
    assert (record["text"], record["html"]) == ("plain body", "<p>html body</p>")


def test_invalid_from_address_is_rejected_with_sendgrids_message(
    sim: tuple[SendGridSimulator, str], provider: SendGridProvider
) -> None:
    with pytest.raises(RecipientRejected) as caught:
        provider.send(email(from_email="not-an-address"))

    assert caught.value.code == "400"
    assert "The from email does not contain a valid address." in caught.value.reason
    assert caught.value.extra["fields"] == ["from.email"]
    assert sim[0].messages() == []


def test_wrong_api_key_is_provider_unavailable(sim: tuple[SendGridSimulator, str]) -> None:
    with pytest.raises(ProviderUnavailable) as caught:
        SendGridProvider("SG.wrong", sim[1]).send(email())

    assert caught.value.code == "401"
    assert MSG_AUTH in caught.value.reason


def test_missing_authorization_gets_sendgrids_401_shape(sim: tuple[SendGridSimulator, str]) -> None:
    response = httpx.post(f"{sim[1]}/v3/mail/send", json=build_payload(email()))

    assert response.status_code == 401
    assert response.json() == {"errors": [{"message": MSG_AUTH, "field": None, "help": None}]}


def test_empty_api_key_never_calls_sendgrid(sim: tuple[SendGridSimulator, str]) -> None:
    with pytest.raises(ProviderUnavailable):
        SendGridProvider("", sim[1]).send(email())

    assert sim[0].stats()["requests"] == 0


def test_503_fault_is_transient_then_clears(
    sim: tuple[SendGridSimulator, str], provider: SendGridProvider
) -> None:
    httpx.post(f"{sim[1]}/__sim/faults", json={"status": 503, "count": 1}).raise_for_status()

    with pytest.raises(TransientSendError) as caught:
        provider.send(email())
    assert caught.value.code == "503"

    assert provider.send(email()).message_id
    assert sim[0].stats() == {"requests": 2, "accepted": 1, "messages": 1, "sandboxed": 0}


def test_429_carries_retry_after(
    sim: tuple[SendGridSimulator, str], provider: SendGridProvider
) -> None:
    httpx.post(
        f"{sim[1]}/__sim/faults", json={"status": 429, "count": 1, "retry_after": 7}
    ).raise_for_status()

    with pytest.raises(TransientSendError) as caught:
        provider.send(email())

    assert caught.value.code == "429"
    assert caught.value.retry_after == 7.0


def test_failing_address_fault_rejects_only_that_recipient(
    sim: tuple[SendGridSimulator, str], provider: SendGridProvider
) -> None:
    sim[0].set_faults({"fail_addresses": {"BAD@example.com": 400}})

    with pytest.raises(RecipientRejected):
        provider.send(email(to_email="bad@example.com"))
    assert provider.send(email()).message_id


def test_connection_refused_is_transient() -> None:
    with refused_port() as port:
        provider = SendGridProvider(API_KEY, f"http://127.0.0.1:{port}", timeout=2.0)
        with pytest.raises(TransientSendError) as caught:
            provider.send(email())

    assert caught.value.code == "connect"


def test_read_timeout_is_ambiguous_and_the_message_may_still_land(
    sim: tuple[SendGridSimulator, str]
) -> None:
    sim[0].set_faults({"latency_ms": 1000})
    provider = SendGridProvider(API_KEY, sim[1], timeout=0.3)

    with pytest.raises(AmbiguousSendError):
        provider.send(email())

    # Why AmbiguousSendError must never be resent: the server went on and accepted it.
    wait_for(lambda: sim[0].messages(), what="the late message to be recorded")


def test_concurrent_sends_from_a_thread_pool(
    sim: tuple[SendGridSimulator, str], provider: SendGridProvider
) -> None:
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(
            lambda i: provider.send(email(to_email=f"r{i}@example.com")), range(24)
        ))

    assert len({r.message_id for r in results}) == 24
    assert sorted(m["to"] for m in sim[0].messages()) == sorted(
        f"r{i}@example.com" for i in range(24)
    )
    assert sim[0].stats()["requests"] == 24


def test_reason_never_contains_the_recipient() -> None:
    body = (b'{"errors":[{"message":"You have included Ada@Example.com more than once.",'
            b'"field":"personalizations","help":null}]}')
    error = _from_http_error(BadRequestsError(400, "Bad Request", body, {}), "ada@example.com")

    assert isinstance(error, RecipientRejected)
    assert error.reason == "You have included <recipient> more than once."


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"headers": {"Subject": "x"}}, "headers"),
        ({"custom_args": {"n": 1}}, "custom_args"),
        ({"content": [{"type": "text/html", "value": "h"}, {"type": "text/plain", "value": "t"}]},
         "content"),
        ({"content": [{"type": "text/plain", "value": ""}]}, "content.0.value"),
        ({"subject": ""}, "subject"),
        ({"reply_to": {"email": "nope"}}, "reply_to.email"),
        ({"personalizations": [{"to": [{"email": "nope"}]}]}, "personalizations.0.to.0.email"),
        ({"personalizations": []}, "personalizations"),
    ],
)
def test_simulator_validates_like_sendgrid(
    sim: tuple[SendGridSimulator, str], change: dict[str, object], field: str
) -> None:
    body = {**build_payload(email()), **change}
    response = httpx.post(
        f"{sim[1]}/v3/mail/send", json=body, headers={"Authorization": f"Bearer {API_KEY}"}
    )

    assert response.status_code == 400
    errors = response.json()["errors"]
    assert field in [e["field"] for e in errors]
    assert all(e["help"] is None or e["help"].startswith("http://sendgrid.com/docs/") for e in errors)


def test_factory_builds_sendgrid_provider() -> None:
    provider = build_provider(load_settings(EMAIL_PROVIDER="sendgrid"))
    assert isinstance(provider, SendGridProvider)


def test_sends_from_one_thread_reuse_one_connection(
    provider: SendGridProvider, sim: tuple[SendGridSimulator, str]
) -> None:
    results = [provider.send(email(to_email=f"k{n}@example.com")) for n in range(20)]
    assert len({r.message_id for r in results}) == 20
    assert provider.transport.handler.connections_opened == 1


def test_an_error_response_leaves_the_connection_reusable(
    provider: SendGridProvider, sim: tuple[SendGridSimulator, str]
) -> None:
    with pytest.raises(RecipientRejected):
        provider.send(email(from_email="not-an-address"))
    provider.send(email())
    assert provider.transport.handler.connections_opened == 1


def test_a_connection_idle_past_its_limit_is_replaced_not_reused(sim: tuple[SendGridSimulator, str]) -> None:
    provider = SendGridProvider(API_KEY, sim[1])
    provider.transport.handler._idle_seconds = 0.0  # every kept connection is already too old
    for n in range(3):
        provider.send(email(to_email=f"idle{n}@example.com"))
    assert provider.transport.handler.connections_opened == 3
    provider.close()


def test_a_connection_the_server_closed_while_idle_is_replaced_without_an_ambiguous_send() -> None:
    """The server hangs up after each response (keep-alive not honoured): the next send reconnects."""
    served: list[int] = []
    hung_up: list[int] = []
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()

    def serve() -> None:
        while len(served) < 3:
            conn, _ = listener.accept()
            with conn:
                read_http_request(conn)
                served.append(len(served))
                conn.sendall(b"HTTP/1.1 202 Accepted\r\nX-Message-Id: m%d\r\nContent-Length: 0\r\n\r\n"
                             % len(served))
            hung_up.append(1)  # closed without saying "Connection: close": the client sees the socket

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    provider = SendGridProvider(API_KEY, f"http://127.0.0.1:{listener.getsockname()[1]}")
    provider.transport.handler.recheck_after_seconds = 0.0  # the server hung up moments after answering
    try:
        ids = []
        for n in range(3):
            ids.append(provider.send(email(to_email=f"hup{n}@example.com")).message_id)
            wait_for(lambda n=n: len(hung_up) > n, 5)
    finally:
        provider.close()
        listener.close()
    assert ids == ["m1", "m2", "m3"]
    assert provider.transport.handler.connections_opened == 3
