"""devhost behaves like the Functions host: queue and timer semantics against a real Azurite.

Each test builds a throwaway function app on its own queue, runs it in a ``FunctionHost`` and
polls storage (or what the function recorded) with a deadline.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import azure.functions as func
import pytest
from azure.storage.queue import QueueClient, TextBase64DecodePolicy, TextBase64EncodePolicy
from fastapi import FastAPI

from devhost.azurite import AzuriteHandle, ensure_azurite, start_azurite
from devhost.host import FunctionHost, run_host
from devhost.hostconfig import QueueConfig, expand_app_settings, load_queue_config, parse_timespan

DEADLINE_SECONDS = 20.0

# host.json-shaped, tuned so retries happen at once: two attempts, then poison.
FAST_QUEUES = QueueConfig.from_host_json({
    "functionTimeout": "00:00:30",
    "extensions": {"queues": {
        "batchSize": 4, "newBatchThreshold": 2, "maxPollingInterval": "00:00:00.2",
        "visibilityTimeout": "00:00:00", "maxDequeueCount": 2, "messageEncoding": "base64",
    }},
})


class Recorder:
    """What a test function saw, safe to write from the host's worker threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.items: list[Any] = []
        self.active = 0
        self.max_active = 0

    def add(self, item: Any) -> None:
        with self._lock:
            self.items.append(item)

    def enter(self) -> None:
        with self._lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)

    def leave(self) -> None:
        with self._lock:
            self.active -= 1

    def snapshot(self) -> list[Any]:
        with self._lock:
            return list(self.items)


def wait_for(condition: Callable[[], bool], what: str, timeout: float = DEADLINE_SECONDS) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def unique_queue() -> str:
    return f"devhost-{uuid.uuid4().hex[:12]}"


def text_client(conn: str, queue: str) -> QueueClient:
    """How Mailroom (and the Functions host) writes and reads messages: base64 text."""
    return QueueClient.from_connection_string(
        conn, queue, message_encode_policy=TextBase64EncodePolicy(),
        message_decode_policy=TextBase64DecodePolicy(),
    )


def raw_client(conn: str, queue: str) -> QueueClient:
    return QueueClient.from_connection_string(conn, queue)


def message_count(conn: str, queue: str) -> int:
    """Messages in a queue, visible or not (so a leased message still counts)."""
    return raw_client(conn, queue).get_queue_properties().approximate_message_count


def queue_app(queue: str, handler: Callable[[func.QueueMessage], Any]) -> func.FunctionApp:
    app = func.FunctionApp()

    @app.queue_trigger(arg_name="msg", queue_name=queue, connection="AzureWebJobsStorage")
    def consume(msg: func.QueueMessage) -> None:
        handler(msg)

    return app


def timer_app(schedule: str, handler: Callable[[func.TimerRequest], None],
              run_on_startup: bool = False) -> func.FunctionApp:
    app = func.FunctionApp()

    @app.timer_trigger(schedule=schedule, arg_name="timer", run_on_startup=run_on_startup)
    def tick(timer: func.TimerRequest) -> None:
        handler(timer)

    return app


@pytest.fixture(scope="module")
def azurite() -> Iterator[AzuriteHandle]:
    with start_azurite() as handle:
        yield handle


@pytest.fixture
def conn(azurite: AzuriteHandle) -> str:
    return azurite.connection_string


def queue_host(app: func.FunctionApp, conn: str, config: QueueConfig = FAST_QUEUES) -> FunctionHost:
    return FunctionHost(app, serve_http=False, run_timers=False, queue_config=config,
                        connection_string=conn, grace_seconds=5)


