"""Status vocabulary, task recipients packing, ids and unsubscribe tokens."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from core.ids import contact_id_for, job_id_for, normalize_email
from core.models import Recipient, pack_recipients, unpack_recipients
from core.status import TERMINAL_DELIVERY_STATUSES, DeliveryStatus, zero_counts
from core.unsubscribe import UnsubscribeClaim, make_token, read_token


def test_counts_always_hold_all_fourteen_delivery_statuses():
    assert len(zero_counts()) == 14 and set(zero_counts()) == {s.value for s in DeliveryStatus}


def test_opened_and_clicked_are_events_not_statuses():
    assert "opened" not in zero_counts() and "clicked" not in zero_counts()


def test_ten_statuses_are_terminal():
    assert len(TERMINAL_DELIVERY_STATUSES) == 10 and DeliveryStatus.PENDING not in TERMINAL_DELIVERY_STATUSES


recipients = st.lists(
    st.builds(
        Recipient,
        contact_id=st.text(min_size=1, max_size=26),
        email=st.emails(),
        name=st.text(max_size=40),
        attributes=st.dictionaries(
            st.text(max_size=10), st.one_of(st.integers(), st.text(max_size=30)), max_size=5
        ),
    ),
    max_size=60,
)


@given(recipients)
def test_recipients_survive_packing_into_a_task_entity(rows):
    assert unpack_recipients(pack_recipients(rows)) == rows


def test_a_large_task_spreads_over_several_binary_columns_under_64_kib():
    rows = [Recipient(f"c{i}", f"u{i}@example.com", "N", {"b": secrets.token_hex(1000)}) for i in range(200)]
    columns = pack_recipients(rows)
    assert len(columns) > 1 and all(len(v) <= 64 * 1024 for v in columns.values())
    assert unpack_recipients(columns) == rows


def test_the_same_campaign_run_always_gets_the_same_job_id():
    at = datetime(2026, 12, 1, 9, tzinfo=UTC)
    assert job_id_for("c1", at) == job_id_for("c1", at) != job_id_for("c2", at)


def test_contact_ids_follow_the_normalized_email_and_the_tenant_salt():
    assert contact_id_for("s", normalize_email(" Ada@Example.COM ")) == contact_id_for("s", "ada@example.com")
    assert contact_id_for("s1", "ada@example.com") != contact_id_for("s2", "ada@example.com")


def test_an_unsubscribe_token_reads_back_only_with_our_key():
    claim = UnsubscribeClaim("t1", "c1", "camp1")
    token = make_token("key", claim)
    assert read_token("key", token) == claim
    assert read_token("other-key", token) is None
    assert read_token("key", token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]) is None
