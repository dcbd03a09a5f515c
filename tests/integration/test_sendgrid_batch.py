"""Many recipients in one SendGrid request (personalizations): the provider's ``send_batch``
and the simulator's personalizations, with the real ``sendgrid`` library over real HTTP."""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator

import httpx
import pytest

from core.errors import AmbiguousSendError, RecipientRejected, SendError, Throttled, TransientSendError
from devhost.sendgrid_events import events_for
from devhost.sendgrid_sim import SendGridSimulator
from providers.base import OutboundEmail, SendResult
from providers.sendgrid import SendGridProvider, build_batch_payload
from tests.sim_fixtures import running_sendgrid_simulator, wait_for

API_KEY = "SG.batch-key"


def batch(count: int) -> list[OutboundEmail]:
    """``count`` recipients of one skeleton body, each with its values and ids."""
    return [
        OutboundEmail(
            to_email=f"r{i}@example.com",
            to_name=f"Recipient {i}",
            subject="Hello -n-",
            from_email="news@example.org",
            from_name="News",
            text="Hi -n-, unsubscribe: -u-",
            html="<p>Hi -n-</p><a href=\"-u-\">unsubscribe</a>",
            headers={"List-Unsubscribe": f"<https://example.org/u/{i}>"},
            custom_args={"tenant_id": "t1", "job_id": "j1", "task_id": "00001", "contact_id": f"c{i}"},
            substitutions={"-n-": f"Recipient {i}", "-u-": f"https://example.org/u/{i}"},
        )
        for i in range(count)
    ]


@pytest.fixture(scope="module")
def running_sim() -> Iterator[tuple[SendGridSimulator, str]]:
    with running_sendgrid_simulator(api_key=API_KEY) as running:
        yield running


@pytest.fixture
def sim(running_sim: tuple[SendGridSimulator, str]) -> tuple[SendGridSimulator, str]:
    running_sim[0].reset()
    return running_sim


@pytest.fixture
def provider(sim: tuple[SendGridSimulator, str]) -> Iterator[SendGridProvider]:
    sendgrid = SendGridProvider(API_KEY, sim[1], timeout=5.0)
    yield sendgrid
    sendgrid.close()


def post(sim: tuple[SendGridSimulator, str], body: dict) -> httpx.Response:
    return httpx.post(f"{sim[1]}/v3/mail/send", json=body, headers={"Authorization": f"Bearer {API_KEY}"})


def test_a_batch_is_one_request_and_every_recipient_gets_its_own_substituted_email(
    sim: tuple[SendGridSimulator, str], provider: SendGridProvider
) -> None:
    outcomes = provider.send_batch(batch(500))

    assert sim[0].stats()["requests"] == 1
    assert all(isinstance(o, SendResult) for o in outcomes)
    ids = [o.message_id for o in outcomes if isinstance(o, SendResult)]
    assert len(set(ids)) == 500 and len({i.rsplit(".", 1)[0] for i in ids}) == 1
    got = {m["to"]: m for m in sim[0].messages()}
    assert got["r7@example.com"]["subject"] == "Hello Recipient 7"
    assert got["r7@example.com"]["text"] == "Hi Recipient 7, unsubscribe: https://example.org/u/7"
    assert got["r7@example.com"]["html"] == (
        '<p>Hi Recipient 7</p><a href="https://example.org/u/7">unsubscribe</a>'
    )
    assert got["r7@example.com"]["headers"] == {"List-Unsubscribe": "<https://example.org/u/7>"}
    assert got["r7@example.com"]["custom_args"]["contact_id"] == "c7"


def test_a_400_naming_two_addresses_fails_them_with_the_providers_message_and_sends_the_rest_once(
    sim: tuple[SendGridSimulator, str], provider: SendGridProvider
) -> None:
    sim[0].set_faults({"fail_addresses": {"r3@example.com": 400, "r8@example.com": 400}})

    outcomes = provider.send_batch(batch(10))

    rejected = [i for i, o in enumerate(outcomes) if isinstance(o, RecipientRejected)]
    assert rejected == [3, 8]
    assert all("@" not in str(outcomes[i]) and str(outcomes[i]) for i in rejected)
    assert all(isinstance(o, SendResult) for i, o in enumerate(outcomes) if i not in rejected)
    assert sim[0].stats()["requests"] == 2
    assert sorted(m["to"] for m in sim[0].messages()) == sorted(
        f"r{i}@example.com" for i in range(10) if i not in (3, 8)
    )


