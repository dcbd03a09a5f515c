"""Invariants 1 and 2 under crashes, as a property: whatever crashes happen and wherever,
every recipient ends in exactly one terminal status and nobody is handed over twice."""

from __future__ import annotations

import json
from collections import Counter
from datetime import timedelta

from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from core.clock import utcnow
from core.errors import TransientSendError
from core.in_flight import only_delivery_rows
from core.messages import TaskTicket
from core.retry import RetryPolicy
from core.status import DeliveryStatus, TaskStatus
from core.storage import DELIVERIES, TASKS
from core.suppressions import SuppressionCache
from providers.base import OutboundEmail, SendResult
from providers.sendgrid import SendGridProvider
from task_manager import Dispatcher, JobCache, send_task
from tests.pipeline import InProcessHost, add_contacts, job_of, make_tenant, schedule_campaign
from tests.sim_fixtures import running_sendgrid_simulator


class Crash(BaseException):
    """A host dying: not an Exception, so nothing on the way out cleans up."""


class CrashAfter:
    """Wraps the real SendGrid provider; the process 'dies' after ``sends`` hand-offs."""

    name = "sendgrid"

    def __init__(self, inner: SendGridProvider, sends: int | None) -> None:
        self.inner, self.left = inner, sends

    def send(self, email: OutboundEmail) -> SendResult:
        if self.left is not None:
            if self.left == 0:
                raise Crash()
            self.left -= 1
        return self.inner.send(email)

    def close(self) -> None:
        self.inner.close()


@hsettings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(size=st.integers(1, 250), crashes=st.lists(st.integers(0, 260), max_size=3))
def test_crashes_anywhere_never_send_twice_and_account_for_everyone(storage, settings, size, crashes):
    with running_sendgrid_simulator() as (sim, url):
        one_task = settings.model_copy(update={"task_size": 250, "task_window": 1})
        provider = SendGridProvider("SG.test", url)
        host = InProcessHost(storage, one_task, provider)
        tenant = make_tenant(storage)
        add_contacts(storage, tenant, [{"email": f"r{i}@example.com"} for i in range(size)])
        campaign = schedule_campaign(storage, tenant)
        while (job := job_of(storage, campaign)) is None or not job.expanded:
            host.expand_round()
        ticket = TaskTicket(tenant_id=tenant.id, job_id=job.id, task_index=0)
        offset = [timedelta(0)]

        def clock():
            return utcnow() + offset[0]

        for sends in [*crashes, None]:
            dispatcher = Dispatcher(CrashAfter(provider, sends), RetryPolicy(max_attempts=1), 1)
            try:
                send_task(
                    storage,
                    ticket,
                    one_task,
                    dispatcher,
                    SuppressionCache(storage),
                    JobCache(),
                    owner=f"host-{sends}",
                    clock=clock,
                )
            except Crash:
                pass
            offset[0] += timedelta(seconds=one_task.lease_seconds + 1)  # the dead host's lease expires

        rows = list(storage.table(DELIVERIES).query(only_delivery_rows("PartitionKey eq @pk"),
                                                    {"pk": f"{job.id}-000000"}))
        statuses = Counter(r["status"] for r in rows)
        handed = Counter(m["to"] for m in sim.messages())
        task = storage.table(TASKS).get(job.id, "000000")
        assert task["status"] == TaskStatus.DONE
        assert len(rows) == size and sum(statuses.values()) == size
        assert set(statuses) <= {DeliveryStatus.SENT, DeliveryStatus.UNKNOWN}
        assert not handed or max(handed.values()) == 1
        if crashes and crashes[0] < size:
            assert statuses[DeliveryStatus.UNKNOWN] > 0, "the first crash left a chunk in flight"
        sent_rows = {r["email"] for r in rows if r["status"] == DeliveryStatus.SENT}
        assert sent_rows <= set(handed)


class Flaky:
    """The real provider, but some calls fail transiently *before* anything is sent, and the
    process may 'die' after ``sends`` calls: re-queues and crashes interleave."""

    name = "sendgrid"

    def __init__(
        self, inner: SendGridProvider, failing_calls: set[int], sends: int | None, counter: list[int]
    ) -> None:
        self.inner, self.failing, self.left, self.counter = inner, failing_calls, sends, counter

    def send(self, email: OutboundEmail) -> SendResult:
        if self.left is not None:
            if self.left == 0:
                raise Crash()
            self.left -= 1
        self.counter[0] += 1
        if self.counter[0] in self.failing:
            raise TransientSendError("injected 503", provider="sendgrid", code="503")
        return self.inner.send(email)

    def close(self) -> None:
        self.inner.close()


@hsettings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    size=st.integers(1, 150),
    failing=st.sets(st.integers(1, 400), max_size=120),
    crashes=st.lists(st.integers(0, 200), max_size=2),
)
def test_requeues_and_crashes_together_never_send_twice_and_account_for_everyone(
    storage, settings, size, failing, crashes
):
    with running_sendgrid_simulator() as (sim, url):
        one_task = settings.model_copy(
            update={"task_size": 150, "task_window": 1, "retry_budget_seconds": 0.01}
        )
        provider = SendGridProvider("SG.test", url)
        host = InProcessHost(storage, one_task, provider)
        tenant = make_tenant(storage)
        add_contacts(storage, tenant, [{"email": f"q{i}@example.com"} for i in range(size)])
        campaign = schedule_campaign(storage, tenant)
        while (job := job_of(storage, campaign)) is None or not job.expanded:
            host.expand_round()
        ticket = TaskTicket(tenant_id=tenant.id, job_id=job.id, task_index=0)
        offset = [timedelta(0)]
        counter = [0]
        policy = RetryPolicy(max_attempts=3, base_delay=0.01, budget_seconds=0.01)

        def clock():
            return utcnow() + offset[0]

        plan: list[int | None] = [*crashes]
        for _ in range(12):
            sends = plan.pop(0) if plan else None
            dispatcher = Dispatcher(Flaky(provider, failing, sends, counter), policy, 2)
            try:
                send_task(storage, ticket, one_task, dispatcher, SuppressionCache(storage), JobCache(),
                          owner=f"host-{sends}", clock=clock)
            except Crash:
                pass
            offset[0] += timedelta(seconds=one_task.lease_seconds + 1)  # leases and retry delays pass
            if TaskStatus(storage.table(TASKS).get(job.id, "000000")["status"]).is_terminal:
                break

        rows = list(storage.table(DELIVERIES).query(only_delivery_rows("PartitionKey eq @pk"),
                                                    {"pk": f"{job.id}-000000"}))
        statuses = Counter(r["status"] for r in rows)
        handed = Counter(m["to"] for m in sim.messages())
        task = storage.table(TASKS).get(job.id, "000000")
        assert task["status"] == TaskStatus.DONE
        assert len(rows) == size and sum(json.loads(task["counts"]).values()) == size
        assert set(statuses) <= {DeliveryStatus.SENT, DeliveryStatus.UNKNOWN, DeliveryStatus.FAILED}
        assert not handed or max(handed.values()) == 1
        assert all(int(r["attempts"]) == 3 for r in rows if r["status"] == DeliveryStatus.FAILED)
        sent_rows = {r["email"] for r in rows if r["status"] == DeliveryStatus.SENT}
        assert sent_rows <= set(handed)
