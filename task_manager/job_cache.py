"""What one host's tasks share about their jobs, so eight tasks of a job cost one read, not eight.

A host runs several tasks of the same job at once, and each used to read the job row at every
chunk boundary (to notice a pause or a cancel, at most once a second) and the tenant row for its
route: the bench counted those reads as the largest share of storage requests per email.
Shared here, per host process:

- the compiled template, per job (a job's template never changes once the job exists), read
  from its blob once per host when it is too large for the job row;
- the job row: each task reads it fresh when it starts, and its checks at chunk boundaries take
  the host's latest copy if it is younger than ``JOB_STATUS_CHECK_SECONDS``. Only "keep
  sending" is decided on a cached row: a row that says paused, cancelled or failed is read
  again before a task acts on it, so a resume is never undone by a stale copy;
- a batched job's skeleton (its bodies rendered once with placeholders, ``batch_send.py``);
- the tenant's route settings (providers, send rate, delivery semantics), re-read after
  ``TENANT_CACHE_SECONDS``: a change to them reaches running jobs within that time.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Any, Generic, TypeVar

from core.models import TENANT_PARTITION, Job
from core.status import JobStatus
from core.storage import JOBS, TENANTS, Storage
from core.template_store import load_template
from core.templates import CompiledTemplate, Skeleton, TemplateSpec, compile_template, render_skeleton

HALTING = frozenset({JobStatus.PAUSED, JobStatus.CANCELLED, JobStatus.FAILED})
TENANT_CACHE_SECONDS = 30.0

V = TypeVar("V")


class _Recent(Generic[V]):
    """A bounded map of values with the monotonic time each was read."""

    def __init__(self, size: int) -> None:
        self._items: OrderedDict[str, tuple[float, V]] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def get(self, key: str, max_age: float) -> V | None:
        with self._lock:
            item = self._items.get(key)
        if item is None or time.monotonic() - item[0] >= max_age:
            return None
        return item[1]

    def put(self, key: str, value: V) -> V:
        with self._lock:
            self._items[key] = (time.monotonic(), value)
            self._items.move_to_end(key)
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        return value


class JobCache:
    """Templates, job rows and tenant routes for the tasks of one host process."""

    def __init__(self, size: int = 64, tenant_seconds: float = TENANT_CACHE_SECONDS) -> None:
        self._templates: _Recent[CompiledTemplate] = _Recent(size)
        self._skeletons: _Recent[Skeleton] = _Recent(size)
        self._jobs: _Recent[Job] = _Recent(size)
        self._tenants: _Recent[dict[str, Any]] = _Recent(size)
        self._tenant_seconds = tenant_seconds
        self.reads = 0  # storage reads this cache made (tests count them)

    def template(self, storage: Storage, job: Job) -> CompiledTemplate:
        """The job's compiled template; a blob is read once per host (blobs never change content,
        so the jobs of one campaign version share one read)."""
        key = job.template_ref or job.id
        compiled = self._templates.get(key, float("inf"))
        if compiled is None:
            if job.template_ref:
                self.reads += 1
            template = load_template(storage, job.template, job.template_ref)
            compiled = compile_template(TemplateSpec.model_validate(template))
            self._templates.put(key, compiled)
        return compiled

    def skeleton(self, job: Job, template: CompiledTemplate) -> Skeleton:
        """A batched job's bodies with placeholders (``core.templates.render_skeleton``), rendered
        once per job on this host."""
        skeleton = self._skeletons.get(job.id, float("inf"))
        if skeleton is None:
            skeleton = self._skeletons.put(job.id, render_skeleton(template.spec, job.campaign_name))
        return skeleton

    def job(self, storage: Storage, tenant_id: str, job_id: str, max_age: float) -> Job:
        """The job row, at most ``max_age`` seconds old; a halting status is always fresh."""
        key = f"{tenant_id}/{job_id}"
        cached = self._jobs.get(key, max_age)
        if cached is not None and cached.status not in HALTING:
            return cached
        self.reads += 1
        return self._jobs.put(key, Job.from_entity(storage.table(JOBS).get(tenant_id, job_id)))

    def tenant(self, storage: Storage, tenant_id: str) -> dict[str, Any]:
        """The tenant row (``{}`` if it is gone), at most ``tenant_seconds`` (default 30 s) old."""
        cached = self._tenants.get(tenant_id, self._tenant_seconds)
        if cached is None:
            self.reads += 1
            cached = storage.table(TENANTS).find(TENANT_PARTITION, tenant_id) or {}
            self._tenants.put(tenant_id, cached)
        return cached
