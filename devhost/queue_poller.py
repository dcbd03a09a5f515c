"""Queue triggers: poll a storage queue with the Functions host's ``host.json`` semantics.

- ``batchSize`` messages are received at once and run concurrently; a new batch is fetched when
  the messages in flight drop to ``newBatchThreshold`` or below;
- an empty poll backs off exponentially from 100 ms up to ``maxPollingInterval``;
- success deletes the message; failure makes it visible again after ``visibilityTimeout``, and
  the attempt numbered ``maxDequeueCount`` sends it to ``<queue>-poison`` instead;
- a body that is not valid base64 goes to poison at once.

Messages are received *raw* (no SDK decode policy) and decoded here: with the SDK's
``TextBase64DecodePolicy`` one bad message makes the whole receive raise, and the host could
then neither invoke the others nor move the bad one. A poison copy is the original raw content,
so it reads back exactly as it was sent (``TextBase64EncodePolicy`` senders see their own text).
"""

from __future__ import annotations

import base64
import binascii
import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any

from azure.core.exceptions import ResourceExistsError
from azure.functions.queue import QueueMessage as FunctionQueueMessage
from azure.storage.queue import LinearRetry, QueueClient, QueueMessage

from devhost.hostconfig import QueueConfig
from devhost.invoke import call_user_function
from devhost.logs import describe_exception, log_event

MIN_POLL_SECONDS = 0.1


def _client(connection_string: str, queue_name: str) -> QueueClient:
    """A raw client whose retries give up within seconds (the SDK default waits minutes).

    The poller backs off on its own; a stop or an unreachable Azurite should not hang in an SDK retry.
    """
    retry = LinearRetry(backoff=1, retry_total=5, random_jitter_range=1)
    return QueueClient.from_connection_string(connection_string, queue_name, retry_policy=retry)


class UndecodableMessage(ValueError):
    """A message body is not the base64 that ``messageEncoding`` says it is."""


def decode_body(content: str | bytes | None, encoding: str) -> bytes:
    """The bytes a function receives for raw queue ``content`` under ``messageEncoding``."""
    raw = content or ""
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", errors="strict")
    if encoding == "none":
        return raw.encode("utf-8")
    try:
        return base64.b64decode(raw.strip(), validate=True)
    except (binascii.Error, ValueError) as err:
        raise UndecodableMessage("message body is not valid base64") from err


