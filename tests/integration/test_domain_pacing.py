"""Per-domain pacing listens to deferrals: one domain slows down and recovers, the others keep their speed.

The managers run in-process on Azurite and send over SMTP to the local sink, which answers
every yahoo.com recipient "451 4.7.1 ... try again later" for a minute (a deferral burst).
The figures (accepted messages per domain per second and per 10 s, yahoo's pace) are printed:
the README's table comes from this test's output. Rates are figures, not assertions (two shared
cores); what is asserted is the order of things: gmail and outlook are all sent while yahoo
still defers (its tasks park off the job's window instead of stalling the others), yahoo's
pace falls during the burst and is back at its ceiling after it, and nobody failed.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import Counter

from core.errors import TransientSendError
from core.ids import contact_id_for
from core.models import Job, Task
from core.settings import Settings
from core.storage import JOBS, PACING, TASKS
from providers.base import OutboundEmail, SendResult
from providers.pacing import DomainPacer, PacedSender, PacingConfig, scope_of
from providers.smtp import SmtpProvider
from tests.pipeline import InProcessHost, add_contacts, job_of, make_tenant, schedule_campaign
from tests.sim_fixtures import running_smtp_sink

DOMAINS = ("gmail.com", "outlook.com", "yahoo.com")
PER_DOMAIN = 150
RATE = 10  # per second and domain group
BURST_SECONDS = 60.0  # the "deferrals for a minute"


def paced_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={
        "task_size": 30, "task_window": 6, "pacing_rates": f"gmail={RATE},microsoft={RATE},yahoo={RATE}",
        "pacing_increase_seconds": 1.0, "pacing_retry_seconds": 2,
    })


def test_a_deferring_domain_is_slowed_and_restored_while_the_others_keep_their_speed_and_nobody_fails(
    storage, settings
):
    settings = paced_settings(settings)
    tenant = make_tenant(storage)
    tag = secrets.token_hex(3)
    add_contacts(storage, tenant, [{"email": f"p{i}-{tag}@{d}"} for i in range(PER_DOMAIN) for d in DOMAINS])
    yahoo = scope_of(tenant.id, "news@example.org", "x@yahoo.com")
    with running_smtp_sink() as sink:
        pacer = DomainPacer(storage, PacingConfig.from_settings(settings))
        host = InProcessHost(storage, settings, PacedSender(SmtpProvider("127.0.0.1", sink.port), pacer))
        campaign = schedule_campaign(storage, tenant)
        marks: dict[str, float] = {}
        paces: list[tuple[float, float]] = []
        stop = threading.Event()

        def watch() -> None:  # start the burst once yahoo is in full flow; sample yahoo's pace
            while not stop.is_set():
                got = [m for m in sink.messages() if m.rcpt_tos[0].endswith("@yahoo.com")]
                if "burst" not in marks and len(got) >= 15:
                    sink.defer_domain("yahoo.com", BURST_SECONDS)
                    marks["burst"] = time.time()
                row = storage.table(PACING).find(yahoo, "rate") or {}
                paces.append((time.time(), float(row.get("rate", 0) or 0) or RATE))
                time.sleep(0.25)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        job: Job | None = None
        deadline = time.monotonic() + 300
        while job is None or job.status != "completed":
            assert time.monotonic() < deadline, "the paced job did not finish"
            host.run_round()
            time.sleep(0.1)
            job = job_of(storage, campaign)
        stop.set()
        watcher.join()
        messages = sink.messages()
        deferred = sink.deferred

    job = Job.from_entity(storage.table(JOBS).get(tenant.id, job.id))
    assert job.counts["sent"] == job.roster_size == 3 * PER_DOMAIN  # nobody failed, nobody left behind
    assert job.counts["failed"] == 0 and deferred > 0
    t0 = min(m.received_at.timestamp() for m in messages)
    burst = marks["burst"] - t0
    per_second = {d: Counter(int(m.received_at.timestamp() - t0) for m in messages
                             if m.rcpt_tos[0].endswith(d)) for d in DOMAINS}
    pace_at = {int(t - t0): rate for t, rate in paces if t >= t0}
    print(f"\nyahoo.com deferred from t={burst:.1f}s to t={burst + BURST_SECONDS:.1f}s "
          f"({deferred} RCPTs refused)")
    print("t (s) | gmail.com/s | outlook.com/s | yahoo.com/s | yahoo pace/s")
    last = max(max(c) for c in per_second.values() if c)
    for second in range(last + 1):
        gmail, outlook, yahoo_sent = (per_second[d][second] for d in DOMAINS)
        print(f"{second:5d} | {gmail:11d} | {outlook:13d} | {yahoo_sent:11d} | {pace_at.get(second, RATE):g}")

    print("per 10 s | gmail.com | outlook.com | yahoo.com | yahoo pace at the end")
    for start in range(0, last + 1, 10):
        tens = [sum(per_second[d][s] for s in range(start, start + 10)) for d in DOMAINS]
        print(f"{start:3d}-{start + 9:<4d} | {tens[0]:9d} | {tens[1]:11d} | {tens[2]:9d} | "
              f"{pace_at.get(min(start + 9, last), RATE):g}")

    slowest = min(rate for t, rate in paces if marks["burst"] <= t <= marks["burst"] + BURST_SECONDS)
    assert slowest <= RATE / 4  # multiplicative decrease: halved at least twice during the burst
    assert paces[-1][1] == RATE  # additive increase brought it back to its ceiling
    after = [per_second["yahoo.com"][s] for s in range(int(burst + BURST_SECONDS), last + 1)]
    assert sum(after) > 0  # sending again once restored (its speed is a benchmark figure, printed above)
    # The other domains do not wait for yahoo: every one of their recipients is sent while it still
    # defers (150 at 10/s take about 15 s of the burst's 60). Before tasks parked, the job's window
    # filled with tasks waiting on yahoo and gmail and outlook stopped from t≈8 s to the burst's end.
    burst_end = marks["burst"] + BURST_SECONDS
    for domain in ("gmail.com", "outlook.com"):
        theirs = [m.received_at.timestamp() for m in messages if m.rcpt_tos[0].endswith(domain)]
        assert len(theirs) == PER_DOMAIN and max(theirs) < burst_end, f"{domain} waited for yahoo's burst"


class DefersYahoo:
    """The SMTP provider, except that every yahoo.com recipient is refused "try again later" while on."""

    name = "smtp"

    def __init__(self, inner: SmtpProvider) -> None:
        self.inner, self.deferring = inner, True

    def send(self, email: OutboundEmail) -> SendResult:
        if self.deferring and email.to_email.endswith("@yahoo.com"):
            raise TransientSendError("451 4.7.1 try again later", provider="smtp", code="451")
        return self.inner.send(email)

    def close(self) -> None:
        self.inner.close()


def yahoo_first_gmail_last(salt: str) -> list[str]:
    """Three gmail.com and three yahoo.com addresses whose roster (contact id) order starts with a
    yahoo one and ends with a gmail one, so without parking the first task would hold the window."""
    while True:
        tag = secrets.token_hex(3)
        emails = [f"q{i}-{tag}@{d}" for i in range(3) for d in ("gmail.com", "yahoo.com")]
        ordered = sorted(emails, key=lambda e: contact_id_for(salt, e))
        if ordered[0].endswith("yahoo.com") and ordered[-1].endswith("gmail.com"):
            return emails


def test_a_task_left_only_with_a_deferring_domains_recipients_parks_and_lets_the_tasks_behind_it_go(
    storage, settings
):
    settings = paced_settings(settings).model_copy(update={"task_size": 2, "task_window": 1})
    tenant = make_tenant(storage)
    add_contacts(storage, tenant, [{"email": e} for e in yahoo_first_gmail_last(tenant.contact_salt)])
    with running_smtp_sink() as sink:
        provider = DefersYahoo(SmtpProvider("127.0.0.1", sink.port))
        pacer = DomainPacer(storage, PacingConfig.from_settings(settings))
        host = InProcessHost(storage, settings, PacedSender(provider, pacer))
        campaign = schedule_campaign(storage, tenant)

        def sent(domain: str) -> int:
            return sum(1 for m in sink.messages() if m.rcpt_tos[0].endswith(domain))

        deadline = time.monotonic() + 60
        while sent("gmail.com") < 3:  # a window of one task: only parking lets the later tasks go
            assert time.monotonic() < deadline, "gmail waited for yahoo"
            host.run_round()
        job = job_of(storage, campaign)
        assert job is not None and job.status != "completed"
        tasks = [Task.from_entity(e) for e in storage.table(TASKS).partition(job.id)]
        waiting = [t for t in tasks if t.status == "retrying"]
        assert waiting and all(t.parked for t in waiting) and sent("yahoo.com") == 0

        provider.deferring = False  # the burst is over: the Status Manager re-enqueues the parked tasks
        while (job := job_of(storage, campaign)) is None or job.status != "completed":
            assert time.monotonic() < deadline, "the parked tasks did not finish"
            host.run_round()
            time.sleep(0.1)
    assert (sent("gmail.com"), sent("yahoo.com")) == (3, 3)
    assert job.counts["sent"] == 6 and job.counts["failed"] == 0
