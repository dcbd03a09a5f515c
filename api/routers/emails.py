"""Transactional email (API.md "Transactional"): ``POST /emails`` and ``GET /emails/{id}``.

202 at once: the email becomes a one-task job on ``task-queue`` (``job_manager.transactional``)
so it gets the campaign path's guarantees (suppressions, retries, failover, at most one
hand-off, a delivery row per recipient). The same ``idempotency_key`` within 24 h answers
the same id and sends nothing new.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Response
from pydantic import BaseModel, Field, field_validator, model_validator

from api.auth import TenantDep
from api.dependencies import StorageDep
from api.errors import not_found
from api.routers.conventions import ERROR_RESPONSES
from api.routers.jobs import with_timelines
from api.schemas import DeliveryPublic, RequestModel
from core.in_flight import only_delivery_rows
from core.models import Job
from core.storage import DELIVERIES, JOBS
from core.templates import TemplateSpec, compile_template, is_email
from core.tenant_settings import require_allowed_sender
from job_manager.transactional import TransactionalEmail, is_transactional, submit_email

router = APIRouter(tags=["transactional"], responses=ERROR_RESPONSES)

MAX_RECIPIENTS = 50


class InlineContent(RequestModel):
    subject: str = Field(min_length=1, max_length=998)
    html: str = ""
    text: str = ""


class EmailCreate(RequestModel):
    to: list[str] = Field(min_length=1, max_length=MAX_RECIPIENTS)
    from_email: str
    from_name: str = ""
    reply_to: str = ""
    template: InlineContent | None = Field(None, description="Jinja subject/html/text (or give them inline).")
    subject: str | None = Field(None, min_length=1, max_length=998)
    html: str | None = None
    text: str | None = None
    data: dict[str, Any] = Field(default_factory=dict, description="Values the template reads as "
                                 "`contact.attributes.<name>`.")
    idempotency_key: str | None = Field(None, min_length=1, max_length=256)

    @field_validator("to")
    @classmethod
    def _addresses(cls, value: list[str]) -> list[str]:
        bad = [i for i, address in enumerate(value) if not is_email(address)]
        if bad:
            raise ValueError(f"not an email address at position {bad[0]}")
        return value

    @model_validator(mode="after")
    def _content_once(self) -> EmailCreate:
        if self.template is None and self.subject is None:
            raise ValueError("give either template {subject, html?, text?} or subject/html/text")
        if self.template is not None and self.subject is not None:
            raise ValueError("give template or subject/html/text, not both")
        return self

    def spec(self) -> TemplateSpec:
        content = self.template or InlineContent(subject=self.subject or "", html=self.html or "",
                                                 text=self.text or "")
        return TemplateSpec(subject=content.subject, html=content.html, text=content.text,
                            from_email=self.from_email, from_name=self.from_name, reply_to=self.reply_to)


class EmailAccepted(BaseModel):
    id: str


class EmailPublic(BaseModel):
    id: str
    kind: Literal["transactional", "test"] = "transactional"
    campaign_id: str | None = Field(None, description="A test send: the campaign it tests.")
    status: str
    created_at: str | None = None
    completed_at: str | None = None
    counts: dict[str, int]
    recipients: list[DeliveryPublic]


@router.post("/emails", status_code=202, response_model=EmailAccepted)
def send_email(
    body: EmailCreate, tenant: TenantDep, storage: StorageDep, response: Response
) -> EmailAccepted:
    spec = body.spec()
    require_allowed_sender(tenant, spec.from_email, "from_email")
    compile_template(spec)  # a template that does not compile is a 422 now, not a skip later
    submitted = submit_email(
        storage, tenant,
        TransactionalEmail(to=body.to, template=spec.model_dump(), data=body.data,
                           idempotency_key=body.idempotency_key),
    )
    if not submitted.created:
        response.headers["Idempotent-Replayed"] = "true"
    return EmailAccepted(id=submitted.id)


@router.get("/emails/{email_id}", response_model=EmailPublic)
def get_email(email_id: str, tenant: TenantDep, storage: StorageDep) -> EmailPublic:
    entity = storage.table(JOBS).find(tenant.id, email_id)
    if entity is None:
        raise not_found("email")
    job = Job.from_entity(entity)
    if not is_transactional(job):
        raise not_found("email")
    rows = list(storage.table(DELIVERIES).query(only_delivery_rows("PartitionKey eq @pk"),
                                                {"pk": f"{job.id}-000000"}))
    return EmailPublic(
        id=job.id, kind="test" if job.test_of else "transactional", campaign_id=job.test_of or None,
        status=job.status, created_at=job.created_at or None,
        completed_at=job.completed_at or None, counts={k: v for k, v in job.counts.items() if v},
        recipients=with_timelines(storage, job, rows),
    )
