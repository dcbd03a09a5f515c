"""SMTP adapter with a small connection pool.

Opening an SMTP session (TCP, greeting, EHLO, maybe STARTTLS and AUTH) costs several round
trips, so connections are pooled and reused; each is used by one thread at a time.

The transaction is driven command by command (MAIL, RCPT, DATA) instead of through
``sendmail`` so a failure can be placed in time: before DATA nothing was accepted (safe to
retry), while a lost connection during DATA may have delivered the message (ambiguous).
"""

from __future__ import annotations

import email.policy
import email.utils
import functools
import logging
import re
import smtplib
import socket
import ssl
import threading
from email import errors as email_errors
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import EmailPolicy

from core.errors import (
    AmbiguousSendError,
    DomainDeferred,
    ProviderUnavailable,
    RecipientRejected,
    SendError,
    TransientSendError,
)
from providers.base import OutboundEmail, SendResult
from providers.pacing import is_deferral_answer
from providers.smtp_message import (
    TRACE_HEADERS,
    envelope_address,
    message_bytes,
    message_id_for,
    new_boundary,
)

log = logging.getLogger(__name__)

NAME = "smtp"
_EMAIL_RE = re.compile(r"[^\s<>()\[\]\"',;:]+@[^\s<>()\[\]\"',;:]+")
_MAX_REASON = 500
# Headers whose value is a URL list (RFC 2369) or a fixed token (RFC 8058). Mailbox providers
# read them as written: the default folding at 78 columns turns a long unsubscribe URL into
# RFC 2047 encoded-words (``=?utf-8?q?=3Chttps...``), which breaks one-click unsubscribe.
_VERBATIM_HEADERS = frozenset({"list-unsubscribe", "list-unsubscribe-post"})
# RFC 5322 §2.1.1: a line MUST NOT exceed 998 characters (78 is only a SHOULD).
_MAX_HEADER_LINE = 998


class _MailroomPolicy(EmailPolicy):
    """The SMTP policy, except that URL headers are folded only at whitespace (up to 998 columns)."""

    def fold(self, name: str, value: str) -> str:
        return super(_MailroomPolicy, self._verbatim() if _is_verbatim(name) else self).fold(name, value)

    def fold_binary(self, name: str, value: str) -> bytes:
        policy = self._verbatim() if _is_verbatim(name) else self
        return super(_MailroomPolicy, policy).fold_binary(name, value)

    def _verbatim(self) -> _MailroomPolicy:
        return self.clone(max_line_length=_MAX_HEADER_LINE)


def _is_verbatim(name: str) -> bool:
    return name.lower() in _VERBATIM_HEADERS


# 7bit keeps bodies deliverable through relays without 8BITMIME; SMTP policy uses CRLF.
_POLICY = _MailroomPolicy(linesep="\r\n", cte_type="7bit")
_POLICY_UTF8 = _MailroomPolicy(linesep="\r\n", utf8=True)


@functools.lru_cache(maxsize=1)
def _local_hostname() -> str:
    """The EHLO name, looked up once: ``socket.getfqdn`` can block on DNS."""
    return socket.getfqdn() or "localhost"


def build_message(
    email_: OutboundEmail, *, date: str | None = None, message_id: str | None = None
) -> tuple[EmailMessage, str]:
    """The MIME message and its generated Message-ID (the reference for ``message_bytes``).

    Raises ``ValueError`` or ``email.errors.MessageError`` for what email refuses (CR/LF
    injection, a second To/From/Subject, an unparsable address); the caller turns those
    into ``RecipientRejected``.
    """
    utf8 = not (email_.to_email.isascii() and email_.from_email.isascii())
    msg = EmailMessage(policy=_POLICY_UTF8 if utf8 else _POLICY)
    msg["From"] = _mailbox(email_.from_name, email_.from_email)
    msg["To"] = _mailbox(email_.to_name, email_.to_email)
    if email_.reply_to:
        msg["Reply-To"] = email_.reply_to
    msg["Subject"] = email_.subject
    msg["Date"] = date or email.utils.formatdate(localtime=False)
    message_id = message_id or message_id_for(email_.from_email)
    msg["Message-ID"] = message_id
    for key, value in email_.headers.items():
        msg[key] = value
    for key, header in TRACE_HEADERS.items():
        if email_.custom_args.get(key):
            msg[header] = str(email_.custom_args[key])
    if email_.text and email_.html:
        msg.set_content(email_.text)
        msg.add_alternative(email_.html, subtype="html")
    elif email_.html:
        msg.set_content(email_.html, subtype="html")
    else:
        msg.set_content(email_.text)
    return msg, message_id