def test_base64_message_is_decoded_and_delivered_with_its_dequeue_count(conn: str) -> None:
    queue, seen = unique_queue(), Recorder()
    text = json.dumps({"job": "j-1", "note": "héllo"})
    with queue_host(queue_app(queue, lambda m: seen.add((m.get_body(), m.dequeue_count, m.id))), conn):
        text_client(conn, queue).send_message(text)
        wait_for(lambda: seen.snapshot(), "the message to be delivered")
        wait_for(lambda: message_count(conn, queue) == 0, "the message to be deleted")
    [(body, dequeue_count, message_id)] = seen.snapshot()
    assert body == text.encode("utf-8")
    assert dequeue_count == 1
    assert message_id


def test_failed_message_is_redelivered_with_a_higher_dequeue_count(conn: str) -> None:
    queue, seen = unique_queue(), Recorder()

    def fail_first(msg: func.QueueMessage) -> None:
        seen.add(msg.dequeue_count)
        if msg.dequeue_count == 1:
            raise RuntimeError("first attempt fails")

    with queue_host(queue_app(queue, fail_first), conn):
        text_client(conn, queue).send_message("retry me")
        wait_for(lambda: message_count(conn, queue) == 0, "the retried message to be deleted")
    assert seen.snapshot() == [1, 2]
    assert message_count(conn, f"{queue}-poison") == 0


def test_always_failing_message_goes_to_poison_after_max_dequeue_count(conn: str) -> None:
    queue, seen = unique_queue(), Recorder()

    def always_fail(msg: func.QueueMessage) -> None:
        seen.add(msg.dequeue_count)
        raise RuntimeError("never works")

    with queue_host(queue_app(queue, always_fail), conn):
        text_client(conn, queue).send_message("doomed")
        wait_for(lambda: message_count(conn, f"{queue}-poison") == 1, "the poison copy")
        wait_for(lambda: message_count(conn, queue) == 0, "the original to be deleted")
    assert seen.snapshot() == [1, 2]
    [poisoned] = text_client(conn, f"{queue}-poison").receive_messages()
    assert poisoned.content == "doomed"


def test_undecodable_message_goes_straight_to_poison(conn: str) -> None:
    queue, seen = unique_queue(), Recorder()
    with queue_host(queue_app(queue, seen.add), conn):
        raw_client(conn, queue).send_message("this is not base64!")
        wait_for(lambda: message_count(conn, f"{queue}-poison") == 1, "the poison copy")
        wait_for(lambda: message_count(conn, queue) == 0, "the original to be deleted")
    assert seen.snapshot() == []
    [poisoned] = raw_client(conn, f"{queue}-poison").receive_messages()
    assert poisoned.content == "this is not base64!"


def test_messages_in_flight_never_exceed_batch_size_plus_threshold(conn: str) -> None:
    queue, seen = unique_queue(), Recorder()
    config = QueueConfig(batch_size=2, new_batch_threshold=1, max_polling_interval=0.2,
                         visibility_timeout=0, max_dequeue_count=2, lease_seconds=30)

    def slow(msg: func.QueueMessage) -> None:
        seen.enter()
        time.sleep(0.2)
        seen.add(msg.get_body())
        seen.leave()

    sender = text_client(conn, queue)
    sender.create_queue()
    for i in range(10):
        sender.send_message(f"m{i}")
    with queue_host(queue_app(queue, slow), conn, config):
        wait_for(lambda: len(seen.snapshot()) == 10, "all ten messages")
    assert 2 <= seen.max_active <= config.max_in_flight


def test_async_queue_function_is_awaited(conn: str) -> None:
    queue, seen = unique_queue(), Recorder()
    app = func.FunctionApp()

    @app.queue_trigger(arg_name="item", queue_name=queue, connection="AzureWebJobsStorage")
    async def consume(item: func.QueueMessage) -> None:
        seen.add(item.get_body())

    with queue_host(app, conn):
        text_client(conn, queue).send_message("awaited")
        wait_for(lambda: message_count(conn, queue) == 0, "the message to be deleted")
    assert seen.snapshot() == [b"awaited"]


