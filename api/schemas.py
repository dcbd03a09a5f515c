"""Request and response models, one family per resource (Create / Update / Public).

Request models forbid unknown fields, so a client can never set what the server owns (ids,
status, counts, tenant, timestamps) and a typo is a 422 instead of being ignored. Response
models are what the OpenAPI document (``/api/openapi.json``) shows clients.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from core.templates import TemplateSpec, is_email
from core.warmup_schedule import BadSchedule, checked_schedule

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")

T = TypeVar("T")


class RequestModel(BaseModel):
    """Base of every request body: unknown (including server-owned) fields are refused."""

    model_config = ConfigDict(extra="forbid")


def _plain_text(value: str) -> str:
    if _CONTROL.search(value):
        raise ValueError("must not contain control characters")
    return value


# -- errors and pages -----------------------------------------------------------------------


class ErrorDetail(BaseModel):
    field: str
    message: str


class ErrorInfo(BaseModel):
    code: str
    message: str
    details: list[ErrorDetail] = []


class ErrorBody(BaseModel):
    """Every 4xx/5xx answer (except the health check's own 503 body)."""

    error: ErrorInfo


class Page(BaseModel, Generic[T]):
    """One page of a list; pass ``continuation`` back to get the next one (null: no more)."""

    items: list[T]
    continuation: str | None = None


# -- tenants and keys ------------------------------------------------------------------------


class TenantCreate(RequestModel):
    name: str = Field(min_length=1, max_length=200)
    rate_limit_per_minute: int | None = Field(None, ge=1, le=10_000_000)
    max_roster: int | None = Field(None, ge=1, le=100_000_000)

    _name_plain = field_validator("name")(_plain_text)


PROVIDER_NAMES = ("sendgrid", "smtp", "acs")
MAX_SENDER_DOMAINS = 50
_DOMAIN = re.compile(r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


def _known_provider(value: str) -> str:
    if value not in PROVIDER_NAMES:
        raise ValueError(f"unknown provider; use one of {', '.join(PROVIDER_NAMES)}")
    return value


def _domain_name(value: str) -> str:
    """A DNS name (ASCII or punycode, at least two labels), lower-cased."""
    domain = value.strip().lower()
    if len(domain) > 253 or not _DOMAIN.fullmatch(domain) or domain.rsplit(".", 1)[1].isdigit():
        raise ValueError("must be a domain name such as uni.example")
    return domain


ProviderName = Annotated[str, AfterValidator(_known_provider)]
DomainName = Annotated[str, AfterValidator(_domain_name)]


def _no_duplicates(values: list[str] | None) -> list[str] | None:
    if values is not None and len(set(values)) != len(values):
        raise ValueError("must not name the same value twice")
    return values


def _warmup_setting(value: Any) -> Any:
    """``"on"``, ``"off"``, null, or a ramp ``checked_schedule`` accepts; one message otherwise."""
    if value is None or value in ("on", "off"):
        return value
    if isinstance(value, list) and all(isinstance(day, int) and not isinstance(day, bool) for day in value):
        try:
            checked_schedule(value)
        except BadSchedule as err:
            raise ValueError(str(err)) from err
        return value
    raise ValueError('use "on", "off" or the daily allowances, e.g. [50, 100, 200]')


class TenantUpdate(RequestModel):
    """Every field optional; ``null`` clears a limit or setting back to the deployment's default."""

    name: str | None = Field(None, min_length=1, max_length=200)
    rate_limit_per_minute: int | None = Field(None, ge=1, le=10_000_000)
    max_roster: int | None = Field(None, ge=1, le=100_000_000)
    providers: list[ProviderName] | None = Field(
        None, min_length=1, max_length=len(PROVIDER_NAMES),
        description="Failover order, e.g. [\"sendgrid\", \"acs\"]; null: the deployment's EMAIL_PROVIDERS.",
    )
    delivery_semantics: Literal["at-most-once", "at-least-once", "reconcile"] | None = Field(
        None, description="Whether ambiguous sends are resent: never, at once, or once when no provider "
        "event came within RECONCILE_WINDOW_SECONDS (reconcile); null: the deployment's DELIVERY_SEMANTICS."
    )
    sender_domains: list[DomainName] | None = Field(
        None, max_length=MAX_SENDER_DOMAINS,
        description="Domains from_email may use (exact match); [] or null: any domain.",
    )
    warmup: Annotated[Literal["on", "off"] | list[int] | None, BeforeValidator(_warmup_setting)] = Field(
        None,
        description="Daily ramp of a new sending domain: \"on\" (the deployment's WARMUP_SCHEDULE), "
        "\"off\" (established domains: no ramp) or the daily allowances, day 1 first, never decreasing "
        "(e.g. [50, 100, 200]); null: WARMUP_NEW_DOMAINS decides.",
    )

    @field_validator("name")
    @classmethod
    def _name_plain(cls, value: str | None) -> str | None:
        if value is None:
            raise ValueError("must be a string")
        return _plain_text(value)

    _providers_once = field_validator("providers")(_no_duplicates)
    _domains_once = field_validator("sender_domains")(_no_duplicates)


class TenantPublic(BaseModel):
    id: str
    name: str
    rate_limit_per_minute: int | None = None
    max_roster: int | None = None
    providers: list[str] | None = Field(None, description="Failover order; null: the deployment's.")
    delivery_semantics: str | None = Field(None, description="null: the deployment's DELIVERY_SEMANTICS.")
    sender_domains: list[str] = Field(default_factory=list, description="Allowed from_email domains.")
    warmup: str | list[int] | None = Field(
        None, description="\"on\", \"off\", the tenant's own daily allowances, or null: WARMUP_NEW_DOMAINS.")
    state: str
    created_at: str | None = None
    updated_at: str | None = None


class TenantKeyCreate(RequestModel):
    role: Literal["tenant", "support"]


class OperatorKeyCreate(RequestModel):
    role: Literal["support"]


class KeyPublic(BaseModel):
    """A new key; ``key`` is shown this once (only its hash is stored)."""

    key: str
    role: str
    id: str
    tenant_id: str | None = None
    created_at: str


# -- contacts --------------------------------------------------------------------------------

AttributeValue = str | int | float | bool | list[str]


class ContactIn(BaseModel):
    """One contact of an import (documentation; rows are validated one by one)."""

    model_config = ConfigDict(extra="forbid")

    email: str
    name: str | None = None
    attributes: dict[str, AttributeValue] | None = None
    lists: list[str] | None = None


class ContactPublic(BaseModel):
    id: str
    email: str
    name: str
    attributes: dict[str, Any]
    lists: list[str]
    state: str
    created_at: str | None = None
    updated_at: str | None = None


class ImportRejection(BaseModel):
    index: int
    field: str
    message: str


class ImportResult(BaseModel):
    created: int
    updated: int
    rejected: list[ImportRejection]


# -- campaigns -------------------------------------------------------------------------------


class CampaignCreate(RequestModel):
    name: str = Field(min_length=1, max_length=200)
    template: TemplateSpec
    criteria: dict[str, Any] | None = None
    send_at: datetime | None = None

    _name_plain = field_validator("name")(_plain_text)


class CampaignUpdate(RequestModel):
    """Every field optional; ``send_at: null`` unschedules a scheduled campaign."""

    name: str | None = Field(None, min_length=1, max_length=200)
    template: TemplateSpec | None = None
    criteria: dict[str, Any] | None = None
    send_at: datetime | None = None

    @field_validator("name")
    @classmethod
    def _name_plain(cls, value: str | None) -> str | None:
        if value is None:
            raise ValueError("must be a string")
        return _plain_text(value)

    @field_validator("template")
    @classmethod
    def _template_given(cls, value: TemplateSpec | None) -> TemplateSpec | None:
        if value is None:
            raise ValueError("must be a template object")
        return value


class ScheduleRequest(RequestModel):
    """``send_at`` omitted (or ``{}``) means now."""

    send_at: datetime | None = None
    override_sender_checks: bool = Field(
        False, description="Operator (admin key) only: schedule although the from_email domain fails "
        "the SPF/DKIM/DMARC checks.")
    dry_run: bool = Field(False, description=(
        "Run the whole pipeline (roster, suppressions, rendering, routing, delivery log) but hand "
        "nothing to a provider for delivery; the campaign's own status and schedule stay as they are."))


class EstimateRequest(RequestModel):
    """An unsaved campaign's audience: its criteria (``{}`` or none: every active contact)."""

    criteria: dict[str, Any] | None = None
    send_at: datetime | None = None


class CampaignEstimateRequest(RequestModel):
    """``send_at`` omitted: the campaign's own, else now."""

    send_at: datetime | None = None


class SendForecastPublic(BaseModel):
    recipients: int
    start_at: str
    finish_at: str
    seconds: float
    emails_per_second: float
    bound: str = Field(description="Which limit decides the finish: tenant_rate_limit, provider_rate_limit, "
                                   "measured_throughput or nominal.")
    provider: str
    limits: dict[str, float] = Field(description="Every bound known, in emails per second.")


class EstimatePublic(BaseModel):
    matching: int = Field(description="Contacts the criteria select: the roster a run would expand.")
    suppressed: dict[str, int] = Field(description="Of those, suppressed, by reason.")
    invalid: int = Field(description="Of those, addresses no provider would be handed (they end skipped).")
    over_limit: int = Field(description="Matches beyond the tenant's max_roster (a run would be refused).")
    recipients: int = Field(description="What a run would hand to a provider.")
    sample: list[str] = Field(description="A few matching contact ids.")
    exact: bool = Field(description="False: extrapolated past ESTIMATE_EXACT_LIMIT scanned contacts.")
    scanned: int
    bounds: dict[str, int] | None = Field(None, description="`{low, high}` of `matching` when not exact.")
    max_roster: int | None = None
    forecast: SendForecastPublic
    estimated_at: str
    criteria_hash: str


class ForecastHour(BaseModel):
    hour: str = Field(description="Start of the hour (UTC).")
    emails: int
    providers: dict[str, int] = Field(description="Of those, per provider the tenants send through first.")


class ScheduledRunPublic(BaseModel):
    tenant_id: str
    campaign_id: str
    send_at: str
    recipients: int
    exact: bool = Field(description="False: the campaign's audience was extrapolated (see the estimate).")
    provider: str
    emails_per_second: float


class VolumeForecastPublic(BaseModel):
    start: str
    end: str
    emails: int
    providers: dict[str, int]
    hours: list[ForecastHour]
    runs: list[ScheduledRunPublic]


class PreviewRequest(RequestModel):
    contact_id: str | None = Field(None, min_length=1, max_length=64)
    email: str | None = Field(None, min_length=3, max_length=254)


def _email_address(value: str) -> str:
    if not is_email(value):
        raise ValueError("not an email address")
    return value


EmailAddress = Annotated[str, AfterValidator(_email_address)]
MAX_TEST_RECIPIENTS = 5


class TestSendRequest(RequestModel):
    to: list[EmailAddress] = Field(min_length=1, max_length=MAX_TEST_RECIPIENTS,
                                   description="Up to 5 addresses to send the campaign's test to.")


class TestSendAccepted(BaseModel):
    id: str = Field(description="The test email's id: `GET /emails/{id}` shows its status and events.")


class JobSummary(BaseModel):
    id: str
    status: str
    dry_run: bool = False
    started_at: str | None = None
    completed_at: str | None = None
    time_to_send_seconds: float | None = Field(
        None, description="A finished job's time from start to close: the headline metric."
    )


class CampaignPublic(BaseModel):
    id: str
    name: str
    status: str
    template: dict[str, Any]
    criteria: dict[str, Any]
    send_at: str | None = None
    counts: dict[str, int]
    jobs: list[JobSummary]
    current_job_id: str | None = None
    job_count: int = 0
    created_at: str | None = None
    updated_at: str | None = None
    completed_at: str | None = None
    created_by: str | None = Field(None, description="Key id (never the key) that created the campaign.")
    scheduled_by: str | None = None
    paused_by: str | None = None
    resumed_by: str | None = None
    cancelled_by: str | None = None
    estimate: dict[str, Any] | None = Field(
        None, description="The last audience estimate (`POST /campaigns/{id}/estimate`), as cached.")
    dry_run_job_id: str | None = Field(
        None, description="Only in the answer to a dry-run schedule: the id of the dry run's job.")


class PreviewPublic(BaseModel):
    subject: str
    html: str
    text: str
    headers: dict[str, str]


# -- jobs and deliveries -----------------------------------------------------------------


class CompliancePublic(BaseModel):
    """Gmail/Yahoo bulk-sender rules for one job (``status_manager/compliance.py``)."""

    one_click_unsubscribe: bool = Field(description="Every message carries List-Unsubscribe and "
                                        "List-Unsubscribe-Post: List-Unsubscribe=One-Click.")
    unsubscribes: int = Field(description="Provider unsubscribe events applied for this job.")
    unsubscribe_max_seconds: float | None = Field(
        None, description="Longest time from an unsubscribe event to its suppression.")
    unsubscribes_within_48h: bool
    complaints: int
    complaint_rate: float = Field(description="Complaints / messages the provider took.")
    complaint_rate_within_limit: bool = Field(description="Below the 0.3 % Gmail and Yahoo enforce.")


class JobPublic(BaseModel):
    id: str
    campaign_id: str
    status: str
    roster_size: int
    counts: dict[str, int]
    progress: float = Field(ge=0, le=1)
    started_at: str | None = None
    completed_at: str | None = None
    eta: str | None = None
    waiting_reason: str | None = Field(
        None, description="Why a running job sends nothing now and when it goes on (a warming sending "
        "domain's allowance for today is used); null when it is not waiting.")
    waiting_until: str | None = Field(None, description="When a waiting job continues (the next UTC day).")
    failure_reason: str | None = None
    last_error: str | None = None
    tasks_total: int
    tasks_done: int
    created_at: str | None = None
    time_to_send_seconds: float | None = Field(None, description="Start to close, once the job finished.")
    retry_of: str | None = Field(None, description="For a retry-failed job: the job it retries.")
    compliance: CompliancePublic | None = Field(
        None, description="Bulk-sender compliance (GET /jobs/{id} only).")
    unknown_resolution: dict[str, int] = Field(
        default_factory=dict,
        description="How its unknown recipients (provider answer lost) were resolved: accepted_by_event, "
        "not_accepted (no event within RECONCILE_WINDOW_SECONDS: failed), resent (reconcile), "
        "no_event_feed (SMTP, ACS: stay unknown), awaiting (inside the window).")
    reconciling_until: str | None = Field(
        None, description="The job stays sending until then for its unknowns' window (GET /jobs/{id} only).")
    dry_run: bool = Field(False, description="Validated, never delivered: counts say what a real run would.")
    send_mode: Literal["batched", "per-recipient"] | None = Field(None, description=(
        "How its recipients go to the provider, decided at its first send: 'batched' (one SendGrid "
        "request per send group) or 'per-recipient'; null before the first send."))
    send_mode_reason: str | None = Field(None, description="Why this send mode.")
    created_by: str | None = Field(None, description="Key id (never the key) that created or scheduled it.")
    paused_by: str | None = None
    resumed_by: str | None = None
    cancelled_by: str | None = None


class DeliveryEvent(BaseModel):
    type: str
    at: str
    detail: str | None = None
    source: str | None = None  # "mailroom" (our own outcome) or the provider's name
    reason_code: str | None = None  # e.g. the provider's SMTP status "5.1.1"
    provider_response: str | None = None  # the receiving server's answer, addresses removed


class DeliveryPublic(BaseModel):
    contact_id: str
    email: str
    status: str
    reason: str
    provider: str
    provider_message_id: str
    attempts: int
    events: list[DeliveryEvent]
    updated_at: str | None = None
    dry_run: bool = Field(False, description="A dry run's delivery: validated, delivered by nobody.")


class WebhookAccepted(BaseModel):
    """The webhook's answer: how many events were queued, in how many events-queue messages."""

    events: int
    messages: int


class ContactDeliveryPublic(BaseModel):
    """One campaign run's outcome for one contact (``GET /contacts/{id}/deliveries``)."""

    job_id: str
    campaign_id: str
    campaign_name: str
    status: str
    reason: str
    provider_message_id: str
    updated_at: str | None = None
    job_open: bool = Field(False, description="The job is still running: the status may change.")
    dry_run: bool = Field(False, description="A dry run: what would have happened; nothing was delivered.")


# -- suppressions ----------------------------------------------------------------------------


class SuppressionCreate(RequestModel):
    email: str = Field(max_length=254)
    reason: str = Field("manual", min_length=1, max_length=100)

    @field_validator("email")
    @classmethod
    def _email_valid(cls, value: str) -> str:
        if not is_email(value.strip()):
            raise ValueError("must be a valid email address")
        return value.strip()

    _reason_plain = field_validator("reason")(_plain_text)


class SuppressionPublic(BaseModel):
    email: str
    reason: str
    at: str
    source: str | None = None
