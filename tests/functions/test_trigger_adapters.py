"""The decorated functions called as plain callables with hand-built trigger objects."""

from __future__ import annotations

import ast
import json
from collections.abc import Iterator
from pathlib import Path

import azure.functions as func
import pytest
from pydantic import ValidationError

from core.messages import JobTicket, TaskTicket
from core.models import Job
from core.storage import JOB_QUEUE, JOBS, TASK_QUEUE, Storage
from functions import runtime as rt_module
from functions.campaign_timer import campaign_manager_timer
from functions.job_queue import job_manager_queue
from functions.status_timer import status_manager_timer
from functions.task_queue import task_manager_queue
from tests.pipeline import add_contacts, make_tenant, schedule_campaign
from tests.sim_fixtures import running_sendgrid_simulator

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def runtime(storage: Storage, settings) -> Iterator[rt_module.Runtime]:
    with running_sendgrid_simulator() as (_, url):
        configured = settings.model_copy(update={"sendgrid_api_url": url, "sendgrid_api_key": "SG.x"})
        value = rt_module.build_runtime(configured, storage)
        rt_module.configure(value)
        yield value
        rt_module.configure(None)


def timer() -> func.TimerRequest:
    from azure.functions.timer import TimerRequest

    return TimerRequest(past_due=False)


def message(body: str, dequeue_count: int = 1) -> func.QueueMessage:
    from azure.functions.queue import QueueMessage

    return QueueMessage(id="m1", body=body.encode(), dequeue_count=dequeue_count)


def test_a_due_campaign_becomes_a_job_ticket_on_the_timer(runtime, storage):
    tenant = make_tenant(storage)
    campaign = schedule_campaign(storage, tenant)
    campaign_manager_timer(timer())
    tickets = [JobTicket.model_validate_json(t) for t in storage.queue(JOB_QUEUE).peek()]
    assert [t.tenant_id for t in tickets] == [tenant.id]
    job = Job.from_entity(storage.table(JOBS).get(tenant.id, tickets[0].job_id))
    assert job.campaign_id == campaign.id


def test_a_malformed_job_ticket_goes_straight_to_job_queue_poison(runtime, storage):
    job_manager_queue(message("{not json"))
    assert storage.poison(JOB_QUEUE).peek() == ["{not json"]


def test_a_bad_task_ticket_naming_a_job_lands_in_poison_and_the_job_shows_why(runtime, storage):
    tenant = make_tenant(storage)
    schedule_campaign(storage, tenant)
    campaign_manager_timer(timer())
    ticket = JobTicket.model_validate_json(storage.queue(JOB_QUEUE).peek()[0])
    body = json.dumps({"tenant_id": tenant.id, "job_id": ticket.job_id, "task_index": -1})
    task_manager_queue(message(body))
    assert storage.poison(TASK_QUEUE).peek() == [body]
    job = Job.from_entity(storage.table(JOBS).get(tenant.id, ticket.job_id))
    assert "task_index" in job.last_error


def test_a_task_failing_on_its_last_delivery_accounts_for_every_recipient(runtime, storage):
    tenant = make_tenant(storage)
    add_contacts(storage, tenant, [{"email": f"x{i}@example.com"} for i in range(7)])
    schedule_campaign(storage, tenant)
    campaign_manager_timer(timer())
    job_ticket = storage.queue(JOB_QUEUE).receive(1)[0]
    job_manager_queue(message(job_ticket.content))
    ticket = JobTicket.model_validate_json(job_ticket.content)
    # Corrupt the job's template so every attempt at the task raises.
    storage.table(JOBS).update({"PartitionKey": tenant.id, "RowKey": ticket.job_id, "template": "{}"})
    body = TaskTicket(tenant_id=tenant.id, job_id=ticket.job_id, task_index=0).to_text()

    with pytest.raises(ValidationError):
        task_manager_queue(message(body, dequeue_count=1))
    with pytest.raises(ValidationError):
        task_manager_queue(message(body, dequeue_count=runtime.max_dequeue_count))
    status_manager_timer(timer())

    job = Job.from_entity(storage.table(JOBS).get(tenant.id, ticket.job_id))
    assert job.status == "completed"
    assert job.counts["failed"] == 7 == sum(job.counts.values())
    assert "task-queue-poison" in job.last_error


MANAGERS = ["campaign_manager", "job_manager", "task_manager", "status_manager", "core", "providers", "api"]


@pytest.mark.parametrize("package", MANAGERS)
def test_managers_and_core_never_import_azure_functions(package):
    for path in (ROOT / package).rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            assert not any(n == "azure.functions" or n.startswith("azure.functions.") for n in names), path
