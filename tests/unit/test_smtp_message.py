"""The directly written SMTP message is byte for byte what the email package builds."""

from __future__ import annotations

import smtplib
from email.generator import Generator
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from providers.base import OutboundEmail
from providers.smtp import _POLICY, _POLICY_UTF8, _VERBATIM_HEADERS, _build_whole, _fold_header, build_message
from providers.smtp_message import envelope_address, message_bytes, new_boundary

DATE = "Fri, 04 Dec 2026 18:25:53 -0000"
BOUNDARY = "===============7959972851704521545=="
ASCII_WORDS = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40)
ANY_TEXT = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n\x00"), max_size=60
)
NAMES = st.one_of(
    st.just(""), ASCII_WORDS, ANY_TEXT, st.sampled_from(["Ada Lovelace", 'Zoë "Ü"', "O'Brien, Pat"])
)
SUBJECTS = st.one_of(
    ASCII_WORDS.filter(str.strip), ANY_TEXT.filter(str.strip),
    st.sampled_from(["Hello", "Grüße ✓", "=?utf-8?q?x?=", "a " * 60, "x" * 120]),
)
BODIES = st.one_of(
    st.just(""),
    st.text(max_size=300),
    st.sampled_from(["plain body", "héllo\nwörld", "x" * 200, ".leading dot\n.\nend", "a\r\nb\rc\n"]),
)
LOCALS = st.sampled_from(["ada", "r0001", "first.last", "zoë", "o'brien"])
DOMAINS = st.sampled_from(["example.com", "uni.example", "mail." + "long" * 15 + ".example"])
URLS = st.one_of(
    st.just("<https://example.org/u/1>"),
    st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=400).map(
        lambda token: f"<https://mailroom.example/api/v1/unsubscribe/{token}>"
    ),
)


@st.composite
def outbound(draw: st.DrawFn) -> OutboundEmail:
    text, html = draw(BODIES), draw(BODIES)
    if not text and not html:
        text = "body"
    headers = {"List-Unsubscribe": draw(URLS), "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}
    if draw(st.booleans()):
        headers["X-Campaign-Note"] = draw(ANY_TEXT)
    return OutboundEmail(
        to_email=f"{draw(LOCALS)}@{draw(DOMAINS)}",
        to_name=draw(NAMES),
        subject=draw(SUBJECTS),
        from_email=f"news@{draw(DOMAINS)}",
        from_name=draw(NAMES),
        reply_to=draw(st.sampled_from(["", "replies@example.org"])),
        text=text,
        html=html,
        headers=headers,
        custom_args=draw(st.dictionaries(
            st.sampled_from(["tenant_id", "job_id", "task_id", "contact_id", "other"]),
            st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=30), max_size=5,
        )),
    )


def reference_bytes(email_: OutboundEmail, message_id: str) -> bytes:
    """What ``build_message(...).as_bytes()`` wrote before: the email package, whole."""
    with mock.patch.object(Generator, "_make_boundary", classmethod(lambda cls, text=None: BOUNDARY)):
        msg, _ = build_message(email_, date=DATE, message_id=message_id)
        return msg.as_bytes()


def written_bytes(email_: OutboundEmail, message_id: str) -> bytes:
    return message_bytes(
        email_, policies=(_POLICY, _POLICY_UTF8),
        fold=_fold_header, build_whole=_build_whole, verbatim=_VERBATIM_HEADERS,
        date=DATE, message_id=message_id, boundary=BOUNDARY,
    )


def outcome(build, email_: OutboundEmail, message_id: str):  # type: ignore[no-untyped-def]
    """The bytes, or the class of what the builder refused (both must refuse the same input)."""
    try:
        return build(email_, message_id)
    except Exception as err:  # noqa: BLE001 - compared with the reference, not swallowed
        return type(err)


@settings(max_examples=400, deadline=None)
@given(email_=outbound())
def test_written_message_is_byte_identical_to_the_email_packages(email_: OutboundEmail) -> None:
    message_id = f"<179640875314.8076.10689034853742599642@{email_.from_email.rpartition('@')[2]}>"

    assert outcome(written_bytes, email_, message_id) == outcome(reference_bytes, email_, message_id)


@pytest.mark.parametrize(
    "to_name, subject, text, html",
    [
        ("Ada Lovelace", "Hello", "plain body", "<p>html body</p>"),
        ('Zoë "Ü"', "Grüße ✓", "héllo", ""),
        ("", "Spring 2024 course survey for everyone on the roster, long enough to fold", "", "<p>é</p>"),
        ("O'Brien, Pat", "x" * 120, "line\n" * 40, "y" * 300),
    ],
)
def test_ascii_and_non_ascii_examples_are_byte_identical(
    to_name: str, subject: str, text: str, html: str
) -> None:
    email_ = OutboundEmail(
        to_email="ada@example.com", to_name=to_name, subject=subject, from_email="news@example.org",
        from_name="News Désk", text=text, html=html,
        headers={"List-Unsubscribe": "<https://mailroom.example/api/v1/unsubscribe/" + "t" * 180 + ">"},
        custom_args={"tenant_id": "t1", "job_id": "j1", "task_id": "00001", "contact_id": "c1"},
    )
    message_id = "<1.2.3@example.org>"

    assert written_bytes(email_, message_id) == reference_bytes(email_, message_id)


def test_a_caller_header_the_email_package_treats_specially_is_refused_the_same_way() -> None:
    email_ = OutboundEmail(
        to_email="ada@example.com", subject="Hi", from_email="news@example.org", text="x",
        headers={"Subject": "a second subject"},
    )

    with pytest.raises(ValueError):
        written_bytes(email_, "<1@example.org>")


def test_boundaries_are_drawn_like_the_email_packages() -> None:
    boundary = new_boundary()

    assert len(boundary) == len(BOUNDARY) and boundary.startswith("=" * 15) and boundary.endswith("==")


@given(address=st.one_of(
    st.sampled_from(["ada@example.com", "first.last@uni.example", "zoë@example.com", "A <a@b.example>", "x"]),
    st.text(max_size=40),
))
def test_envelope_addresses_are_quoted_as_smtplib_quotes_them(address: str) -> None:
    assert envelope_address(address) == smtplib.quoteaddr(address)
