"""Builds the configured providers, so callers depend on ``EmailProvider`` only."""

from __future__ import annotations

from core.clock import Clock, utcnow
from core.errors import SettingsError
from core.settings import Settings
from core.storage import Storage
from providers.base import EmailProvider
from providers.failover import FailoverSender
from providers.health import BreakerConfig, HealthBoard
from providers.pacing import DomainPacer, PacedSender, PacingConfig
from providers.rate_limits import RateLimiter, parse_rates
from providers.warmup import WarmupGate

KNOWN = ("sendgrid", "smtp", "acs")


def provider_order(settings: Settings) -> list[str]:
    """``EMAIL_PROVIDERS`` in order, or ``EMAIL_PROVIDER`` alone."""
    names = [n.strip() for n in settings.email_providers.split(",") if n.strip()]
    names = names or [settings.email_provider]
    unknown = [n for n in names if n not in KNOWN]
    if unknown:
        raise SettingsError(f"setting EMAIL_PROVIDERS: unknown provider {unknown[0]!r}")
    return names


def first_provider(settings: Settings, tenant_providers: list[str] | tuple[str, ...] = ()) -> str:
    """The provider a tenant's sends try first: its own list (``Tenants.providers``), else
    ``EMAIL_PROVIDERS``/``EMAIL_PROVIDER``."""
    return tenant_providers[0] if tenant_providers else provider_order(settings)[0]


def build_provider(settings: Settings, name: str | None = None) -> EmailProvider:
    """One provider (``name``, default ``EMAIL_PROVIDER``), configured from the settings.

    Imports are local so a host that uses SMTP never imports the SendGrid client.
    """
    name = name or settings.email_provider
    if name == "sendgrid":
        from providers.sendgrid import SendGridProvider

        return SendGridProvider(
            api_key=settings.sendgrid_api_key, api_url=settings.sendgrid_api_url,
            timeout=settings.provider_timeout_seconds,
        )
    if name == "smtp":
        from providers.smtp import SmtpProvider

        return SmtpProvider(
            host=settings.smtp_host,
            port=settings.smtp_port,
            username=settings.smtp_username,
            password=settings.smtp_password,
            starttls=settings.smtp_starttls,
            timeout=settings.smtp_timeout_seconds,
            # One idle connection per sending thread: with fewer, every send beyond the pool
            # opened a session (connect, greeting, EHLO) and closed it (QUIT) again.
            pool_size=settings.send_concurrency,
        )
    if name == "acs":
        from providers.acs import AcsProvider

        if not settings.acs_connection_string:
            raise SettingsError("setting ACS_CONNECTION_STRING: required when acs is a provider")
        return AcsProvider(
            settings.acs_connection_string, timeout=settings.provider_timeout_seconds,
            poll_seconds=settings.acs_poll_seconds,
        )
    raise SettingsError(f"setting EMAIL_PROVIDER: unknown provider {name!r}")


def breaker_config(settings: Settings) -> BreakerConfig:
    return BreakerConfig(
        window_seconds=settings.health_window_seconds,
        failure_ratio=settings.health_failure_ratio,
        min_requests=settings.health_min_requests,
        cooldown_seconds=settings.health_cooldown_seconds,
        sync_seconds=settings.health_sync_seconds,
        probe_timeout_seconds=max(30.0, settings.provider_timeout_seconds * 3),
    )


def build_sender(settings: Settings, storage: Storage, owner: str = "", clock: Clock = utcnow) -> PacedSender:
    """Every configured provider behind failover, shared health and rate limits, paced per domain,
    and warming sending domains kept to their daily allowance."""
    order = provider_order(settings)
    providers = {name: build_provider(settings, name) for name in order}
    limiter = RateLimiter(storage)
    failover = FailoverSender(
        providers,
        order,
        health=HealthBoard(storage, breaker_config(settings), owner),
        limiter=limiter,
        rates=parse_rates(settings.provider_rate_limits),
    )
    pacer = DomainPacer(storage, PacingConfig.from_settings(settings), limiter)
    return PacedSender(failover, pacer, WarmupGate(storage, settings, clock))