def render_message(email_: OutboundEmail) -> tuple[bytes, str]:
    """The wire bytes of ``build_message(email_)`` and its Message-ID, at a fraction of the CPU.

    ``providers/smtp_message.py`` writes them directly; the result is the same bytes.
    """
    message_id = message_id_for(email_.from_email)
    data = message_bytes(
        email_,
        policies=(_POLICY, _POLICY_UTF8),
        fold=_fold_header,
        build_whole=_build_whole,
        verbatim=_VERBATIM_HEADERS,
        date=email.utils.formatdate(localtime=False),
        message_id=message_id,
        boundary=new_boundary(),
    )
    return data, message_id


@functools.lru_cache(maxsize=4096)
def _fold_header(policy: EmailPolicy, name: str, value: str | tuple[str, str, str]) -> bytes:
    """One header exactly as ``EmailMessage`` stores and the generator folds it; cached by value.

    A campaign's From, Reply-To and shared Subject are the same for every recipient, so their
    folding (the costly part of the email package) is done once.
    """
    stored: Address | str = _mailbox(value[1], value[2]) if isinstance(value, tuple) else value
    header_name, header = policy.header_store_parse(name, stored)
    return policy.fold_binary(header_name, header)


def _build_whole(email_: OutboundEmail, date: str, message_id: str, boundary: str) -> bytes:
    """The old builder, for what ``message_bytes`` leaves to the email package."""
    msg, _ = build_message(email_, date=date, message_id=message_id)
    separator = "--" + boundary
    if msg.is_multipart() and separator not in email_.text and separator not in email_.html:
        msg.set_boundary(boundary)
    return msg.as_bytes()


def _mailbox(name: str, address: str) -> Address | str:
    """An address header value that encodes non-ASCII display names correctly.

    ``Address`` refuses non-ASCII local parts, which SMTPUTF8 allows, so those go in as
    text and the UTF-8 policy writes them raw.
    """
    if address.isascii():
        return Address(name, addr_spec=address)
    if not name:
        return address
    quoted = name.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{quoted}" <{address}>'


