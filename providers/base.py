"""The provider interface every adapter implements.

A provider takes one rendered ``OutboundEmail`` and either returns a ``SendResult`` or
raises one of the ``core.errors.SendError`` subclasses, which tell the Task Manager what
to do next (retry, fail the recipient, pause the job, or record ``unknown``). Adapters
never log addresses or bodies.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class OutboundEmail:
    """One rendered message for one recipient.

    ``custom_args`` carries our ids (tenant, job, task, contact) so provider events can be
    mapped back to the delivery without a lookup (SendGrid ``custom_args``, SMTP headers).
    """

    to_email: str
    subject: str
    from_email: str
    to_name: str = ""
    from_name: str = ""
    reply_to: str = ""
    html: str = ""
    text: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    custom_args: dict[str, str] = field(default_factory=dict)
    # For a batch send (``SendGridProvider.send_batch``): subject, html and text are the job's
    # skeleton (``core.templates.render_skeleton``) and these fill its placeholders for this
    # recipient (``core.templates.substitutions_for``). Empty for a per-recipient render.
    substitutions: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SendResult:
    """What the provider said when it accepted the message."""

    provider: str
    message_id: str = ""


@runtime_checkable
class EmailProvider(Protocol):
    """One email provider. Implementations must be safe to call from several threads."""

    name: str

    def send(self, email: OutboundEmail) -> SendResult:
        """Hand one message to the provider, or raise a ``core.errors.SendError`` subclass."""
        ...

    def close(self) -> None:
        """Release pooled connections."""
        ...
