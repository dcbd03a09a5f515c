"""The events-queue function called with hand-built queue messages."""

from __future__ import annotations

from collections.abc import Iterator

import azure.functions as func
import pytest

from core.provider_events import DeliveryLogRequest, EventBatch
from core.storage import EVENTS_QUEUE, Storage
from functions import runtime as rt_module
from functions.events_queue import event_processor_queue
from status_manager.event_processor import orphan_count


@pytest.fixture
def runtime(storage: Storage, settings) -> Iterator[rt_module.Runtime]:
    value = rt_module.build_runtime(settings, storage)
    rt_module.configure(value)
    yield value
    rt_module.configure(None)


def message(body: str) -> func.QueueMessage:
    from azure.functions.queue import QueueMessage

    return QueueMessage(id="m1", body=body.encode(), dequeue_count=1)


def test_an_events_message_is_processed_and_unmatched_events_are_retried_not_raised(runtime, storage):
    event = {"event": "delivered", "timestamp": 1_700_000_000, "sg_event_id": "x", "sg_message_id": "unknown"}
    event_processor_queue(message(EventBatch(events=[event]).model_dump_json()))
    assert storage.queue(EVENTS_QUEUE).depth() == 1  # re-queued with a visibility delay
    assert storage.poison(EVENTS_QUEUE).peek() == []


def test_a_delivery_log_request_for_a_missing_job_is_harmless(runtime, storage):
    event_processor_queue(message(DeliveryLogRequest(tenant_id="t", job_id="j").model_dump_json()))
    assert orphan_count(storage, "2000-01-01") == 0


def test_a_malformed_events_message_goes_straight_to_events_queue_poison(runtime, storage):
    event_processor_queue(message('{"kind": "events", "events": "not a list"}'))
    assert storage.poison(EVENTS_QUEUE).peek() == ['{"kind": "events", "events": "not a list"}']
