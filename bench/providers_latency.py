"""Throughput under provider latency: sending must not be serial (issue 4).

Runs the real Task Manager path (claim → render → send → record, Azurite) against the
SendGrid simulator answering at once and after 100 ms, with a host's settings: one shared
``Dispatcher`` of ``SEND_CONCURRENCY`` threads, tasks taken by ``--task-workers`` at once
(the host's queue batch). The one-at-a-time figure is the same provider adapter sending
serially to the same simulator. Prints emails/s and the ratio; exits 1 when the ratio at
100 ms is below ``--min-ratio`` (the issue's 10×). ``--concurrency 8`` shows the default's cap.

    python -m bench.providers_latency [--recipients 1200] [--concurrency N]
"""

from __future__ import annotations

import argparse
import secrets
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from core.ids import new_id
from core.messages import TaskTicket
from core.models import Job, Recipient, Task
from core.retry import RetryPolicy
from core.settings import load_settings
from core.status import JobStatus
from core.storage import JOBS, TASKS, Storage
from core.suppressions import SuppressionCache
from devhost.azurite import start_azurite
from devhost.sendgrid_sim import SendGridSimulator
from devhost.stack import serve_in_thread
from providers.base import OutboundEmail
from providers.failover import FailoverSender
from providers.sendgrid import SendGridProvider
from task_manager import Dispatcher, JobCache, send_task


def serial_rate(provider: SendGridProvider, count: int) -> float:
    """Emails/s sending one at a time (the baseline the issue compares with)."""
    started = time.perf_counter()
    for i in range(count):
        email = OutboundEmail(to_email=f"s{i}@example.com", subject="s", from_email="b@example.org", text="t")
        provider.send(email)
    return count / (time.perf_counter() - started)


def seed_job(storage: Storage, settings, recipients: int) -> Job:
    """A job already split into tasks of ``TASK_SIZE`` (what the Job Manager would write)."""
    tenant_id, job_id, tag = new_id(), new_id(), secrets.token_hex(3)
    spec = {"subject": "Hello {{ contact.name }}", "text": "Hi {{ contact.name }}",
            "html": "<p>Hi {{ contact.name }}</p>", "from_email": "news@example.org"}
    step = settings.task_size
    sizes = [min(step, recipients - start) for start in range(0, recipients, step)]
    job = Job(id=job_id, tenant_id=tenant_id, campaign_id="bench", campaign_name="bench", template=spec,
              criteria={}, status=JobStatus.SENDING.value, roster_size=recipients, expanded=True,
              tasks_total=len(sizes))
    storage.table(JOBS).insert(job.to_entity())
    first = 0
    for index, size in enumerate(sizes):
        people = [Recipient(f"c{first + i:07d}", f"b{first + i}-{tag}@example.com", f"B {first + i}", {})
                  for i in range(size)]
        storage.table(TASKS).insert(Task(job_id=job_id, index=index, tenant_id=tenant_id, size=size)
                                    .to_entity(people))
        first += size
    return job


def pipeline_rate(storage: Storage, settings, provider: SendGridProvider, recipients: int,
                  task_workers: int) -> float:
    """Emails/s through send_task for one job, tasks taken ``task_workers`` at a time."""
    job = seed_job(storage, settings, recipients)
    sender = FailoverSender({"sendgrid": provider}, ["sendgrid"])
    policy = RetryPolicy(
        max_attempts=settings.max_send_attempts, budget_seconds=settings.retry_budget_seconds
    )
    dispatcher = Dispatcher(sender, policy, settings.send_concurrency)
    suppressions, jobs = SuppressionCache(storage), JobCache()
    tickets = [TaskTicket(tenant_id=job.tenant_id, job_id=job.id, task_index=i)
               for i in range(job.tasks_total)]
    started = time.perf_counter()
    with ThreadPoolExecutor(task_workers) as pool:
        list(pool.map(lambda t: send_task(storage, t, settings, dispatcher, suppressions, jobs,
                                          f"bench-{t.task_index}"), tickets))
    elapsed = time.perf_counter() - started
    sent = sum(sum(Task.from_entity(e).counts.values()) for e in storage.table(TASKS).partition(job.id))
    assert sent == recipients, f"{sent} of {recipients} recipients have an outcome"
    return recipients / elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.providers_latency", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--recipients", type=int, default=1200)
    parser.add_argument("--concurrency", type=int, default=50,
                        help="SEND_CONCURRENCY for the run (50, the default)")
    parser.add_argument("--task-workers", type=int, default=4, help="tasks in progress at once per host")
    parser.add_argument("--serial-sample", type=int, default=30)
    parser.add_argument("--min-ratio", type=float, default=10.0)
    args = parser.parse_args(argv)

    azurite = start_azurite()
    simulator = SendGridSimulator()
    try:
        with serve_in_thread(simulator.app) as url:
            overrides = {"AzureWebJobsStorage": azurite.connection_string, "TASK_SIZE": "200"}
            if args.concurrency:
                overrides["SEND_CONCURRENCY"] = str(args.concurrency)
            settings = load_settings(**overrides)
            provider = SendGridProvider("SG.bench", url)
            print(f"providers_latency: {args.recipients} recipients, "
                  f"SEND_CONCURRENCY={settings.send_concurrency}, {args.task_workers} tasks at once, "
                  f"TASK_SIZE={settings.task_size}")
            ratio_at_100 = 0.0
            for latency in (0, 100):
                simulator.set_faults({"latency_ms": latency})
                storage = Storage(settings.connection_string, namespace="b" + secrets.token_hex(4))
                storage.ensure_resources()
                serial_rate(provider, 10)  # warm up (imports, first connections)
                serial = serial_rate(provider, args.serial_sample if latency else 5 * args.serial_sample)
                rate = pipeline_rate(storage, settings, provider, args.recipients, args.task_workers)
                ratio = rate / serial
                if latency == 100:
                    ratio_at_100 = ratio
                print(f"  latency {latency:>3} ms: {rate:8.1f} emails/s through the Task Manager; "
                      f"one at a time {serial:7.1f} emails/s; ratio {ratio:5.1f}x")
            verdict = "ok" if ratio_at_100 >= args.min_ratio else "BELOW TARGET"
            print(f"  target: at 100 ms, >= {args.min_ratio:.0f}x one-at-a-time: "
                  f"{ratio_at_100:.1f}x {verdict}")
            return 0 if ratio_at_100 >= args.min_ratio else 1
    finally:
        azurite.stop()


if __name__ == "__main__":
    sys.exit(main())