def test_a_repeated_address_in_a_batch_fails_the_repeat_and_sends_the_first(
    sim: tuple[SendGridSimulator, str], provider: SendGridProvider
) -> None:
    messages = batch(4)
    messages[3] = OutboundEmail(**{**messages[3].__dict__, "to_email": "R1@example.com"})

    outcomes = provider.send_batch(messages)

    assert isinstance(outcomes[3], RecipientRejected) and "more than once" in str(outcomes[3])
    assert [isinstance(o, SendResult) for o in outcomes[:3]] == [True, True, True]
    assert [m["to"] for m in sim[0].messages()] == ["r0@example.com", "r1@example.com", "r2@example.com"]


def test_a_timeout_after_the_request_was_sent_makes_every_recipient_ambiguous(
    sim: tuple[SendGridSimulator, str]
) -> None:
    sim[0].set_faults({"accept_then_hang": 1, "hang_seconds": 3})
    provider = SendGridProvider(API_KEY, sim[1], timeout=0.5)

    outcomes = provider.send_batch(batch(5))

    assert all(isinstance(o, AmbiguousSendError) for o in outcomes)
    assert len(sim[0].messages()) == 5  # why they are never resent: SendGrid took them


@pytest.mark.parametrize("status, error", [(429, Throttled), (503, TransientSendError)])
def test_a_throttle_or_server_error_fails_the_whole_batch_the_same_way(
    sim: tuple[SendGridSimulator, str], provider: SendGridProvider, status: int, error: type[SendError]
) -> None:
    sim[0].set_faults({"status": status, "count": 1, "retry_after": 2})

    outcomes = provider.send_batch(batch(6))

    assert all(type(o) is error for o in outcomes) and sim[0].messages() == []
    assert all(isinstance(o, TransientSendError) and o.retry_after == 2 for o in outcomes)


def test_a_batch_of_different_bodies_is_refused_before_sending(
    sim: tuple[SendGridSimulator, str], provider: SendGridProvider
) -> None:
    messages = batch(2)
    messages[1] = OutboundEmail(**{**messages[1].__dict__, "text": "another body"})

    with pytest.raises(ValueError):
        provider.send_batch(messages)
    assert sim[0].stats()["requests"] == 0


# -- the simulator's personalizations, as SendGrid takes them --------------------------------


def _bad_cc(body: dict) -> None:
    body["personalizations"][1].update(cc=[{"email": "not an address"}])


def _duplicate(body: dict) -> None:
    body["personalizations"][2]["to"].append({"email": "r0@example.com"})


def _over_1000_recipients(body: dict) -> None:
    body["personalizations"][0].update(bcc=[{"email": f"b{i}@x.example"} for i in range(998)])


def _big_custom_args(body: dict) -> None:
    body["personalizations"][1]["custom_args"].update(big="x" * 10_000)


def _big_substitutions(body: dict) -> None:
    body["personalizations"][2]["substitutions"].update(big="x" * 10_000)


@pytest.mark.parametrize(
    "change, field",
    [
        (_bad_cc, "personalizations.1.cc.0.email"),
        (_duplicate, "personalizations.2.to.1.email"),
        (_over_1000_recipients, "personalizations"),
        (_big_custom_args, "personalizations.1.custom_args"),
        (_big_substitutions, "personalizations.2.substitutions"),
    ],
)
def test_the_simulator_refuses_the_whole_request_naming_the_field(
    sim: tuple[SendGridSimulator, str], change: Callable[[dict], None], field: str
) -> None:
    body = build_batch_payload(batch(3))
    change(body)

    response = post(sim, body)

    assert response.status_code == 400
    assert field in [e["field"] for e in response.json()["errors"]]
    assert sim[0].messages() == []


def test_the_simulator_takes_at_most_1000_personalizations(sim: tuple[SendGridSimulator, str]) -> None:
    assert post(sim, build_batch_payload(batch(1000))).status_code == 202
    response = post(sim, build_batch_payload(batch(1001)))

    assert response.status_code == 400
    assert "personalizations" in [e["field"] for e in response.json()["errors"]]


def test_each_email_of_a_request_has_its_own_message_id_and_events_with_its_custom_args(
    sim: tuple[SendGridSimulator, str]
) -> None:
    response = post(sim, build_batch_payload(batch(3)))
    records = wait_for(sim[0].messages, what="the records")

    events = [events_for(record, random.Random(1))[0] for record in records]

    request_id = response.headers["X-Message-Id"]
    assert [e["sg_message_id"].split(".")[0] for e in events] == [request_id] * 3
    assert len({e["sg_message_id"] for e in events}) == 3
    assert [e["contact_id"] for e in events] == ["c0", "c1", "c2"]
    assert json.loads(json.dumps(events))  # what the webhook posts: plain JSON
