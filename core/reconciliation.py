"""What an ``unknown`` recipient became: the vocabulary of resolutions and the marks that ask for one.

An ``unknown`` recipient's message may or may not have been accepted (the provider's answer was
lost after the request was written). A provider with an event feed settles that: SendGrid posts
``processed`` (then ``delivered``/``deferred``/``bounce``/``dropped``) for every message it
accepted, "in nearly real time" and retried for 24 hours when our webhook fails. So:

- an event arrives: the message was accepted (``accepted_by_event``; the event processor merges it);
- no event within ``RECONCILE_WINDOW_SECONDS``: it was not accepted. An ``at-most-once`` tenant's
  job does not wait for that (it closes as soon as its tasks are done): once the window has passed
  its row is reported ``not_accepted`` and stays ``unknown``, so the closed job's counts do not
  change (only provider events change a closed job's counts); a ``reconcile`` (or
  ``at-least-once``) tenant's job stays open and the row is sent once more under the same ids
  (``resent``), so a late event for the first attempt still matches its row;
- a provider without an event feed (SMTP, ACS here, or SendGrid without
  ``SENDGRID_WEBHOOK_PUBLIC_KEY``): nothing will ever tell, so it stays ``unknown`` (``no_event_feed``).

Whoever records an ``unknown`` outcome (the Task Manager) marks its task in ``Reconciles`` with the
end of that window; ``status_manager/reconcile.py`` acts on due marks, and a job does not close
while it has one that holds it open (a resending tenant's).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta

from core.clock import Clock, iso, utcnow
from core.models import RECONCILE_PARTITION, ReconcileMark
from core.settings import Settings
from core.storage import RECONCILES, Entity, Storage

ACCEPTED_BY_EVENT = "accepted_by_event"
NOT_ACCEPTED = "not_accepted"
RESENT = "resent"
NO_EVENT_FEED = "no_event_feed"
#: Every resolution, in the order ``GET /jobs/{id}`` reports them (then ``awaiting``).
RESOLUTIONS = (ACCEPTED_BY_EVENT, NOT_ACCEPTED, RESENT, NO_EVENT_FEED)

#: Tenant semantics that send a not-accepted recipient once more.
RESENDING_SEMANTICS = frozenset({"reconcile", "at-least-once"})


def has_event_feed(provider: str, settings: Settings) -> bool:
    """Whether ``provider`` tells us about every message it accepted (SendGrid with a verified webhook)."""
    return provider == "sendgrid" and bool(settings.sendgrid_webhook_public_key)


def reconcile_due_in(provider: str, settings: Settings) -> float:
    """Seconds until an ``unknown`` recipient sent through ``provider`` may be settled.

    The window when events may still come; none when they never will (no feed configured, or a
    provider known to have none). A blank provider (a host died mid-send and nobody recorded
    which provider took it) is given the window: it may have been one with a feed.
    """
    if not settings.sendgrid_webhook_public_key or (provider and not has_event_feed(provider, settings)):
        return 0.0
    return settings.reconcile_window_seconds


def not_accepted_reason(window_seconds: float) -> str:
    return f"not accepted by the provider: no event within {window_seconds:g} s"


def mark_unknowns(
    storage: Storage, tasks: Iterable[tuple[str, str, str]], due_in_seconds: float, clock: Clock = utcnow,
    holds_job_open: bool = True,
) -> None:
    """Ask the Status Manager to settle these (tenant, job, task)s' ``unknown`` rows after the window.

    A mark is overwritten with the later ``due_at``, so the task's newest unknown decides when it
    is looked at; rows younger than the window at that time wait for a new mark.
    ``holds_job_open``: whether the job waits for it (a tenant whose unknowns may be resent).
    """
    due = iso(clock() + timedelta(seconds=max(0.0, due_in_seconds)))
    marks = [ReconcileMark(t, j, k, due_at=due, holds_job_open=holds_job_open).to_entity()
             for t, j, k in sorted(set(tasks))]
    if marks:
        storage.table(RECONCILES).batch_upsert(marks, replace=True)


def marks_of_job(storage: Storage, tenant_id: str, job_id: str, holding_only: bool = False) -> list[Entity]:
    """The job's reconciliation marks (one small key range of one partition); ``holding_only``:
    just those the job waits for (``mark_holds_job_open``)."""
    prefix = f"{tenant_id}|{job_id}|"
    marks = storage.table(RECONCILES).query(
        "PartitionKey eq @pk and RowKey ge @lo and RowKey lt @hi",
        {"pk": RECONCILE_PARTITION, "lo": prefix, "hi": prefix[:-1] + "}"},
    )
    return [m for m in marks if not holding_only or mark_holds_job_open(m)]


def mark_holds_job_open(mark: Entity) -> bool:
    """Whether a job must stay open for this mark (older rows, written before the column: yes)."""
    return mark.get("holds_job_open") is not False