def test_failure_logs_carry_ids_not_bodies(conn: str, caplog: pytest.LogCaptureFixture) -> None:
    queue = unique_queue()

    def leaky(msg: func.QueueMessage) -> None:
        raise ValueError(f"bad recipient {msg.get_body().decode()}")

    with caplog.at_level(logging.INFO, logger="devhost"), queue_host(queue_app(queue, leaky), conn):
        text_client(conn, queue).send_message("alice@example.com")
        wait_for(lambda: message_count(conn, f"{queue}-poison") == 1, "the poison copy")
    assert "queue.failed" in caplog.text and "ValueError" in caplog.text
    assert "alice@example.com" not in caplog.text


def test_timer_fires_repeatedly_and_never_overlaps_itself() -> None:
    seen = Recorder()

    def slower_than_schedule(timer: func.TimerRequest) -> None:
        seen.enter()
        time.sleep(1.5)  # each run outlasts the one-second schedule
        seen.add(timer.past_due)
        seen.leave()

    with FunctionHost(timer_app("* * * * * *", slower_than_schedule), serve_http=False, run_queues=False):
        wait_for(lambda: len(seen.snapshot()) >= 2, "two timer runs", timeout=10)
    assert seen.max_active == 1


def test_failing_timer_keeps_firing() -> None:
    seen = Recorder()

    def broken(timer: func.TimerRequest) -> None:
        seen.add(1)
        raise RuntimeError("timer run fails")

    with FunctionHost(timer_app("* * * * * *", broken), serve_http=False, run_queues=False):
        wait_for(lambda: len(seen.snapshot()) >= 2, "two failing timer runs", timeout=10)


def test_run_on_startup_fires_at_once() -> None:
    seen = Recorder()
    yearly = "0 0 0 1 1 *"
    with FunctionHost(timer_app(yearly, seen.add, run_on_startup=True), serve_http=False, run_queues=False):
        wait_for(lambda: len(seen.snapshot()) == 1, "the startup run", timeout=5)


def test_schedule_app_setting_reference_is_resolved(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEVHOST_TEST_SCHEDULE", "*/10 * * * * *")
    assert expand_app_settings("%DEVHOST_TEST_SCHEDULE%") == "*/10 * * * * *"


def test_host_json_timespans_are_parsed() -> None:
    assert parse_timespan("00:00:02") == 2
    assert parse_timespan("00:10:00") == 600
    assert parse_timespan("1.00:00:00.5") == 86400.5


def test_app_settings_override_host_json_queue_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AzureFunctionsJobHost__extensions__queues__maxDequeueCount", "2")
    monkeypatch.setenv("AzureFunctionsJobHost__extensions__queues__visibilityTimeout", "00:00:01")
    config = load_queue_config()
    assert (config.max_dequeue_count, config.visibility_timeout) == (2, 1.0)


def test_ensure_azurite_reuses_one_already_listening(conn: str) -> None:
    assert ensure_azurite(conn) is None


def test_asgi_app_is_served_at_its_own_api_routes() -> None:
    api = FastAPI()

    @api.get("/api/ping")
    def ping() -> dict[str, str]:
        return {"pong": "yes"}

    app = func.AsgiFunctionApp(app=api, http_auth_level=func.AuthLevel.ANONYMOUS)
    with FunctionHost(app, run_timers=False, run_queues=False, http_port=0) as host:
        assert host.http_url is not None
        with urllib.request.urlopen(f"{host.http_url}/api/ping", timeout=5) as response:
            assert json.loads(response.read()) == {"pong": "yes"}


def test_run_host_returns_when_its_stop_event_is_set() -> None:
    stop = threading.Event()
    runner = threading.Thread(target=run_host, kwargs={
        "app": timer_app("0 0 0 1 1 *", lambda t: None), "serve_http": False,
        "run_queues": False, "stop_event": stop,
    })
    runner.start()
    stop.set()
    runner.join(10)
    assert not runner.is_alive()
