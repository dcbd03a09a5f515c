"""task-queue → Task Manager."""

import logging

import azure.functions as func
from opentelemetry.trace import SpanKind

from core import telemetry
from core.errors import BadMessage
from core.messages import TaskTicket, parse_ticket
from core.storage import TASK_QUEUE
from core.telemetry import job_attributes
from functions.runtime import is_last_attempt, reject_message, runtime
from task_manager import record_task_failure, send_task

bp = func.Blueprint()
log = logging.getLogger("mailroom.functions")


@bp.function_name("task_manager")
@bp.queue_trigger(arg_name="msg", queue_name=TASK_QUEUE, connection="AzureWebJobsStorage")
def task_manager_queue(msg: func.QueueMessage) -> None:
    rt = runtime()
    text = msg.get_body().decode("utf-8", errors="replace")
    try:
        ticket = parse_ticket(TaskTicket, text)
    except BadMessage as err:
        reject_message(rt, TASK_QUEUE, text, err)
        return
    try:
        attributes = job_attributes(ticket.tenant_id, ticket.job_id, **{"mailroom.task": ticket.task_index})
        with telemetry.span("task_manager.send", attributes, ticket.traceparent, SpanKind.CONSUMER) as span:
            outcome = send_task(rt.storage, ticket, rt.settings, rt.dispatcher, rt.suppressions, rt.jobs,
                                rt.owner, rt.clock)
            span.set_attribute("mailroom.outcome", str(outcome))
    except Exception as err:
        reason = f"{type(err).__name__} on attempt {getattr(msg, 'dequeue_count', None) or 1}"
        log.error("task failed job=%s task=%d error=%s", ticket.job_id, ticket.task_index, type(err).__name__)
        if is_last_attempt(rt, getattr(msg, "dequeue_count", None)):
            # The host moves the message to task-queue-poison next: account for its recipients.
            record_task_failure(rt.storage, ticket, rt.settings, reason, rt.clock)
        raise
