"""Warm-up: a warming sending domain sends its daily allowance, then the job continues the next UTC day.

The managers run in-process on Azurite and send over SMTP to the local sink; the Task and Status
Managers and the warm-up gate take a clock the test moves from one day to the next, so two
days pass in seconds (the task's real re-queue ticket, hours away, is not waited for: the
Status Manager re-enqueues a re-queued task whose time came, as it does for a lost ticket).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from api.routers.jobs import job_public
from core.clock import iso
from core.models import Job, Tenant, WarmupRow
from core.settings import Settings
from core.status import DeliveryStatus
from core.storage import DELIVERIES, WARMUP, Storage
from core.tenant_settings import update_tenant
from providers.pacing import DomainPacer, PacedSender, PacingConfig
from providers.smtp import SmtpProvider
from providers.warmup import WarmupGate
from tests.pipeline import InProcessHost, add_contacts, job_of, make_tenant, schedule_campaign
from tests.sim_fixtures import running_smtp_sink

ROSTER = 150
ALLOWANCE = 100  # a day, for two days; then the domain is warmed up


class MovableClock:
    """Real time shifted by an offset the test sets: moving to the next day is one call."""

    def __init__(self, start: datetime) -> None:
        self.move_to(start)

    def move_to(self, moment: datetime) -> None:
        self.offset = moment - datetime.now(UTC)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset


def tenant_with_contacts(storage: Storage, warmup: list[int] | str, tag: str) -> Tenant:
    tenant = make_tenant(storage)
    update_tenant(storage, tenant.id, {"warmup": warmup})
    add_contacts(storage, tenant, [{"email": f"w{i}-{tag}@example.net"} for i in range(ROSTER)])
    return tenant


def counts_add_up(job: Job | None) -> Job | None:
    if job is not None:
        assert sum(job.counts.values()) == job.roster_size, job.counts  # accounted for at every poll
    return job


def test_a_job_over_todays_warmup_allowance_sends_it_and_finishes_the_next_day_without_failing_anyone(
    storage, settings: Settings
):
    settings = settings.model_copy(update={"task_size": 50, "task_window": 6, "warmup_new_domains": True})
    warming = tenant_with_contacts(storage, [ALLOWANCE, ALLOWANCE], "a")
    established = tenant_with_contacts(storage, "off", "b")
    day1 = datetime.now(UTC).replace(hour=10, minute=0, second=0, microsecond=0)
    day2 = day1.replace(hour=0) + timedelta(days=1)
    clock = MovableClock(day1)

    with running_smtp_sink() as sink:
        pacer = DomainPacer(storage, PacingConfig.from_settings(settings))
        gate = WarmupGate(storage, settings, clock)
        sender = PacedSender(SmtpProvider("127.0.0.1", sink.port), pacer, gate)
        host = InProcessHost(storage, settings, sender, clock=clock)
        slow, other = schedule_campaign(storage, warming), schedule_campaign(storage, established)

        def sent_to(tag: str) -> int:
            return sum(1 for m in sink.messages() if m.rcpt_tos[0].endswith(f"-{tag}@example.net"))

        # Day 1: the warming tenant's job sends its allowance and waits; the other tenant finishes.
        deadline = time.monotonic() + 120
        while True:
            assert time.monotonic() < deadline, "day 1 did not settle"
            host.run_round()
            job, neighbour = counts_add_up(job_of(storage, slow)), counts_add_up(job_of(storage, other))
            if (job is not None and job.waiting_until and job.counts["sent"] == ALLOWANCE
                    and neighbour is not None and neighbour.status == "completed"):
                break
        for _ in range(3):  # it stays stopped for the rest of the day
            host.run_round()
            counts_add_up(job_of(storage, slow))
        day1_sent = sent_to("a")
        job = job_of(storage, slow)
        assert job is not None
        shown = job_public(job, clock())
        rows = list(storage.table(DELIVERIES).query("status eq @s", {"s": "retrying"}))

        # Day 2 (just after midnight, past the Status Manager's grace for a re-queued task).
        clock.move_to(day2 + timedelta(minutes=2))
        deadline = time.monotonic() + 120
        while (job := counts_add_up(job_of(storage, slow))) is None or job.status != "completed":
            assert time.monotonic() < deadline, "day 2 did not finish the job"
            host.run_round()
        day2_sent = sent_to("a") - day1_sent
        neighbour_sent = sent_to("b")

    print(f"\nwarm-up {ALLOWANCE}/day, roster {ROSTER}: day 1 sent {day1_sent}, day 2 sent {day2_sent}; "
          f"the other tenant sent {neighbour_sent} on day 1")
    print(f"while waiting: waiting_reason={shown.waiting_reason!r} eta={shown.eta}")
    assert (day1_sent, day2_sent, neighbour_sent) == (ALLOWANCE, ROSTER - ALLOWANCE, ROSTER)
    assert job.counts["sent"] == ROSTER and job.counts["failed"] == 0
    continues = iso(day2)
    assert shown.waiting_reason == (f"warm-up: today's allowance for example.org ({ALLOWANCE}) used; "
                                    f"continues at {continues}")
    assert shown.waiting_until == continues and shown.eta == continues  # the rest fits day 2
    assert len(rows) == ROSTER - ALLOWANCE
    assert all(r["attempts"] == 0 and r["reason"].startswith("warm-up:") for r in rows)  # no attempt spent
    ramp = WarmupRow.from_entity(storage.table(WARMUP).get(*WarmupRow.key(f"{warming.id}|example.org")))
    assert (ramp.first_day, ramp.day) == (day1.date().isoformat(), day2.date().isoformat())
    assert storage.table(WARMUP).find(*WarmupRow.key(f"{established.id}|example.org")) is None
    assert job.counts[DeliveryStatus.RETRYING.value] == 0
