"""The SMTP message as bytes, written directly instead of through ``EmailMessage``.

Building an ``EmailMessage`` and flattening it cost ~1 ms of CPU per recipient (the header
registry parses every header into a token tree, creates a header class per lookup and folds
the tree again on output; ``set_content`` builds sub-messages whose headers are parsed too):
more than half of an SMTP send. Almost all of a campaign's headers are either the same for
every recipient (From, Reply-To, often the Subject) or simple printable ASCII that folding
leaves as it is (ids, an unsubscribe URL, an ASCII name). So the message is written here
line by line:

- a header whose line is plain printable ASCII within the line limit is written as
  ``Name: value``, which is exactly what the email package's folding produces for it;
- any other header (non-ASCII, too long, quoted names, encoded-word lookalikes) is folded by
  the email package itself (the same policy as ``providers.smtp.build_message``), once per
  distinct value (cached), so From, Reply-To and a shared Subject are folded once per job;
- bodies go through the email package's own transfer-encoding choice (7bit, 8bit,
  quoted-printable or base64, by the same heuristic) and its line-ending rules;
- what the fast writer does not take on (a caller header that the email package treats
  specially, a boundary found in a body) is built the old way, whole.

The result is byte-identical to ``build_message(email).as_bytes()`` for the same Date,
Message-ID and boundary (``tests/unit/test_smtp_message.py`` checks it with hypothesis over
ASCII and non-ASCII names, subjects and bodies).
"""

from __future__ import annotations

import email.utils
import functools
import random
import re
import smtplib
import sys
from collections.abc import Callable
from email import contentmanager
from email.generator import NLCRE  # type: ignore[attr-defined]
from email.headerregistry import _default_header_map  # type: ignore[attr-defined]
from email.policy import EmailPolicy
from typing import Any

from providers.base import OutboundEmail