class QueuePoller:
    """Feeds one queue function from its queue until stopped."""

    def __init__(
        self,
        function_name: str,
        queue_name: str,
        connection_string: str,
        user_function: Callable[..., Any],
        arg_name: str,
        config: QueueConfig,
    ) -> None:
        self.function_name = function_name
        self.queue_name = queue_name
        self.poison_name = f"{queue_name}-poison"
        self.user_function = user_function
        self.arg_name = arg_name
        self.config = config
        self._queue = _client(connection_string, queue_name)
        self._poison = _client(connection_string, self.poison_name)
        self._stop = threading.Event()
        self._idle = threading.Condition()
        self._in_flight = 0
        self._thread = threading.Thread(target=self._poll, name=f"queue-{function_name}", daemon=True)

    @property
    def in_flight(self) -> int:
        """Messages being processed right now."""
        with self._idle:
            return self._in_flight

    def start(self) -> None:
        """Create the queue and its poison twin if missing, then start polling."""
        for client in (self._queue, self._poison):
            try:
                client.create_queue()
            except ResourceExistsError:
                pass
        log_event("queue.started", function=self.function_name, queue=self.queue_name,
                  batch=self.config.batch_size, threshold=self.config.new_batch_threshold)
        self._thread.start()

    def request_stop(self) -> None:
        """Stop receiving new messages without waiting (the host asks all pollers at once)."""
        self._stop.set()
        with self._idle:
            self._idle.notify_all()

    def stop(self, grace_seconds: float = 10.0) -> None:
        """Stop receiving; give in-flight messages up to ``grace_seconds`` to finish.

        A message still running after that stays invisible until its lease ends and is then
        redelivered, the same as when a real host instance goes away.
        """
        self._stop.set()
        with self._idle:
            self._idle.notify_all()
        deadline = time.monotonic() + grace_seconds
        if self._thread.is_alive():
            self._thread.join(max(0.0, deadline - time.monotonic()))
        with self._idle:
            self._idle.wait_for(lambda: self._in_flight == 0, max(0.0, deadline - time.monotonic()))
            left = self._in_flight
        if left:  # those threads still need the clients to settle their messages
            log_event("queue.abandoned", logging.WARNING, function=self.function_name, in_flight=left)
            return
        for client in (self._queue, self._poison):
            client.close()

    def _poll(self) -> None:
        delay = MIN_POLL_SECONDS
        while not self._stop.is_set():
            with self._idle:
                self._idle.wait_for(
                    lambda: self._in_flight <= self.config.new_batch_threshold or self._stop.is_set()
                )
            if self._stop.is_set():
                return
            messages = self._receive()
            if not messages:
                self._stop.wait(min(delay, self.config.max_polling_interval))
                delay = min(delay * 2, max(self.config.max_polling_interval, MIN_POLL_SECONDS))
                continue
            delay = MIN_POLL_SECONDS
            with self._idle:
                self._in_flight += len(messages)
            for message in messages:
                threading.Thread(
                    target=self._process, args=(message,), name=f"msg-{self.function_name}", daemon=True
                ).start()

    def _receive(self) -> list[QueueMessage]:
        batch = self.config.batch_size
        try:
            return list(self._queue.receive_messages(
                messages_per_page=batch, max_messages=batch,
                visibility_timeout=math.ceil(self.config.lease_seconds),
            ))
        except Exception as err:  # storage unreachable or busy: treat like an empty poll
            log_event("queue.receive_failed", logging.WARNING, queue=self.queue_name,
                      error=type(err).__name__)
            return []

    def _process(self, message: QueueMessage) -> None:
        try:
            self._handle(message)
        except Exception as err:  # storage failed while settling; the lease will bring it back
            log_event("queue.settle_failed", logging.ERROR, function=self.function_name,
                      id=message.id, **describe_exception(err))
        finally:
            with self._idle:
                self._in_flight -= 1
                self._idle.notify_all()

    def _handle(self, message: QueueMessage) -> None:
        dequeue_count = int(message.dequeue_count or 0)
        if dequeue_count > self.config.max_dequeue_count:
            # Already had its attempts (a host died mid-run each time): do not run it again.
            self._to_poison(message, reason="dequeue_count")
            return
        try:
            body = decode_body(message.content, self.config.message_encoding)
        except (UndecodableMessage, UnicodeDecodeError):
            self._to_poison(message, reason="undecodable")
            return
        started = time.monotonic()
        log_event("queue.invoke", logging.DEBUG, function=self.function_name, id=message.id,
                  dequeue_count=dequeue_count)
        try:
            argument = self._to_function_message(message, body)
            call_user_function(self.user_function, **{self.arg_name: argument})
        except Exception as err:
            log_event("queue.failed", logging.ERROR, function=self.function_name, id=message.id,
                      dequeue_count=dequeue_count, ms=_ms_since(started), **describe_exception(err))
            if dequeue_count >= self.config.max_dequeue_count:
                self._to_poison(message, reason="max_dequeue_count")
            else:
                self._queue.update_message(
                    message.id, pop_receipt=message.pop_receipt,
                    visibility_timeout=math.ceil(self.config.visibility_timeout),
                )
            return
        self._queue.delete_message(message.id, message.pop_receipt)
        log_event("queue.done", function=self.function_name, id=message.id, ms=_ms_since(started))

    def _to_function_message(self, message: QueueMessage, body: bytes) -> FunctionQueueMessage:
        """The worker's message type: ``func.QueueMessage`` plus dequeue count and times."""
        return FunctionQueueMessage(
            id=message.id, body=body, dequeue_count=message.dequeue_count,
            insertion_time=message.inserted_on, expiration_time=message.expires_on,
            time_next_visible=message.next_visible_on, pop_receipt=message.pop_receipt,
        )

    def _to_poison(self, message: QueueMessage, reason: str) -> None:
        self._poison.send_message(message.content or "")
        self._queue.delete_message(message.id, message.pop_receipt)
        log_event("queue.poisoned", logging.WARNING, function=self.function_name, id=message.id,
                  queue=self.poison_name, dequeue_count=message.dequeue_count, reason=reason)


def _ms_since(started: float) -> int:
    return round((time.monotonic() - started) * 1000)
