"""job-queue → Job Manager."""

import logging

import azure.functions as func
from opentelemetry.trace import SpanKind

from core import telemetry
from core.errors import BadMessage
from core.messages import JobTicket, parse_ticket
from core.storage import JOB_QUEUE
from core.telemetry import job_attributes
from functions.runtime import is_last_attempt, reject_message, runtime
from job_manager import expand_roster, fail_expansion

bp = func.Blueprint()
log = logging.getLogger("mailroom.functions")


@bp.function_name("job_manager")
@bp.queue_trigger(arg_name="msg", queue_name=JOB_QUEUE, connection="AzureWebJobsStorage")
def job_manager_queue(msg: func.QueueMessage) -> None:
    rt = runtime()
    text = msg.get_body().decode("utf-8", errors="replace")
    try:
        ticket = parse_ticket(JobTicket, text)
    except BadMessage as err:
        reject_message(rt, JOB_QUEUE, text, err)
        return
    try:
        attributes = job_attributes(ticket.tenant_id, ticket.job_id)
        with telemetry.span("job_manager.expand", attributes, ticket.traceparent, SpanKind.CONSUMER) as span:
            outcome = expand_roster(rt.storage, ticket, rt.settings, rt.owner, rt.clock)
            span.set_attribute("mailroom.outcome", str(outcome))
    except Exception as err:
        if is_last_attempt(rt, getattr(msg, "dequeue_count", None)):
            # The host moves the message to job-queue-poison next; the job must say why.
            fail_expansion(rt.storage, ticket, type(err).__name__, rt.clock)
        log.error("job ticket failed job=%s error=%s", ticket.job_id, type(err).__name__)
        raise