# Printable ASCII words separated by single spaces: what unstructured folding leaves alone.
_PLAIN = re.compile(r"[!-~]+(?: [!-~]+)*")
# A display name that str(Address) writes unquoted (RFC 5322 atext words, single spaces).
_ATEXT_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?: [A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_DOMAIN = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+"
_SIMPLE_ADDRESS = re.compile(rf"{_ATOM}(?:\.{_ATOM})*@{_DOMAIN}")
_SIMPLE_MSGID = re.compile(rf"<[0-9]+(?:\.[0-9A-Za-z]+)*@{_DOMAIN}>")
_HEADER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")
_SPECIAL_HEADERS = frozenset(_default_header_map)
_BOUNDARY_WIDTH = len(repr(sys.maxsize - 1))
_MAX_LINE = 78
# custom_args key -> header, so a bounce or reply can be traced to the delivery.
TRACE_HEADERS = {
    "tenant_id": "X-Mailroom-Tenant",
    "job_id": "X-Mailroom-Job",
    "task_id": "X-Mailroom-Task",
    "contact_id": "X-Mailroom-Contact",
}


def envelope_address(address: str) -> str:
    """``<address>`` for MAIL FROM/RCPT TO, as ``smtplib.quoteaddr`` writes it (without its parser
    for the plain ASCII address it would return unchanged)."""
    if _SIMPLE_ADDRESS.fullmatch(address):
        return f"<{address}>"
    return smtplib.quoteaddr(address)


def new_boundary() -> str:
    """A multipart boundary drawn exactly as ``email.generator`` draws one."""
    return "=" * 15 + f"{random.randrange(sys.maxsize):0{_BOUNDARY_WIDTH}d}" + "=="


def message_bytes(
    email_: OutboundEmail,
    *,
    policies: tuple[EmailPolicy, EmailPolicy],
    fold: Callable[[EmailPolicy, str, Any], bytes],
    build_whole: Callable[[OutboundEmail, str, str, str], bytes],
    verbatim: frozenset[str],
    date: str,
    message_id: str,
    boundary: str,
) -> bytes:
    """The message as ``providers.smtp`` sends it, written without ``EmailMessage`` where it can be.

    ``policies`` is (ASCII, UTF-8); ``fold`` is the email package's folding of one header
    (cached by the caller), ``build_whole`` the old builder for what this writer leaves to it.
    Raises what the email package raises for a header it refuses (ValueError, MessageError).
    """
    utf8 = not (email_.to_email.isascii() and email_.from_email.isascii())
    policy = policies[1] if utf8 else policies[0]
    if any(
        not _HEADER_NAME.fullmatch(name) or name.lower() in _SPECIAL_HEADERS
        for name in email_.headers
    ):
        return build_whole(email_, date, message_id, boundary)
    out: list[bytes] = [
        _address_line(policy, fold, "From", email_.from_name, email_.from_email),
        _address_line(policy, fold, "To", email_.to_name, email_.to_email),
    ]
    if email_.reply_to:
        out.append(_header_line(policy, fold, "Reply-To", email_.reply_to, _MAX_LINE))
    out.append(_header_line(policy, fold, "Subject", email_.subject, _MAX_LINE))
    out.append(fold(policy, "Date", date))
    if _SIMPLE_MSGID.fullmatch(message_id) and len(message_id) + 12 <= _MAX_LINE:
        out.append(b"Message-ID: " + message_id.encode() + b"\r\n")
    else:
        out.append(fold(policy, "Message-ID", message_id))
    for name, value in email_.headers.items():
        limit = 998 if name.lower() in verbatim else _MAX_LINE
        out.append(_header_line(policy, fold, name, value, limit))
    for key, header in TRACE_HEADERS.items():
        if email_.custom_args.get(key):
            out.append(_header_line(policy, fold, header, str(email_.custom_args[key]), _MAX_LINE))
    if email_.text and email_.html:
        text = _part(policy, "plain", email_.text, mime_version=False)
        html = _part(policy, "html", email_.html, mime_version=True)
        separator = b"--" + boundary.encode()
        if separator in text or separator in html:
            return build_whole(email_, date, message_id, boundary)
        out.append(
            b'MIME-Version: 1.0\r\nContent-Type: multipart/alternative;\r\n boundary="'
            + boundary.encode() + b'"\r\n\r\n'
        )
        out += [separator, b"\r\n", text, b"\r\n", separator, b"\r\n", html, b"\r\n", separator, b"--\r\n"]
    elif email_.html:
        out.append(_part(policy, "html", email_.html, mime_version=True))
    else:
        out.append(_part(policy, "plain", email_.text, mime_version=True))
    return b"".join(out)


def _header_line(
    policy: EmailPolicy, fold: Callable[[EmailPolicy, str, Any], bytes], name: str, value: str, limit: int
) -> bytes:
    """One unstructured header: as written when folding cannot change it, else folded."""
    if len(name) + 2 + len(value) <= limit and "=?" not in value and _PLAIN.fullmatch(value):
        return f"{name}: {value}\r\n".encode()
    return fold(policy, name, value)


def _address_line(
    policy: EmailPolicy, fold: Callable[[EmailPolicy, str, Any], bytes], name: str, display: str, address: str
) -> bytes:
    """A one-mailbox header: ``Name <addr>`` for plain ASCII, else the email package's folding."""
    if _SIMPLE_ADDRESS.fullmatch(address) and (not display or _ATEXT_NAME.fullmatch(display)):
        value = f"{display} <{address}>" if display else address
        if len(name) + 2 + len(value) <= _MAX_LINE:
            return f"{name}: {value}\r\n".encode()
    return fold(policy, name, ("mailbox", display, address))


def _part(policy: EmailPolicy, subtype: str, content: str, mime_version: bool) -> bytes:
    """A text part's headers and body, as ``set_content`` and the generator write them."""
    cte, payload = contentmanager._encode_text(content, "utf-8", None, policy)  # type: ignore[attr-defined]
    head = _part_head(subtype, cte, mime_version)
    return head + NLCRE.sub("\r\n", payload).encode("ascii", "surrogateescape")


@functools.lru_cache(maxsize=32)
def _part_head(subtype: str, cte: str, mime_version: bool) -> bytes:
    version = "MIME-Version: 1.0\r\n" if mime_version else ""
    return (
        f'Content-Type: text/{subtype}; charset="utf-8"\r\n'
        f"Content-Transfer-Encoding: {cte}\r\n{version}\r\n"
    ).encode()


def message_id_for(from_email: str) -> str:
    """A Message-ID in the sender's domain, as ``email.utils.make_msgid`` makes one."""
    return email.utils.make_msgid(domain=from_email.rpartition("@")[2] or None)
