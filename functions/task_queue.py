"""task-queue → Task Manager."""

import logging

import azure.functions as func

from core.errors import BadMessage
from core.messages import TaskTicket, parse_ticket
from core.storage import TASK_QUEUE
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
        send_task(
            rt.storage, ticket, rt.settings, rt.dispatcher, rt.suppressions, rt.templates, rt.owner, rt.clock
        )
    except Exception as err:
        reason = f"{type(err).__name__} on attempt {getattr(msg, 'dequeue_count', None) or 1}"
        log.error("task failed job=%s task=%d error=%s", ticket.job_id, ticket.task_index, type(err).__name__)
        if is_last_attempt(rt, getattr(msg, "dequeue_count", None)):
            # The host moves the message to task-queue-poison next: account for its recipients.
            record_task_failure(rt.storage, ticket, rt.settings, reason, rt.clock)
        raise
