"""The event schema and the order-independent status merge (core.provider_events)."""

from __future__ import annotations

import base64
import json
import random

from hypothesis import given
from hypothesis import strategies as st

from core.provider_events import (
    EventBatch,
    merge_status,
    parse_sendgrid_event,
    split_into_messages,
    suppression_reason,
    timeline,
)
from core.status import DeliveryStatus

PROVIDER_STATUSES = ["sent", "deferred", "delivered", "dropped", "bounced", "complained"]


def fold(start: str, proposals: list[tuple[str, str]]) -> tuple[str, str]:
    status, key = start, ""
    for proposed, proposed_key in proposals:
        if merge_status(status, key, proposed, proposed_key):
            status, key = proposed, proposed_key
    return status, key


@given(st.lists(st.tuples(st.sampled_from(PROVIDER_STATUSES), st.text("abc", min_size=1, max_size=3)),
                min_size=1, max_size=12), st.randoms())
def test_merge_ends_the_same_whatever_the_order_and_repetition(proposals, rng):
    shuffled = proposals * 3
    rng.shuffle(shuffled)
    assert fold("sent", proposals) == fold("sent", shuffled)


def test_a_late_processed_never_overwrites_delivered():
    assert fold("sent", [("delivered", "k2"), ("sent", "k1")])[0] == "delivered"


def test_a_bounce_after_delivered_wins():
    assert fold("sent", [("delivered", "k1"), ("bounced", "k2")])[0] == "bounced"


def test_unknown_is_replaced_by_what_events_prove():
    assert fold("unknown", [("sent", "k1")])[0] == "sent"
    assert fold("unknown", [("delivered", "k2"), ("sent", "k1")])[0] == "delivered"


def test_outcomes_mailroom_decided_are_not_changed_by_provider_events():
    for sealed in ("suppressed", "skipped", "failed", "cancelled"):
        assert fold(sealed, [("delivered", "k")])[0] == sealed


def raw(kind: str, **extra):
    return {"event": kind, "timestamp": 1_700_000_000, "email": "Someone@Example.com",
            "sg_event_id": f"id-{kind}", "sg_message_id": "abc123.filter.1.0", "tenant_id": "t",
            "job_id": "j", "task_id": "000001", "contact_id": "c1", **extra}


def test_a_sendgrid_event_becomes_one_generic_event_without_the_address_in_stored_text():
    event = parse_sendgrid_event(raw("bounce", type="bounce", status="5.1.1",
                                     reason="550 5.1.1 <someone@example.com>: unknown user"))
    assert event is not None
    assert (event.type, event.status, event.reason_code) == ("bounced", DeliveryStatus.BOUNCED, "5.1.1")
    assert event.message_id == "abc123" and event.partition == "j-000001"
    assert "example.com" not in event.provider_response and "<address>" in event.provider_response
    assert event.timeline().source == "sendgrid" and event.at == "2023-11-14T22:13:20.000Z"


def test_duplicates_share_a_key_and_distinct_events_do_not():
    a, b = parse_sendgrid_event(raw("delivered")), parse_sendgrid_event(raw("delivered"))
    c = parse_sendgrid_event(raw("delivered", sg_event_id="other"))
    assert a.key == b.key != c.key


def test_unknown_or_malformed_events_are_not_parsed():
    assert parse_sendgrid_event({"event": "weird"}) is None
    assert parse_sendgrid_event("not an event") is None


def test_hard_bounce_complaint_and_unsubscribe_suppress_but_soft_bounce_does_not_at_once():
    assert suppression_reason(parse_sendgrid_event(raw("bounce", type="bounce"))) == "hard_bounce"
    assert suppression_reason(parse_sendgrid_event(raw("spamreport"))) == "complaint"
    assert suppression_reason(parse_sendgrid_event(raw("unsubscribe"))) == "unsubscribed"
    soft = parse_sendgrid_event(raw("bounce", type="blocked"))
    assert soft.soft_bounce and suppression_reason(soft) is None
    assert suppression_reason(parse_sendgrid_event(raw("delivered"))) is None


def test_a_batch_is_split_into_queue_messages_that_fit_64_kib_and_lose_nothing():
    rng = random.Random(1)
    events = [raw("delivered", sg_event_id=f"e{i}", note="x" * rng.randint(10, 3000)) for i in range(400)]
    messages, cut = split_into_messages(events)
    assert cut == 0 and len(messages) > 1
    assert all(len(base64.b64encode(m.encode())) <= 64 * 1024 for m in messages)
    back = [e for m in messages for e in EventBatch.model_validate_json(m).events]
    assert sorted(e["sg_event_id"] for e in back) == sorted(e["sg_event_id"] for e in events)


def test_an_oversized_single_event_keeps_its_essential_fields():
    messages, cut = split_into_messages([raw("delivered", huge="y" * 100_000)])
    assert cut == 0
    (event,) = json.loads(messages[0])["events"]
    assert "huge" not in event and event["event"] == "delivered"


def test_timeline_keeps_the_original_outcome_before_provider_events():
    row = {"status": "delivered", "outcome": "sent", "outcome_at": "2026-01-01T00:00:00.500Z",
           "outcome_reason": "", "provider": "sendgrid", "attempts": 1,
           "updated_at": "2026-01-01T00:00:09.000Z"}
    provider = [{"type": "delivered", "at": "2026-01-01T00:00:02.000Z", "source": "sendgrid"},
                {"type": "processed", "at": "2026-01-01T00:00:00.000Z", "source": "sendgrid"}]
    steps = timeline(row, provider, queued_at="2025-12-31T23:59:59.000Z")
    assert [s.type for s in steps] == ["queued", "sent", "processed", "delivered"]
