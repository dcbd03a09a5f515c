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

log = logging.getLogger(__name__)

NAME = "smtp"
# custom_args key -> header, so a bounce or reply can be traced to the delivery.
TRACE_HEADERS = {
    "tenant_id": "X-Mailroom-Tenant",
    "job_id": "X-Mailroom-Job",
    "task_id": "X-Mailroom-Task",
    "contact_id": "X-Mailroom-Contact",
}
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


def build_message(email_: OutboundEmail) -> tuple[EmailMessage, str]:
    """The MIME message and its generated Message-ID.

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
    msg["Date"] = email.utils.formatdate(localtime=False)
    domain = email_.from_email.rpartition("@")[2] or None
    message_id = email.utils.make_msgid(domain=domain)
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

    def send(self, email: OutboundEmail) -> SendResult:
        """Deliver one message to the relay or raise a ``core.errors.SendError``."""
        try:
            msg, message_id = build_message(email)
            data = msg.as_bytes()
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