class SmtpProvider:
    """Sends through one SMTP relay, reusing up to ``pool_size`` idle connections.

    Thread-safe: a connection is taken out of the pool for one send and put back after, so
    no two threads share one. More threads than ``pool_size`` still work; the extra
    connections are closed after use instead of being kept.
    """

    name = NAME

    def __init__(
        self,
        host: str,
        port: int,
        username: str = "",
        password: str = "",
        starttls: bool = False,
        timeout: float = 10.0,
        pool_size: int = 4,
    ) -> None:
        self._host = host
        self._port = port
        self._username = username
        self._password = password
        self._starttls = starttls
        self._timeout = timeout
        self._pool_size = pool_size
        self._idle: list[smtplib.SMTP] = []
        self._lock = threading.Lock()
        self._closed = False

    @property
    def pool_size(self) -> int:
        """Idle connections kept for reuse (the factory makes it one per sending thread)."""
        return self._pool_size

    def send(self, email: OutboundEmail) -> SendResult:
        """Deliver one message to the relay or raise a ``core.errors.SendError``."""
        try:
            data, message_id = render_message(email)
        except (ValueError, TypeError, email_errors.MessageError) as err:
            raise RecipientRejected(
                f"message cannot be built: {_scrub(str(err), email.to_email)}",
                provider=NAME, code="invalid_message",
            ) from None
        conn, reused = self._checkout()
        try:
            try:
                self._transact(conn, email, data)
            except _Stale:
                if not reused:
                    raise TransientSendError(
                        "SMTP server closed the connection before DATA",
                        provider=NAME, code="disconnected",
                    ) from None
                # An idle pooled connection the server had already dropped: one fresh try.
                _discard(conn)
                conn = self._connect()
                try:
                    self._transact(conn, email, data)
                except _Stale:
                    raise TransientSendError(
                        "SMTP server closed the connection before DATA",
                        provider=NAME, code="disconnected",
                    ) from None
        except SendError:
            self._release(conn, healthy=False)
            raise
        except BaseException:
            # Interrupted mid-command (maybe mid-DATA): the session state is unknown.
            _discard(conn)
            raise
        self._release(conn, healthy=True)
        return SendResult(NAME, message_id=message_id)

    def close(self) -> None:
        """Close the idle connections; connections in use are closed when returned."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            _quit(conn)

    # -- pool -------------------------------------------------------------------------

    def _checkout(self) -> tuple[smtplib.SMTP, bool]:
        """An idle connection (reused=True) or a new one."""
        with self._lock:
            if self._idle:
                return self._idle.pop(), True
        return self._connect(), False

    def _release(self, conn: smtplib.SMTP, healthy: bool) -> None:
        """Return a usable connection to the pool; close anything else."""
        if healthy and conn.sock is not None:
            with self._lock:
                if not self._closed and len(self._idle) < self._pool_size:
                    self._idle.append(conn)
                    return
            _quit(conn)
            return
        if conn.sock is not None:
            # The transaction failed but the session may be fine: RSET and keep it.
            try:
                code, _ = conn.rset()
            except (smtplib.SMTPException, OSError):
                code = 0
            if code == 250:
                self._release(conn, healthy=True)
                return
        _discard(conn)

    def _connect(self) -> smtplib.SMTP:
        """Open, greet, and optionally STARTTLS and log in; map failures."""
        conn = smtplib.SMTP(local_hostname=_local_hostname(), timeout=self._timeout)
        try:
            code, reply = conn.connect(self._host, self._port)
            if code != 220:
                raise TransientSendError(
                    f"SMTP greeting {code}", provider=NAME, code=str(code)
                )
            conn.ehlo_or_helo_if_needed()
            if self._starttls:
                conn.starttls(context=ssl.create_default_context())
                conn.ehlo()
            if self._username:
                conn.login(self._username, self._password)
        except SendError:
            _discard(conn)
            raise
        except smtplib.SMTPAuthenticationError as err:
            _discard(conn)
            raise ProviderUnavailable(
                f"SMTP authentication failed: {_reply_text(err.smtp_error, '')}",
                provider=NAME, code=str(err.smtp_code),
            ) from None
        except smtplib.SMTPNotSupportedError as err:
            _discard(conn)
            raise ProviderUnavailable(
                f"SMTP server lacks a required extension: {err}", provider=NAME,
                code="unsupported",
            ) from None
        except ssl.SSLCertVerificationError:
            _discard(conn)
            raise ProviderUnavailable(
                "SMTP TLS certificate verification failed", provider=NAME, code="tls"
            ) from None
        except (smtplib.SMTPException, OSError) as err:
            # Refused, DNS, connect timeout, a 4xx/5xx greeting: nothing was sent yet.
            _discard(conn)
            raise TransientSendError(
                f"could not open an SMTP session ({type(err).__name__})", provider=NAME,
                code="connect",
            ) from None
        log.debug("smtp connection opened")
        return conn

    # -- one transaction --------------------------------------------------------------

    def _transact(self, conn: smtplib.SMTP, email: OutboundEmail, data: bytes) -> None:
        """MAIL, RCPT, DATA on one connection; raises ``_Stale`` if it dies before DATA."""
        options: list[str] = []
        if not (email.to_email.isascii() and email.from_email.isascii()):
            if not conn.has_extn("smtputf8"):
                raise RecipientRejected(
                    "address needs SMTPUTF8, which the SMTP server does not offer",
                    provider=NAME, code="smtputf8",
                )
            options = ["SMTPUTF8"]
            if conn.has_extn("8bitmime"):
                options.append("BODY=8BITMIME")
        if conn.has_extn("pipelining"):
            self._transact_pipelined(conn, email, data, options)
            return
        try:
            code, reply = conn.mail(email.from_email, options)
            if code != 250:
                raise _reply_error(code, reply, email.to_email, stage="MAIL")
            code, reply = conn.rcpt(email.to_email)
            if code not in (250, 251):
                raise _reply_error(code, reply, email.to_email, stage="RCPT")
        except (smtplib.SMTPServerDisconnected, OSError):
            _discard(conn)
            raise _Stale() from None
        try:
            conn.data(data)
        except smtplib.SMTPDataError as err:
            # The server answered: a clear accept/reject, not ambiguous.
            raise _reply_error(err.smtp_code, err.smtp_error, email.to_email, stage="DATA") from None
        except (smtplib.SMTPServerDisconnected, OSError) as err:
            # The server may still be in DATA mode: never reuse (an RSET would become body).
            _discard(conn)
            raise AmbiguousSendError(
                f"SMTP connection lost during DATA ({type(err).__name__})",
                provider=NAME, code="data_interrupted",
            ) from None


    def _transact_pipelined(
        self, conn: smtplib.SMTP, email: OutboundEmail, data: bytes, options: list[str]
    ) -> None:
        """MAIL, RCPT and DATA in one write, then the message: two round trips instead of four.

        RFC 2920: DATA ends the group, so the server answers all three before it takes any
        message data; the message is written only after its 354. A connection lost before
        that is ``_Stale`` (nothing accepted), after it ambiguous, exactly as in ``_transact``.
        """
        encoding = "utf-8" if options else "ascii"
        mail = f"MAIL FROM:{envelope_address(email.from_email)}{''.join(' ' + o for o in options)}"
        rcpt = f"RCPT TO:{envelope_address(email.to_email)}"
        if any(c in mail + rcpt for c in "\r\n"):
            raise RecipientRejected("address contains a line break", provider=NAME, code="invalid_message")
        try:
            conn.send(f"{mail}\r\n{rcpt}\r\nDATA\r\n".encode(encoding))
            replies = [conn.getreply() for _ in range(3)]
        except (smtplib.SMTPServerDisconnected, OSError):
            _discard(conn)
            raise _Stale() from None
        (mail_code, mail_reply), (rcpt_code, rcpt_reply), (data_code, data_reply) = replies
        failure: SendError | None = None
        if mail_code != 250:
            failure = _reply_error(mail_code, mail_reply, email.to_email, stage="MAIL")
        elif rcpt_code not in (250, 251):
            failure = _reply_error(rcpt_code, rcpt_reply, email.to_email, stage="RCPT")
        elif data_code != 354:
            failure = _reply_error(data_code, data_reply, email.to_email, stage="DATA")
        if failure is not None:
            if data_code == 354:
                # The server waits for message data that must not come: the session is spent.
                _discard(conn)
            raise failure
        try:
            conn.send(_dot_stuffed(data))
            code, reply = conn.getreply()
        except (smtplib.SMTPServerDisconnected, OSError) as err:
            _discard(conn)
            raise AmbiguousSendError(
                f"SMTP connection lost during DATA ({type(err).__name__})",
                provider=NAME, code="data_interrupted",
            ) from None
        if code != 250:
            raise _reply_error(code, reply, email.to_email, stage="DATA")


def _dot_stuffed(data: bytes) -> bytes:
    """The message as DATA carries it (RFC 5321 §4.5.2), as ``smtplib.SMTP.data`` writes it."""
    stuffed = re.sub(rb"(?m)^\.", b"..", data)
    if not stuffed.endswith(b"\r\n"):
        stuffed += b"\r\n"
    return stuffed + b".\r\n"


class _Stale(Exception):
    """The connection died before DATA: nothing was accepted."""


def _reply_error(code: int, reply: bytes | str, recipient: str, stage: str) -> SendError:
    """4xx: try later; 5xx: permanent (530 on MAIL means our login is missing)."""
    text = _reply_text(reply, recipient)
    reason = f"{stage} rejected: {code} {text}".strip()
    if 400 <= code < 500 and is_deferral_answer(str(code), text):
        # The receiving side defers (too fast, try later): paced and re-queued, no attempt spent.
        return DomainDeferred(reason, provider=NAME, code=str(code))
    if 400 <= code < 500:
        return TransientSendError(reason, provider=NAME, code=str(code))
    if stage == "MAIL" and code in (530, 535):
        return ProviderUnavailable(reason, provider=NAME, code=str(code))
    return RecipientRejected(reason, provider=NAME, code=str(code))


def _reply_text(reply: bytes | str, recipient: str) -> str:
    """The server's reply as text, without addresses."""
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
    return _scrub(" ".join(text.split()), recipient)


def _scrub(text: str, recipient: str) -> str:
    """Replace the recipient with ``<recipient>`` and any other address with ``<address>``."""
    if recipient:
        text = re.sub(re.escape(recipient), "<recipient>", text, flags=re.IGNORECASE)
    return _EMAIL_RE.sub("<address>", text)[:_MAX_REASON]


def _quit(conn: smtplib.SMTP) -> None:
    """Polite QUIT, then close whatever happens."""
    try:
        conn.quit()
    except (smtplib.SMTPException, OSError):
        pass
    finally:
        conn.close()


def _discard(conn: smtplib.SMTP) -> None:
    """Close without a QUIT: the session is broken or unknown."""
    try:
        conn.close()
    except OSError:
        pass
