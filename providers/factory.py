"""Builds the configured provider, so callers depend on ``EmailProvider`` only."""

from __future__ import annotations

from core.errors import SettingsError
from core.settings import Settings
from providers.base import EmailProvider


def build_provider(settings: Settings) -> EmailProvider:
    """The provider named by ``EMAIL_PROVIDER``, configured from the settings.

    Imports are local so a host that uses SMTP never imports the SendGrid client.
    """
    if settings.email_provider == "sendgrid":
        from providers.sendgrid import SendGridProvider

        return SendGridProvider(
            api_key=settings.sendgrid_api_key, api_url=settings.sendgrid_api_url
        )
    if settings.email_provider == "smtp":
        from providers.smtp import SmtpProvider

        return SmtpProvider(
            host=settings.smtp_host,
            port=settings.smtp_port,
            username=settings.smtp_username,
            password=settings.smtp_password,
            starttls=settings.smtp_starttls,
            timeout=settings.smtp_timeout_seconds,
        )
    raise SettingsError(f"setting EMAIL_PROVIDER: unknown provider {settings.email_provider!r}")
