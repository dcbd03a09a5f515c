"""The collaborators each host process builds once and the trigger adapters share.

Managers take these as arguments; this module is the only place that decides how they
are built from settings, so tests can replace a piece with ``configure(...)``.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import threading
from dataclasses import dataclass

from core.clock import Clock, utcnow
from core.errors import BadMessage
from core.messages import ids_in
from core.models import Job
from core.retry import RetryPolicy
from core.settings import PROJECT_ROOT, Settings, get_settings
from core.storage import JOBS, Storage
from core.suppressions import SuppressionCache
from providers.factory import build_sender
from task_manager import Dispatcher, JobCache
from task_manager.mark_budget import MarkBudget, mark_budget_size

log = logging.getLogger("mailroom.functions")


@dataclass
class Runtime:
    settings: Settings
    storage: Storage
    dispatcher: Dispatcher
    suppressions: SuppressionCache
    jobs: JobCache
    owner: str
    clock: Clock = utcnow
    max_dequeue_count: int = 5


_lock = threading.Lock()
_runtime: Runtime | None = None


def max_dequeue_count() -> int:
    """``extensions.queues.maxDequeueCount`` from host.json (the host's default is 5)."""
    try:
        config = json.loads((PROJECT_ROOT / "host.json").read_text())
        return int(config["extensions"]["queues"].get("maxDequeueCount", 5))
    except (OSError, ValueError, KeyError):
        return 5


def build_runtime(settings: Settings, storage: Storage | None = None) -> Runtime:
    storage = storage or Storage(settings.connection_string, lean_batches=settings.storage_lean_batches)
    policy = RetryPolicy(
        max_attempts=settings.max_send_attempts, budget_seconds=settings.retry_budget_seconds
    )
    owner = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
    sender = build_sender(settings, storage, owner)  # failover, shared health and rate limits
    marks = MarkBudget(mark_budget_size(settings.send_concurrency, settings.send_group_size))
    dispatcher = Dispatcher(sender, policy, settings.send_concurrency, limiter=sender.pacer.limiter,
                            marks=marks)
    return Runtime(
        settings,
        storage,
        dispatcher,
        SuppressionCache(storage),
        JobCache(),
        owner,
        max_dequeue_count=max_dequeue_count(),
    )


def runtime() -> Runtime:
    """The process-wide runtime, built on first use (not at import: indexing must be cheap)."""
    global _runtime
    with _lock:
        if _runtime is None:
            _runtime = build_runtime(get_settings())
            _runtime.storage.ensure_resources()
        return _runtime


def configure(value: Runtime | None) -> None:
    """Install a runtime (tests) or drop the current one."""
    global _runtime
    with _lock:
        _runtime = value


def reject_message(rt: Runtime, queue_name: str, text: str, err: BadMessage) -> None:
    """A message we can never process: straight to ``<queue>-poison``, and its job says why.

    Retrying a malformed message cannot help, so it skips the host's retries.
    """
    rt.storage.poison(queue_name).send(text)
    tenant_id, job_id = ids_in(text)
    log.error("message rejected queue=%s job=%s reason=%s", queue_name, job_id or "-", err)
    if tenant_id and job_id:
        note_job_error(rt, tenant_id, job_id, f"a {queue_name} message was rejected: {err}")


def note_job_error(rt: Runtime, tenant_id: str, job_id: str, reason: str) -> None:
    """Record a failure on the job where support staff and the API see it."""
    jobs = rt.storage.table(JOBS)
    if jobs.find(tenant_id, job_id) is None:
        return
    jobs.update(Job.changes((tenant_id, job_id), last_error=reason[:1000]))


def is_last_attempt(rt: Runtime, dequeue_count: int | None) -> bool:
    return (dequeue_count or 1) >= rt.max_dequeue_count


__all__ = ["Runtime", "configure", "runtime", "reject_message", "note_job_error"]
