"""The one settings object.

Values come from environment variables first, then from the ``Values`` map of
``local.settings.json`` (the file the Functions host reads locally), then from
the defaults below. That order is the host's own, so ``MAILROOM_ADMIN_KEY=... make serve``
works without editing a file. Every setting is documented in
``local.settings.json.example`` and in the README's configuration table.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from core.errors import SettingsError
from core.warmup_schedule import DEFAULT_SCHEDULE, BadSchedule, parse_schedule, spelled

PROJECT_ROOT = Path(__file__).resolve().parent.parent

# Azurite's well-known development account (public, documented by Microsoft).
DEVSTORE_ACCOUNT = "devstoreaccount1"
DEVSTORE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def devstore_connection_string(
    host: str = "127.0.0.1", blob: int = 10000, queue: int = 10001, table: int = 10002
) -> str:
    """The explicit connection string for an Azurite listening on ``host``."""
    return (
        "DefaultEndpointsProtocol=http;"
        f"AccountName={DEVSTORE_ACCOUNT};AccountKey={DEVSTORE_KEY};"
        f"BlobEndpoint=http://{host}:{blob}/{DEVSTORE_ACCOUNT};"
        f"QueueEndpoint=http://{host}:{queue}/{DEVSTORE_ACCOUNT};"
        f"TableEndpoint=http://{host}:{table}/{DEVSTORE_ACCOUNT};"
    )


class LocalSettingsJsonSource(PydanticBaseSettingsSource):
    """Reads ``Values`` from ``local.settings.json``, as the Functions host does."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path) -> None:
        super().__init__(settings_cls)
        self._values: dict[str, Any] = {}
        if path.is_file():
            try:
                self._values = dict(json.loads(path.read_text()).get("Values", {}))
            except (ValueError, AttributeError) as err:
                raise SettingsError(f"{path.name} is not valid JSON with a 'Values' map") from err

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        name = field.alias or field_name
        return self._values.get(name), name, False

    def __call__(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for field_name, field in self.settings_cls.model_fields.items():
            value, key, _ = self.get_field_value(field, field_name)
            if value is not None and value != "":
                out[key] = value
        return out


class Settings(BaseSettings):
    """Every knob of Mailroom. Names match the Functions app settings one to one."""

    model_config = SettingsConfigDict(populate_by_name=True, extra="ignore", frozen=True)

    storage_connection_string: str = Field(
        "UseDevelopmentStorage=true",
        alias="AzureWebJobsStorage",
        description="Storage account for tables, queues and blobs (the Functions host's own).",
    )
    admin_key: str = Field(
        "",
        alias="MAILROOM_ADMIN_KEY",
        description="Bootstrap operator key (role admin). Empty disables it.",
    )
    signing_key: str = Field(
        "dev-signing-key-change-me",
        alias="MAILROOM_SIGNING_KEY",
        description="HMAC key that signs unsubscribe tokens and continuation tokens.",
    )
    public_url: str = Field(
        "http://127.0.0.1:7071",
        alias="MAILROOM_PUBLIC_URL",
        description="Base URL people reach the app at (used in unsubscribe links).",
    )
    email_provider: Literal["sendgrid", "smtp", "acs"] = Field(
        "sendgrid", alias="EMAIL_PROVIDER", description="Provider that sends campaign email."
    )
    sendgrid_api_key: str = Field("SG.dev", alias="SENDGRID_API_KEY")
    sendgrid_api_url: str = Field(
        "https://api.sendgrid.com",
        alias="SENDGRID_API_URL",
        description="SendGrid API host; the local simulator's URL in development.",
    )
    smtp_host: str = Field("127.0.0.1", alias="SMTP_HOST")
    smtp_port: int = Field(1025, alias="SMTP_PORT", ge=1, le=65535)
    smtp_username: str = Field("", alias="SMTP_USERNAME")
    smtp_password: str = Field("", alias="SMTP_PASSWORD")
    smtp_starttls: bool = Field(False, alias="SMTP_STARTTLS")
    smtp_timeout_seconds: float = Field(10.0, alias="SMTP_TIMEOUT_SECONDS", gt=0)

    task_size: int = Field(
        500, alias="TASK_SIZE", ge=1, le=5000, description="Recipients per task (one queue message)."
    )
    batched_task_size: int = Field(
        2500,
        alias="BATCHED_TASK_SIZE",
        ge=0,
        le=5000,
        description="Recipients per task of a job that will be sent batched (a substitutable template, "
        "SendGrid first, SENDGRID_BATCH_SIZE on). Its recipients cost well under half the CPU of one-by-one "
        "sends, so a task of 2500 runs about as long as one of TASK_SIZE 500 sent one by one, and the "
        "per-task requests (claim, finish, queue message, job read, suppression and erasure checks) spread "
        "over 5x as many. Requests per email in-process at 30k: 0.0297 at 2000, 0.0280 at 2500, 0.0276 at "
        "3000. 0: TASK_SIZE for every job.",
    )
    task_window: int = Field(
        6,
        alias="TASK_WINDOW",
        ge=1,
        le=1000,
        description="Tasks of one job on task-queue or running at once. Small keeps the queue short, so "
        "another tenant's task is picked up within seconds (fairness); each host process that should "
        "work on one job at the same time needs about this many.",
    )
    send_concurrency: int = Field(
        50,
        alias="SEND_CONCURRENCY",
        ge=1,
        le=256,
        description="Provider calls in flight per host process (shared by its tasks). 50 = one send "
        "group, so a killed host leaves at most 2x this unknown; at 100 ms of provider latency 50 gives "
        "~420 emails/s (32: ~290; 8 would cap it near 80 emails/s).",
    )
    sendgrid_batch_size: int = Field(
        50,
        alias="SENDGRID_BATCH_SIZE",
        ge=0,
        le=50,
        description="Recipients of one job sent in one SendGrid request (personalizations) when the job's "
        "template is substitutable and its providers route to SendGrid; 0 sends one request per recipient. "
        "A batch is a send group: capped by SEND_GROUP_SIZE (at most 50), so batched jobs leave no more "
        "`unknown` than per-recipient ones.",
    )
    send_group_size: int = Field(
        50,
        alias="SEND_GROUP_SIZE",
        ge=1,
        le=50,
        description="Recipients a task marks `sending` in one table batch before handing them to the "
        "provider (with the previous group's outcomes, so at most 50): what a crash can leave `unknown` "
        "per running task. Smaller leaves fewer unknowns and costs one storage request per group.",
    )
    lease_seconds: int = Field(
        15,
        alias="TASK_LEASE_SECONDS",
        ge=3,
        description="How long a claimed task or expansion is owned without a renewal. A running task "
        "renews it every third of this while its sends are in flight (task_manager/lease.py), so it "
        "bounds how long a dead host's work waits for another host, not how long a send may take.",
    )
    job_status_check_seconds: float = Field(
        1.0,
        alias="JOB_STATUS_CHECK_SECONDS",
        ge=0,
        description="A running task looks at its job's status (paused? cancelled?) at a chunk boundary "
        "at most this often.",
    )
    job_time_budget_seconds: int = Field(
        240,
        alias="JOB_TIME_BUDGET_SECONDS",
        ge=5,
        description="Work one invocation does before it re-enqueues a continuation.",
    )
    estimate_exact_limit: int = Field(
        50_000,
        alias="ESTIMATE_EXACT_LIMIT",
        ge=1,
        description="Contacts an audience estimate scans before it extrapolates (exact: false, with bounds).",
    )
    retry_budget_seconds: float = Field(
        30.0,
        alias="RETRY_BUDGET_SECONDS",
        gt=0,
        description="Time one task may spend retrying transient provider errors.",
    )
    max_send_attempts: int = Field(5, alias="MAX_SEND_ATTEMPTS", ge=1, le=20)
    throttle_horizon_seconds: int = Field(
        6 * 3600,
        alias="THROTTLE_HORIZON_SECONDS",
        ge=1,
        description="How long a recipient the provider keeps throttling (429, Retry-After) is deferred "
        "and retried before it ends failed. Throttling never spends one of MAX_SEND_ATTEMPTS.",
    )
    # -- providers that fail well (issue 4) ------------------------------------------------
    email_providers: str = Field(
        "",
        alias="EMAIL_PROVIDERS",
        description="Providers in failover order, comma-separated (sendgrid, acs, smtp); "
        "empty: EMAIL_PROVIDER alone. A tenant's own list (Tenants.providers) wins.",
    )
    acs_connection_string: str = Field(
        "",
        alias="ACS_CONNECTION_STRING",
        description="Azure Communication Services connection string (endpoint=...;accesskey=...).",
    )
    acs_poll_seconds: float = Field(
        1.0, alias="ACS_POLL_SECONDS", gt=0, description="How often the ACS send poller asks."
    )
    provider_timeout_seconds: float = Field(
        10.0,
        alias="PROVIDER_TIMEOUT_SECONDS",
        gt=0,
        description="Wait for a provider's answer; past it the outcome is ambiguous (unknown).",
    )
    delivery_semantics: Literal["at-most-once", "at-least-once", "reconcile"] = Field(
        "at-most-once",
        alias="DELIVERY_SEMANTICS",
        description="Whether an ambiguous send (may have been accepted) is ever resent: never, at once "
        "(at-least-once), or once after RECONCILE_WINDOW_SECONDS without a provider event (reconcile); "
        "a tenant may choose its own (Tenants.delivery_semantics).",
    )
    reconcile_window_seconds: float = Field(
        900.0,
        alias="RECONCILE_WINDOW_SECONDS",
        gt=0,
        description="How long an unknown recipient waits for a provider event (SendGrid posts them in "
        "near real time) before it counts as not accepted; its job stays open until then.",
    )
    health_window_seconds: float = Field(
        60.0, alias="HEALTH_WINDOW_SECONDS", gt=0, description="Sliding window of provider health."
    )
    health_failure_ratio: float = Field(
        0.5,
        alias="HEALTH_FAILURE_RATIO",
        gt=0,
        le=1,
        description="Share of failed sends in the window that opens a provider's breaker.",
    )
    health_min_requests: int = Field(
        10, alias="HEALTH_MIN_REQUESTS", ge=1, description="Sends in the window before it can open."
    )
    health_cooldown_seconds: float = Field(
        30.0,
        alias="HEALTH_COOLDOWN_SECONDS",
        gt=0,
        description="How long an open breaker waits before one probe message decides.",
    )
    health_sync_seconds: float = Field(
        2.0,
        alias="HEALTH_SYNC_SECONDS",
        gt=0,
        description="How often a host merges its counts into ProviderHealth and re-reads it.",
    )
    provider_rate_limits: str = Field(
        "",
        alias="PROVIDER_RATE_LIMITS",
        description="Sends per second per provider across all hosts, e.g. 'sendgrid=100,acs=20'.",
    )
    refill_after_seconds: int = Field(
        60,
        alias="WINDOW_REFILL_AFTER_SECONDS",
        ge=5,
        description="A job with no progress for this long gets its task window refilled.",
    )
    campaign_manager_schedule: str = Field(
        "*/10 * * * * *",
        alias="CAMPAIGN_MANAGER_SCHEDULE",
        description="NCRONTAB (seconds first) of the Campaign Manager timer.",
    )
    status_manager_schedule: str = Field(
        "*/10 * * * * *",
        alias="STATUS_MANAGER_SCHEDULE",
        description="NCRONTAB (seconds first) of the Status Manager timer.",
    )
    max_request_bytes: int = Field(
        20 * 1024 * 1024,
        alias="MAX_REQUEST_BYTES",
        ge=1024,
        description="Largest request body the API accepts (413 beyond).",
    )
    max_contacts_per_import: int = Field(100_000, alias="MAX_CONTACTS_PER_IMPORT", ge=1)
    log_level: str = Field("INFO", alias="MAILROOM_LOG_LEVEL")
    applicationinsights_connection_string: str = Field(
        "",
        alias="APPLICATIONINSIGHTS_CONNECTION_STRING",
        description="Application Insights connection string; set: traces and metrics go to Azure Monitor.",
    )
    telemetry_console: bool = Field(
        False,
        alias="MAILROOM_TELEMETRY_CONSOLE",
        description="Print spans and metrics as JSON on stdout (local; ignored when App Insights is set).",
    )
    # -- tenants are walls (issue 6) ----------------------------------------------------------
    log_format: Literal["json", "plain"] = Field(
        "json",
        alias="MAILROOM_LOG_FORMAT",
        description="json: one JSON object per log line (ids and counts only); plain: for people.",
    )
    api_rate_limit_per_minute: int = Field(
        1200,
        alias="API_RATE_LIMIT_PER_MINUTE",
        ge=0,
        description="Requests one API key may make per minute on one host process (429 with "
        "Retry-After beyond; bursts up to this many); 0 turns the limit off.",
    )
    storage_lean_batches: bool = Field(
        True,
        alias="STORAGE_LEAN_BATCHES",
        description="Send table insert/upsert batches with core.table_batches (~20x less CPU than the SDK).",
    )
    sendgrid_webhook_public_key: str = Field(
        "",
        alias="SENDGRID_WEBHOOK_PUBLIC_KEY",
        description="SendGrid's signed event webhook verification key (base64 DER, P-256). "
        "Empty: every webhook call is refused.",
    )
    sendgrid_webhook_max_age_seconds: int = Field(
        600,
        alias="SENDGRID_WEBHOOK_MAX_AGE_SECONDS",
        ge=0,
        description="Oldest signed timestamp accepted on the event webhook; 0 disables the check.",
    )
    soft_bounce_suppress_after: int = Field(
        3,
        alias="SOFT_BOUNCE_SUPPRESS_AFTER",
        ge=1,
        description="Soft bounces (blocked) of one address before it is suppressed.",
    )
    delivery_log_retention_days: int = Field(
        90,
        alias="DELIVERY_LOG_RETENTION_DAYS",
        ge=1,
        description="Delivery logs, events and exported CSVs of jobs closed longer ago are purged.",
    )

    # -- deliverability guardrails (issue 17) -------------------------------------------------
    reputation_window_seconds: int = Field(
        86_400,
        alias="REPUTATION_WINDOW_SECONDS",
        ge=60,
        description="Sliding window of a tenant's bounce and complaint rates (the reputation brake).",
    )
    reputation_min_sample: int = Field(
        500,
        alias="REPUTATION_MIN_SAMPLE",
        ge=1,
        description="Messages with a delivery answer (delivered or hard-bounced) in the window before "
        "the brake may trip.",
    )
    reputation_bounce_rate: float = Field(
        0.05, alias="REPUTATION_BOUNCE_RATE", gt=0, le=1,
        description="Share of hard bounces in the window above which the tenant's running jobs pause.",
    )
    reputation_complaint_rate: float = Field(
        0.001, alias="REPUTATION_COMPLAINT_RATE", gt=0, le=1,
        description="Share of spam complaints in the window above which the tenant's running jobs pause.",
    )
    sender_checks: bool = Field(
        False,
        alias="SENDER_CHECKS",
        description="Check SPF, DKIM and DMARC of a campaign's from_email domain through DNS when it is "
        "scheduled (refused with the failing record named; the operator may override).",
    )
    dkim_selectors: str = Field(
        "s1",
        alias="DKIM_SELECTORS",
        description="DKIM selectors looked up at <selector>._domainkey.<domain>, comma-separated; one "
        "with a public key is enough.",
    )
    dns_resolver: str = Field(
        "",
        alias="DNS_RESOLVER",
        description="host:port of the DNS server sender checks ask; empty: the system's resolvers. "
        "Tests and local stacks point it at a local DNS server.",
    )
    dns_timeout_seconds: float = Field(
        3.0, alias="DNS_TIMEOUT_SECONDS", gt=0, description="Time one sender check may spend on DNS."
    )

    pacing_rates: str = Field(
        "gmail=50,microsoft=30,yahoo=20,apple=20",
        alias="PACING_RATES",
        description="Sends per second per (tenant, sending domain, recipient domain group) across hosts, "
        "e.g. 'gmail=50,microsoft=30'; groups and other domains not named are unpaced until they defer.",
    )
    pacing_min_rate: float = Field(
        1.0, alias="PACING_MIN_RATE", gt=0, description="The slowest a deferring domain is sent to (per s)."
    )
    pacing_decrease_factor: float = Field(
        0.5, alias="PACING_DECREASE_FACTOR", gt=0, lt=1,
        description="A deferral multiplies the domain's rate by this (at most once a second).",
    )
    pacing_increase_step: float = Field(
        1.0, alias="PACING_INCREASE_STEP", gt=0,
        description="Quiet success adds this many sends per second to a slowed domain's rate ...",
    )
    pacing_increase_seconds: float = Field(
        2.0, alias="PACING_INCREASE_SECONDS", gt=0,
        description="... every this many seconds without a deferral, until it is back at its ceiling.",
    )
    pacing_retry_seconds: int = Field(
        5, alias="PACING_RETRY_SECONDS", ge=1,
        description="A recipient deferred by its domain (or its pace) is re-queued after this long.",
    )
    warmup_schedule: str = Field(
        spelled(DEFAULT_SCHEDULE),
        alias="WARMUP_SCHEDULE",
        description="Daily allowances of a warming (tenant, sending domain), day 1 first (its first UTC "
        "day of sending), comma-separated and never decreasing; after the last day no cap.",
    )
    warmup_new_domains: bool = Field(
        False,
        alias="WARMUP_NEW_DOMAINS",
        description="true: a tenant without its own 'warmup' setting warms up each new sending domain on "
        "WARMUP_SCHEDULE; false: only tenants whose 'warmup' is 'on' or a schedule do.",
    )

    @field_validator("warmup_schedule")
    @classmethod
    def _warmup_schedule_parses(cls, value: str) -> str:
        try:
            return spelled(parse_schedule(value))
        except BadSchedule as err:
            raise ValueError(str(err)) from err

    @property
    def connection_string(self) -> str:
        """The storage connection string with the development shortcut expanded.

        The storage SDKs do not understand ``UseDevelopmentStorage=true``; the Functions
        host does, so we expand it here the same way.
        """
        raw = self.storage_connection_string.strip()
        if raw.lower().startswith("usedevelopmentstorage=true"):
            return devstore_connection_string()
        return raw

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        path = Path(os.environ.get("MAILROOM_LOCAL_SETTINGS", PROJECT_ROOT / "local.settings.json"))
        return (init_settings, env_settings, LocalSettingsJsonSource(settings_cls, path))


def load_settings(**overrides: Any) -> Settings:
    """Build settings, turning a validation failure into one line naming the setting."""
    try:
        return Settings(**overrides)
    except ValidationError as err:
        first = err.errors()[0]
        name = ".".join(str(p) for p in first["loc"]) or "settings"
        raise SettingsError(f"setting {name}: {first['msg']}") from err


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return load_settings()
