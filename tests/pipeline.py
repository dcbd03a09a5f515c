"""Drive the four managers in-process against real storage, the way a host would.

Integration tests use this to run a whole campaign without host processes: each round
runs the Campaign Manager, drains job-queue and task-queue once, then the Status Manager.
The end-to-end tests run the same managers through devhost instead.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from campaign_manager import start_due_campaigns
from core.clock import Clock, iso, utcnow
from core.contact_tables import ContactTables
from core.ids import contact_id_for, contact_salt, new_id, normalize_email
from core.messages import JobTicket, TaskTicket
from core.models import SCHEDULE_PARTITION, Campaign, Job, Tenant, schedule_key
from core.retry import RetryPolicy
from core.settings import Settings
from core.status import CampaignStatus, zero_counts
from core.storage import CAMPAIGNS, JOB_QUEUE, JOBS, SCHEDULE, TASK_QUEUE, TENANTS, Storage
from core.suppressions import SuppressionCache
from job_manager import expand_roster
from providers.base import EmailProvider, OutboundEmail, SendResult
from providers.sendgrid import SendGridProvider
from status_manager import close_finished_jobs
from task_manager import Dispatcher, JobCache, send_task

TEMPLATE = {
    "subject": "Hello {{ contact.name }}",
    "html": "<p>Hi {{ contact.name }}</p>",
    "text": "Hi {{ contact.name }}",
    "from_email": "news@example.org",
    "from_name": "News",
}


def make_tenant(storage: Storage) -> Tenant:
    tenant = Tenant(
        id=new_id(), name="Test tenant", contact_salt=contact_salt(), created_at=iso(datetime.now(UTC))
    )
    storage.table(TENANTS).insert(tenant.to_entity())
    return tenant


def add_contacts(storage: Storage, tenant: Tenant, rows: list[dict[str, Any]]) -> list[str]:
    """Write contacts directly (the API's import is tested on its own)."""
    ids, entities = [], []
    for row in rows:
        email = normalize_email(row["email"])
        cid = contact_id_for(tenant.contact_salt, email)
        ids.append(cid)
        entities.append(
            {
                "PartitionKey": tenant.id,
                "RowKey": cid,
                "email": email,
                "name": row.get("name", ""),
                "attributes": json.dumps(row.get("attributes", {})),
                "lists": json.dumps(row.get("lists", [])),
                "state": "active",
            }
        )
    ContactTables(storage).batch_upsert(entities)
    return ids


def schedule_campaign(
    storage: Storage,
    tenant: Tenant,
    criteria: dict[str, Any] | None = None,
    template: dict[str, Any] | None = None,
) -> Campaign:
    now = iso(datetime.now(UTC))
    campaign = Campaign(
        id=new_id(),
        tenant_id=tenant.id,
        name="Test campaign",
        template=template or TEMPLATE,
        criteria=criteria or {},
        status=CampaignStatus.SCHEDULED.value,
        send_at=now,
        schedule_key=schedule_key(now, tenant.id, ""),
        counts=zero_counts(),
        created_at=now,
    )
    campaign.schedule_key = schedule_key(now, tenant.id, campaign.id)
    storage.table(CAMPAIGNS).insert(campaign.to_entity())
    storage.table(SCHEDULE).insert(
        {
            "PartitionKey": SCHEDULE_PARTITION,
            "RowKey": campaign.schedule_key,
            "tenant_id": tenant.id,
            "campaign_id": campaign.id,
            "send_at": now,
        }
    )
    return campaign


@dataclass
class InProcessHost:
    """One in-process 'host': the managers plus the collaborators a real host builds."""

    storage: Storage
    settings: Settings
    provider: EmailProvider
    owner: str = "test-host"
    handled: list[str] = field(default_factory=list)
    clock: Clock = utcnow  # what the Task and Status Managers take for now (a test may move it)

    def __post_init__(self) -> None:
        self.dispatcher = Dispatcher(self.provider, RetryPolicy(max_attempts=3, base_delay=0.01), 4)
        self.suppressions = SuppressionCache(self.storage)
        self.jobs = JobCache()

    def run_round(self) -> None:
        self.expand_round()
        for message in self.storage.queue(TASK_QUEUE).receive(32, visibility_timeout=60):
            self.send(TaskTicket.model_validate_json(message.content))
            self.storage.queue(TASK_QUEUE).delete(message)
            self.handled.append("task")
        close_finished_jobs(self.storage, self.settings, self.clock)

    def expand_round(self) -> None:
        """Campaign Manager, then every job ticket on the queue."""
        start_due_campaigns(self.storage)
        for message in self.storage.queue(JOB_QUEUE).receive(32, visibility_timeout=60):
            expand_roster(
                self.storage, JobTicket.model_validate_json(message.content), self.settings, self.owner
            )
            self.storage.queue(JOB_QUEUE).delete(message)
            self.handled.append("job")

    def send(self, ticket: TaskTicket) -> object:
        return send_task(
            self.storage,
            ticket,
            self.settings,
            self.dispatcher,
            self.suppressions,
            self.jobs,
            self.owner,
            self.clock,
        )

    def run_until(self, done: Callable[[], bool], timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                raise AssertionError(f"pipeline did not finish within {timeout}s")
            self.run_round()


def sendgrid_host(
    storage: Storage, settings: Settings, url: str, task_size: int, task_window: int
) -> InProcessHost:
    """An in-process host sending through the SendGrid simulator at ``url``, with small tasks."""
    sized = settings.model_copy(update={"task_size": task_size, "task_window": task_window})
    return InProcessHost(storage, sized, SendGridProvider("SG.test", url))


def job_of(storage: Storage, campaign: Campaign) -> Job | None:
    entity = storage.table(CAMPAIGNS).get(campaign.tenant_id, campaign.id)
    job_id = entity.get("current_job_id")
    if not job_id:
        return None
    return Job.from_entity(storage.table(JOBS).get(campaign.tenant_id, job_id))


def expanded_job(storage: Storage, expander: InProcessHost, n: int) -> tuple[Job, TaskTicket]:
    """A new tenant's campaign to ``n`` contacts, expanded; the ticket of its first task."""
    tenant = make_tenant(storage)
    add_contacts(storage, tenant, [{"email": f"t{i:04d}-{secrets.token_hex(2)}@x.org"} for i in range(n)])
    campaign = schedule_campaign(storage, tenant)
    while (job := job_of(storage, campaign)) is None or not job.expanded:
        expander.expand_round()
    return job, TaskTicket(tenant_id=tenant.id, job_id=job.id, task_index=0)


class HostDies(BaseException):
    """A ``kill -9``: not an Exception, so nothing on the way out cleans up."""


class DiesAfter:
    """The real SendGrid provider; the host 'dies' while handing over send number ``sends + 1``."""

    name = "sendgrid"

    def __init__(self, inner: SendGridProvider, sends: int) -> None:
        self.inner, self.left = inner, sends

    def send(self, email: OutboundEmail) -> SendResult:
        if self.left == 0:
            raise HostDies()
        self.left -= 1
        return self.inner.send(email)

    def close(self) -> None:
        self.inner.close()
