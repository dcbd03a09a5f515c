"""A campaign's test send (``POST /campaigns/{id}/test``): a few addresses, outside any campaign job.

It is sent exactly as a transactional email is (a one-task job on ``task-queue``, see
``job_manager.transactional``), so it gets the same claim, suppression check, retries,
failover and delivery row, and ``GET /emails/{id}`` shows it. What makes it a test:

- the job names the campaign in ``test_of`` but not in ``campaign_id``, so the Status Manager
  never touches the campaign (its status, counts and jobs list stay as they were);
- the subject is the campaign's with ``[Test] `` in front; the body, headers and the signed
  one-click unsubscribe link are built like a real send's (the link names the campaign);
- each address is rendered with the tenant's contact of that address when there is one, so a
  tenant sees what that person would get, else as "Test Recipient" with no attributes;
- a suppressed address is not sent to: it ends ``suppressed``, as it would in the campaign.
"""

from __future__ import annotations

import logging

from core.clock import Clock, iso, utcnow
from core.contact_tables import ContactTables
from core.errors import FieldProblem, InvalidInput
from core.ids import contact_id_for, new_id, normalize_email
from core.models import Campaign, Contact, Job, Recipient, Tenant
from core.status import JobStatus
from core.storage import Storage
from core.templates import MAX_SUBJECT_CHARS
from job_manager.transactional import queue_one_task_job

log = logging.getLogger("mailroom.test_send")

MAX_TEST_RECIPIENTS = 5
TEST_SUBJECT_PREFIX = "[Test] "
SAMPLE_NAME = "Test Recipient"


def send_test(
    storage: Storage, tenant: Tenant, campaign: Campaign, to: list[str], clock: Clock = utcnow
) -> str:
    """Queue the campaign's message to ``to`` (validated addresses, ≤5); returns the email id."""
    now = iso(clock())
    addresses = list(dict.fromkeys(normalize_email(a) for a in to))
    recipients = [recipient_for_test(storage, tenant, address) for address in addresses]
    job = Job(
        id=new_id(), tenant_id=tenant.id, campaign_id="", campaign_name=campaign.name,
        template=mark_subject_as_test(campaign.template), criteria={}, status=JobStatus.SENDING.value,
        roster_size=len(recipients), expanded=True, tasks_total=1, test_of=campaign.id,
        created_at=now, started_at=now, expanded_at=now, progress_at=now,
    )
    queue_one_task_job(storage, job, recipients, clock)
    log.info("test send queued tenant=%s campaign=%s id=%s recipients=%d",
             tenant.id, campaign.id, job.id, len(recipients))
    return job.id


def mark_subject_as_test(template: dict[str, object]) -> dict[str, object]:
    """The campaign's template with its subject marked as a test."""
    subject = TEST_SUBJECT_PREFIX + str(template.get("subject", ""))
    if len(subject) > MAX_SUBJECT_CHARS:
        room = MAX_SUBJECT_CHARS - len(TEST_SUBJECT_PREFIX)
        raise InvalidInput("the subject is too long to be marked as a test",
                           [FieldProblem("template.subject", f"at most {room} characters for a test send")])
    return {**template, "subject": subject}


def recipient_for_test(storage: Storage, tenant: Tenant, address: str) -> Recipient:
    """The tenant's contact with this address as the campaign would render it, else sample data."""
    contact_id = contact_id_for(tenant.contact_salt, address)
    entity = ContactTables(storage).find(tenant.id, contact_id)
    if entity is None:
        return Recipient(contact_id, address, SAMPLE_NAME, {})
    contact = Contact.from_entity(entity)
    return Recipient(contact_id, address, contact.name, contact.attributes)
