"""The Task Manager's per-host JobCache: shared reads, never a stale halt or a stale resume."""

from __future__ import annotations

import secrets

from core.models import TENANT_PARTITION, Job
from core.status import JobStatus
from core.storage import JOBS, TENANTS, Storage
from task_manager import JobCache

TEMPLATE = {"subject": "Hi", "text": "Hello", "html": "", "from_email": "news@example.org"}


def a_job(storage: Storage, status: JobStatus = JobStatus.SENDING) -> Job:
    job = Job(id=secrets.token_hex(6), tenant_id=secrets.token_hex(4), campaign_id="c1", campaign_name="n",
              template=TEMPLATE, criteria={}, status=status.value)
    storage.table(JOBS).upsert(job.to_entity())
    return job


def set_status(storage: Storage, job: Job, status: JobStatus) -> None:
    storage.table(JOBS).update({"PartitionKey": job.tenant_id, "RowKey": job.id, "status": status.value})


def test_tasks_of_one_job_on_a_host_share_one_read_within_the_check_interval(storage: Storage) -> None:
    job, cache = a_job(storage), JobCache()
    for _ in range(8):
        assert cache.job(storage, job.tenant_id, job.id, max_age=60).status == JobStatus.SENDING
    assert cache.reads == 1


def test_a_read_older_than_the_interval_is_read_again(storage: Storage) -> None:
    job, cache = a_job(storage), JobCache()
    cache.job(storage, job.tenant_id, job.id, max_age=60)
    set_status(storage, job, JobStatus.CANCELLED)
    assert cache.job(storage, job.tenant_id, job.id, max_age=0).status == JobStatus.CANCELLED
    assert cache.reads == 2


def test_a_cached_pause_is_confirmed_by_a_fresh_read_so_a_resume_is_not_undone(storage: Storage) -> None:
    job, cache = a_job(storage, JobStatus.PAUSED), JobCache()
    assert cache.job(storage, job.tenant_id, job.id, max_age=60).status == JobStatus.PAUSED
    set_status(storage, job, JobStatus.SENDING)  # resumed
    assert cache.job(storage, job.tenant_id, job.id, max_age=60).status == JobStatus.SENDING


def test_a_tenant_row_is_read_once_for_many_tasks(storage: Storage) -> None:
    tenant_id, cache = secrets.token_hex(4), JobCache()
    row = {"PartitionKey": TENANT_PARTITION, "RowKey": tenant_id, "providers": "smtp"}
    storage.table(TENANTS).upsert(row)
    assert all(cache.tenant(storage, tenant_id)["providers"] == "smtp" for _ in range(5))
    assert cache.reads == 1


def test_a_jobs_template_is_compiled_once(storage: Storage) -> None:
    job, cache = a_job(storage), JobCache()
    assert cache.template(storage, job) is cache.template(storage, job)
