"""events-queue → event processor (provider events) or delivery log writer (closed jobs)."""

import logging

import azure.functions as func

from core.errors import BadMessage
from core.provider_events import DeliveryLogRequest
from core.storage import EVENTS_QUEUE
from functions.runtime import reject_message, runtime
from status_manager.delivery_logs import write_delivery_log
from status_manager.event_processor import parse_events_message, process_event_batch

bp = func.Blueprint()
log = logging.getLogger("mailroom.functions")


@bp.function_name("event_processor")
@bp.queue_trigger(arg_name="msg", queue_name=EVENTS_QUEUE, connection="AzureWebJobsStorage")
def event_processor_queue(msg: func.QueueMessage) -> None:
    rt = runtime()
    text = msg.get_body().decode("utf-8", errors="replace")
    try:
        message = parse_events_message(text)
    except BadMessage as err:
        reject_message(rt, EVENTS_QUEUE, text, err)
        return
    if isinstance(message, DeliveryLogRequest):
        write_delivery_log(rt.storage, message.tenant_id, message.job_id, rt.clock)
        return
    process_event_batch(rt.storage, message, rt.settings, rt.clock)
