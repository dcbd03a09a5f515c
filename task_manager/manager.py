"""Sends one task: claim → recover → drop suppressed → render → send → record.

The at-most-once argument (DESIGN §4, invariant 2) in two kinds of write:

1. ``claim_task`` takes the task with an ETag-guarded update and a lease. A duplicate
   message, or a second host, finds the lease held (or the task done) and stops.
2. Recipients go to the provider in send groups (``SEND_GROUP_SIZE``, at most 50). One table
   batch per group writes the previous group's outcomes *and* marks this group's delivery
   rows ``sending``; only then is the group handed over. Suppressed, erased, invalid and
   unrenderable recipients are decided before any mark and written with the next batch:
   they are never ``sending``. The task row itself is written again only when the task
   finishes, pauses or is re-queued (and by the lease's heartbeat): the delivery rows are
   the progress, so storage work per email is about one request per send group.

A host that dies mid-task leaves the task ``sending`` under a lease that runs out. Whoever
claims it next reads the task's delivery rows: recorded outcomes stand, a row that says
``sending`` (handed over, answer not recorded: at most one group) becomes ``unknown``, and
every other recipient without an outcome (never handed over) goes back to ``leftover`` and
is sent normally.

While a chunk's sends are in flight a heartbeat keeps the lease alive, and before its
outcomes are written the owner shows it still holds the lease; a host that lost it writes
only terminal facts it observed, never ``retrying`` (``task_manager/lease.py``).

Throttling (429, ``Retry-After``) is not failure: a throttled recipient is deferred as
``retrying`` without spending an attempt, for ``THROTTLE_HORIZON_SECONDS`` at most (from
``throttled_since`` on its delivery row), after which it is ``failed`` with the reason.

Transient failures that outlast the task's retry budget (DESIGN §5) do not keep the host:
their delivery rows say ``retrying`` (with the attempts so far and the last reason), their
indexes go to ``leftover`` — saved with every ``in_flight`` write, so a crash cannot lose
them — and the task is re-queued with a visibility delay as ``retrying``. A ``retrying``
recipient was *not* handed over (the provider refused it before accepting), so sending it
again is not a second hand-off; its attempt count carries over so ``MAX_SEND_ATTEMPTS``
bounds it across re-queues, after which it is ``failed`` with the last reason.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from core.clock import Clock, iso, later, parse_iso, utcnow
from core.counts import count_delivery_rows, counts_of_statuses, mark_for_recount, tally
from core.erasures import ERASED_REASON, erased_contacts_of_job
from core.errors import Conflict, NotFound, RenderError
from core.ids import is_sendable_address, task_id
from core.job_state import pause_job_for
from core.messages import TaskTicket
from core.models import Job, Recipient, Task, Tenant, delivery_entity, delivery_mark_entity, unpack_recipients
from core.settings import Settings
from core.status import DeliveryStatus, JobStatus, TaskStatus
from core.storage import DELIVERIES, JOBS, TASKS, Storage
from core.suppressions import SuppressionCache
from core.task_window import enqueue_next_in_window, enqueue_task
from core.templates import CompiledTemplate, build_context
from core.unsubscribe import UnsubscribeClaim, one_click_headers, unsubscribe_url
from providers.base import OutboundEmail
from task_manager.dispatch import HALTED, NOT_ATTEMPTED, Dispatcher, Outcome, Route
from task_manager.job_cache import HALTING, JobCache
from task_manager.lease import TaskLease

log = logging.getLogger("mailroom.task_manager")

# Recipients rendered at once, and the step at which a pause or cancel of the job is noticed.
CHUNK = 200
# A send group's outcomes and the next group's ``sending`` marks share one table batch (≤100).
MAX_SEND_GROUP = 50


class TaskOutcome(StrEnum):
    DONE = "done"
    ALREADY_DONE = "already_done"
    BUSY = "busy"  # another host holds a live lease (or a retry is not due yet)
    RETRYING = "retrying"  # some recipients wait for a re-queued attempt
    LOST = "lost"  # our lease was taken over mid-task; we stopped sending
    PAUSED = "paused"  # job paused (by a person, or the provider refused)
    CANCELLED = "cancelled"
    MISSING = "missing"


@dataclass
class _Run:
    """Everything one task run needs, passed around instead of a dozen arguments."""

    storage: Storage
    settings: Settings
    job: Job
    task: Task
    recipients: list[Recipient]
    clock: Clock
    jobs: JobCache
    was_retrying: set[int] = field(default_factory=set)  # rows that said ``retrying`` at the claim
    erased: set[str] = field(default_factory=set)  # contacts deleted since the job started
    lease: TaskLease | None = None  # the owner's hold on the task row (None: no running owner)
    throttled_since: dict[int, str] = field(default_factory=dict)  # leftovers deferred by throttling
    resumed: bool = False  # an earlier owner stopped mid-task: its delivery rows are recovered first


def send_task(
    storage: Storage,
    ticket: TaskTicket,
    settings: Settings,
    dispatcher: Dispatcher,
    suppressions: SuppressionCache,
    jobs: JobCache,
    owner: str,
    clock: Clock = utcnow,
) -> TaskOutcome:
    """Send every recipient of one task exactly once (or account for why not)."""
    try:  # read fresh: a task never starts on a pause or cancel it could have seen
        job = jobs.job(storage, ticket.tenant_id, ticket.job_id, max_age=0)
    except NotFound:
        return TaskOutcome.MISSING
    if job.status == JobStatus.PAUSED:
        return TaskOutcome.PAUSED  # resume re-enqueues the job's unfinished tasks
    claimed = claim_task(storage, ticket, settings, owner, clock)
    if isinstance(claimed, TaskOutcome):
        return claimed
    task, recipients, resumed = claimed
    run = _Run(storage, settings, job, task, recipients, clock, jobs, resumed=resumed)
    run.lease = TaskLease(storage, task, settings.lease_seconds, clock)
    try:
        return run_claimed_task(run, dispatcher, suppressions)
    except Exception as err:
        release_after_error(run, err)
        raise


def run_claimed_task(run: _Run, dispatcher: Dispatcher, suppressions: SuppressionCache) -> TaskOutcome:
    storage, settings, job, task, jobs = run.storage, run.settings, run.job, run.task, run.jobs
    if run.resumed or job.status in (JobStatus.CANCELLED, JobStatus.FAILED):
        refresh_erasures(run)  # these paths write rows before any group is checked
    if run.resumed:
        recover_in_flight(run)
    if job.status in (JobStatus.CANCELLED, JobStatus.FAILED):
        return close_unsent(run, DeliveryStatus.CANCELLED, "job cancelled before this recipient was sent")

    template = jobs.template(storage, job)
    route = route_for(job, settings, jobs.tenant(storage, job.tenant_id))
    if job.dry_run:  # validated by the provider a real run would use, delivered by none
        dispatcher = dispatcher.dry_run()
    prior = prior_attempts(run)
    pending = task.leftover + list(range(task.cursor, task.size))
    suppressed = suppressions.suppressed(job.tenant_id, [run.recipients[i].email for i in pending])
    sends = _GroupSender(run, template, dispatcher, suppressed, route, prior)
    waiting = list(task.leftover)  # earlier leftovers not yet handed to a group
    retry_later: list[int] = []
    retry_after = 0
    chunks = _chunks(pending, CHUNK)
    for number, chunk in enumerate(chunks):
        if number > 0 and (stopped := stop_if_job_halted(run, chunks[number:], waiting, retry_later, sends)):
            return stopped
        in_chunk = set(chunk)
        waiting = [i for i in waiting if i not in in_chunk]
        with run.lease.kept_alive() if run.lease is not None else nullcontext():
            outcomes = sends.send_chunk(chunk)
        if sends.lost:
            log.warning("task lease lost mid-task job=%s task=%d", task.job_id, task.index)
            return TaskOutcome.LOST
        halted = [i for i, o in zip(chunk, outcomes, strict=True) if o.status == HALTED]
        for index, outcome in zip(chunk, outcomes, strict=True):
            if outcome.status == DeliveryStatus.RETRYING:
                retry_later.append(index)
                retry_after = max(retry_after, outcome.retry_after)
        task.leftover = waiting + retry_later
        task.cursor = max(task.cursor, chunk[-1] + 1)
        if halted:
            if not sends.flush():
                return TaskOutcome.LOST
            return pause_for_provider(run, halted, chunk, outcomes)
    if not sends.flush():
        log.warning("task lease lost before its last outcomes job=%s task=%d", task.job_id, task.index)
        return TaskOutcome.LOST
    if retry_later:
        return requeue_for_retry(run, retry_later, retry_after)
    finish_task(run, recount=False)
    enqueue_next_in_window(storage, job.tenant_id, job.id, task.index, settings.task_window)
    log.info("task done job=%s task=%d recipients=%d", task.job_id, task.index, task.size)
    return TaskOutcome.DONE


def release_after_error(run: _Run, err: Exception) -> None:
    """Let the host's retry claim the task at once instead of waiting out our lease.

    The task stays ``sending``: the next owner recovers its delivery rows, and whatever says
    ``sending`` may have been sent, so it is recorded ``unknown`` rather than sent again.
    """
    task = run.task
    task.lease_owner, task.lease_until = "", iso(run.clock())
    task.last_error = f"{type(err).__name__} on attempt {task.attempt}"
    try:
        run.storage.table(TASKS).update(task.progress_entity(), etag=task.etag)
    except Exception:  # noqa: BLE001 - best effort; the lease then simply expires
        log.warning("could not release task job=%s task=%d", task.job_id, task.index)


def claim_task(
    storage: Storage, ticket: TaskTicket, settings: Settings, owner: str, clock: Clock
) -> tuple[Task, list[Recipient], bool] | TaskOutcome:
    """Take the task under a lease (and its recipients, from the same read), or say why not.

    The flag says whether an earlier owner stopped mid-task (the row still says ``sending``, or
    an older host left a chunk ``in_flight``): its delivery rows must be recovered first.
    """
    tasks = storage.table(TASKS)
    try:
        entity = tasks.get(ticket.job_id, task_id(ticket.task_index), select=None)
    except NotFound:
        return TaskOutcome.MISSING
    task = Task.from_entity(entity)
    if TaskStatus(task.status).is_terminal:
        return TaskOutcome.ALREADY_DONE
    now = clock()
    if task.status == TaskStatus.SENDING and task.lease_until and parse_iso(task.lease_until) > now:
        return TaskOutcome.BUSY
    if task.status == TaskStatus.RETRYING and task.lease_until and parse_iso(task.lease_until) > now:
        return TaskOutcome.BUSY  # an early duplicate; the delayed ticket is still on its way
    resumed = task.status == TaskStatus.SENDING or bool(task.in_flight)
    if not task.in_flight:  # an older host's chunk keeps its meaning until it is recovered
        task.send_marks = True
    task.status, task.lease_owner = TaskStatus.SENDING.value, owner
    task.lease_until = later(clock, settings.lease_seconds)
    task.attempt += 1
    task.updated_at = iso(now)
    try:
        task.etag = tasks.update(task.progress_entity(), etag=task.etag)
    except Conflict:
        return TaskOutcome.BUSY
    return task, unpack_recipients(entity), resumed


def recover_in_flight(run: _Run) -> None:
    """A previous owner stopped mid-task: keep outcomes it recorded; what it handed over is ``unknown``.

    Its delivery rows say how far it got. A row that says ``sending`` was handed to the provider
    and its answer never recorded, so it may have been sent: ``unknown``, never resent. A
    recipient without an outcome (no row, or still its earlier ``retrying`` one) never reached
    the provider: it goes back to ``leftover`` and is sent like any other. A chunk an older host
    left ``in_flight`` without ``send_marks`` is all ``unknown``, as that host recorded it.
    """
    task = run.task
    recorded = {
        row["RowKey"]: row["status"]
        for row in run.storage.table(DELIVERIES).partition(
            task.delivery_partition, select=["RowKey", "status"]
        )
    }
    handed_over_unmarked = set() if task.send_marks else set(task.in_flight)
    unknown: list[tuple[int, Outcome]] = []
    never_handed: list[int] = []
    for index in dict.fromkeys(task.in_flight + task.leftover + list(range(task.cursor, task.size))):
        status = recorded.get(run.recipients[index].contact_id)
        if status is not None and DeliveryStatus(status).is_terminal:
            continue
        if status == DeliveryStatus.SENDING or index in handed_over_unmarked:
            reason = "the host sending this recipient stopped; it may have been sent, so it is not resent"
            unknown.append((index, Outcome(DeliveryStatus.UNKNOWN, reason)))
        else:
            never_handed.append(index)
    task.counts = counts_of_statuses(recorded.values())
    record_outcomes(run, unknown)
    task.cursor, task.leftover, task.in_flight, task.send_marks = task.size, never_handed, [], True
    log.warning("recovered task job=%s task=%d unknown=%d unsent=%d",
                task.job_id, task.index, len(unknown), len(never_handed))


def refresh_erasures(run: _Run) -> None:
    """Learn which contacts were deleted since the job started (one small range query).

    Asked after a send group's ``sending`` marks land and before the group is handed over, at
    most once per ``JOB_STATUS_CHECK_SECONDS`` (and always for a task's first group): a contact
    deleted before the check is ``skipped``, never handed over. One deleted after it may still
    be sent by this task, and the DELETE does not return until that is settled: it waits while
    a live owner has not recorded the contact's outcome (``privacy/erasure.py``).
    """
    run.erased = erased_contacts_of_job(run.storage, run.job)


def route_for(job: Job, settings: Settings, tenant: dict[str, Any]) -> Route:
    """The tenant's provider order, send rate and delivery semantics for this task."""
    config = Tenant.from_entity({"RowKey": job.tenant_id, **tenant})
    per_minute = config.rate_limit_per_minute
    semantics = config.delivery_semantics or settings.delivery_semantics
    return Route(
        providers=tuple(config.providers),
        tenant_id=job.tenant_id,
        tenant_per_second=(float(per_minute) / 60.0) if per_minute else None,
        resend_ambiguous=semantics == "at-least-once",
        deadline=time.monotonic() + settings.retry_budget_seconds,
    )


def prior_attempts(run: _Run) -> dict[int, int]:
    """Attempts already made for leftover recipients left ``retrying`` by an earlier run."""
    if not run.task.leftover:
        return {}
    rows = {
        row["RowKey"]: row
        for row in run.storage.table(DELIVERIES).partition(
            run.task.delivery_partition, select=["RowKey", "status", "attempts", "throttled_since"]
        )
        if row.get("status") == DeliveryStatus.RETRYING
    }
    prior: dict[int, int] = {}
    for index in run.task.leftover:
        row = rows.get(run.recipients[index].contact_id)
        if row is not None:
            prior[index] = int(row.get("attempts", 0) or 0)
            run.was_retrying.add(index)
            if row.get("throttled_since"):
                run.throttled_since[index] = row["throttled_since"]
    return prior


def stop_if_job_halted(
    run: _Run, rest: list[list[int]], waiting: list[int], retry_later: list[int], sends: _GroupSender
) -> TaskOutcome | None:
    """At a chunk boundary: stop when the job was paused or cancelled meanwhile.

    The job row comes from the host's ``JobCache``, at most ``JOB_STATUS_CHECK_SECONDS`` old
    (and read fresh before stopping), so a pause by a person or by another task's provider
    refusal stops this task within about a second instead of at its end, at the cost of one
    job read per second per host rather than one per task.
    """
    task = run.task
    try:
        status = run.jobs.job(run.storage, run.job.tenant_id, run.job.id,
                              run.settings.job_status_check_seconds).status
    except NotFound:
        return None
    if status not in HALTING:
        return None
    if not sends.flush():
        return TaskOutcome.LOST
    unsent = [i for chunk in rest for i in chunk]
    unsent_set = set(unsent)
    task.leftover = unsent + [i for i in waiting if i not in unsent_set] + retry_later
    task.cursor, task.in_flight = task.size, []
    if status != JobStatus.PAUSED:
        if run.lease is not None and not run.lease.still_ours(prove=True):
            return TaskOutcome.LOST  # the new owner settles the cancel; our rows would overwrite its sends
        return close_unsent(run, DeliveryStatus.CANCELLED, "job cancelled before this recipient was sent")
    task.status, task.lease_owner, task.lease_until = TaskStatus.PAUSED.value, "", ""
    task.updated_at = iso(run.clock())
    try:
        task.etag = run.storage.table(TASKS).update(task.progress_entity(), etag=task.etag)
    except Conflict:
        return TaskOutcome.LOST
    log.info("task stopped by a pause job=%s task=%d unsent=%d", task.job_id, task.index, len(task.leftover))
    return TaskOutcome.PAUSED


def requeue_for_retry(run: _Run, indexes: list[int], delay: int) -> TaskOutcome:
    """Put the task back on the queue, invisible for ``delay`` s, for its ``retrying`` recipients.

    The ticket goes first: if saving the task fails after it, the ticket finds the task
    still ours and harmless; if the ticket fails, the host's retry of this message still
    finds the leftovers (saved with every ``in_flight`` write).
    """
    task, job = run.task, run.job
    enqueue_task(run.storage, job.tenant_id, job.id, task.index, delay)
    task.status, task.in_flight, task.lease_owner = TaskStatus.RETRYING.value, [], ""
    task.lease_until = later(run.clock, delay)  # not before: an early duplicate waits
    task.updated_at = iso(run.clock())
    try:
        task.etag = run.storage.table(TASKS).update(task.progress_entity(), etag=task.etag)
    except Conflict:
        log.warning("task changed before its retry was saved job=%s task=%d", task.job_id, task.index)
    log.info("task re-queued job=%s task=%d retrying=%d delay=%ds",
             task.job_id, task.index, len(indexes), delay)
    return TaskOutcome.RETRYING


def send_group_size(settings: Settings) -> int:
    """Recipients handed over per ``sending`` mark batch: what a crash can leave ``unknown``."""
    return max(1, min(settings.send_group_size, MAX_SEND_GROUP))


def decide_unsendable(
    run: _Run, chunk: list[int], template: CompiledTemplate, suppressed: set[str]
) -> tuple[dict[int, Outcome], list[tuple[int, OutboundEmail]]]:
    """Split a chunk: outcomes known without the provider, and the rendered messages to hand over."""
    decided: dict[int, Outcome] = {}
    emails: list[tuple[int, OutboundEmail]] = []
    for index in chunk:
        recipient = run.recipients[index]
        if recipient.contact_id in run.erased or not recipient.email:  # an erasure blanks the address
            decided[index] = Outcome(DeliveryStatus.SKIPPED, ERASED_REASON)
        elif recipient.email in suppressed:
            decided[index] = Outcome(DeliveryStatus.SUPPRESSED, "address is on the suppression list")
        elif not is_sendable_address(recipient.email):
            decided[index] = Outcome(DeliveryStatus.SKIPPED, "invalid address")
        else:
            try:
                emails.append((index, render_email(run, recipient, template)))
            except RenderError as err:
                decided[index] = Outcome(DeliveryStatus.SKIPPED, f"template error: {err}")
    return decided, emails


@dataclass
class _GroupSender:
    """Hands a task's recipients to the provider one send group at a time, each marked ``sending`` first.

    Each group's marks ride in one table batch with the outcomes not yet written (the previous
    group's, across chunk boundaries, and recipients decided without the provider), so the rows
    that say ``sending`` at any moment are the group in the provider's hands: that, not a chunk,
    is what a crash leaves ``unknown``. The last group's outcomes wait for ``flush``, which the
    task calls before it writes its own row. After a refusal as a whole the rest is not attempted.
    """

    run: _Run
    template: CompiledTemplate
    dispatcher: Dispatcher
    suppressed: set[str]
    route: Route | None = None
    prior: dict[int, int] = field(default_factory=dict)
    unwritten: list[tuple[int, Outcome]] = field(default_factory=list)
    lost: bool = False
    erasures_checked_at: float | None = None  # monotonic time of the last erasure check

    def send_chunk(self, chunk: list[int]) -> list[Outcome]:
        """The chunk's outcomes in chunk order (``HALTED`` for what was not attempted)."""
        run = self.run
        decided, emails = decide_unsendable(run, chunk, self.template, self.suppressed)
        outcomes: dict[int, Outcome] = dict(decided)
        self.unwritten.extend(decided.items())
        size = send_group_size(run.settings)
        halted = False
        for start in range(0, len(emails), size):
            group = emails[start : start + size]
            if halted:
                outcomes.update((index, Outcome(HALTED, NOT_ATTEMPTED)) for index, _ in group)
                continue
            if not mark_group_sending(run, self.unwritten, [index for index, _ in group]):
                self.lost, self.unwritten = True, []
                return [outcomes.get(i, Outcome(HALTED, NOT_ATTEMPTED)) for i in chunk]
            self.unwritten = []
            group = self.without_erased(group, outcomes)
            indexes = [index for index, _ in group]
            answers = self.dispatcher.send_all([email for _, email in group], self.route,
                                               [self.prior.get(index, 0) for index in indexes])
            answers = fail_past_throttle_horizon(run, indexes, answers)
            outcomes.update(zip(indexes, answers, strict=True))
            self.unwritten.extend((i, o) for i, o in zip(indexes, answers, strict=True) if o.status != HALTED)
            halted = any(o.status == HALTED for o in answers)
        return [outcomes[i] for i in chunk]

    def without_erased(
        self, group: list[tuple[int, OutboundEmail]], outcomes: dict[int, Outcome]
    ) -> list[tuple[int, OutboundEmail]]:
        """The group less contacts deleted meanwhile: checked after its marks landed, before hand-over."""
        now = time.monotonic()
        checked = self.erasures_checked_at
        if checked is not None and now - checked < self.run.settings.job_status_check_seconds:
            return group
        self.erasures_checked_at = now
        refresh_erasures(self.run)
        kept = []
        for index, email in group:
            if self.run.recipients[index].contact_id in self.run.erased:
                outcomes[index] = Outcome(DeliveryStatus.SKIPPED, ERASED_REASON)
                self.unwritten.append((index, outcomes[index]))
            else:
                kept.append((index, email))
        return kept

    def flush(self) -> bool:
        """Write the outcomes not yet written, as the task's owner. False: the task is not ours."""
        outcomes, self.unwritten = self.unwritten, []
        if not owns_task_for(self.run, outcomes):
            record_as_stale_owner(self.run, outcomes)
            return False
        record_outcomes(self.run, outcomes)
        return True


def mark_group_sending(run: _Run, outcomes: list[tuple[int, Outcome]], group: list[int]) -> bool:
    """One batch: earlier outcomes plus this group's ``sending`` marks. False: the task is not ours.

    Before it, the owner shows it may write these outcomes (``owns_task_for``); after it, that the
    lease was still fresh when the marks landed (``still_ours``: renewed less than a third of a
    lease ago, so no other host can have claimed the task and recovered before them). Only then
    is the group handed over. A host that lost the task keeps the terminal facts it observed.
    """
    if not owns_task_for(run, outcomes):
        record_as_stale_owner(run, outcomes)
        return False
    record_outcomes(run, outcomes, sending=group)
    return run.lease is None or run.lease.still_ours()


def render_email(run: _Run, recipient: Recipient, template: CompiledTemplate) -> OutboundEmail:
    job, task = run.job, run.task
    url = unsubscribe_url(
        run.settings.public_url,
        run.settings.signing_key,
        UnsubscribeClaim(job.tenant_id, recipient.contact_id, job.campaign_id or job.test_of),
    )
    rendered = template.render(build_context(recipient, job.campaign_name, url))
    spec = template.spec  # the job row's template may be a blob reference; the compiled one is whole
    return OutboundEmail(
        to_email=recipient.email,
        to_name=recipient.name,
        subject=rendered.subject,
        from_email=spec.from_email,
        from_name=spec.from_name,
        reply_to=spec.reply_to,
        html=rendered.html,
        text=rendered.text,
        headers=one_click_headers(url),
        custom_args={
            "tenant_id": job.tenant_id,
            "job_id": job.id,
            "task_id": task.row_key,
            "contact_id": recipient.contact_id,
        },
    )


def record_outcomes(run: _Run, outcomes: Iterable[tuple[int, Outcome]], sending: Iterable[int] = ()) -> None:
    """The delivery rows of (at most) one chunk, in table batches of ≤100, and the task's counts.

    ``sending``: recipients about to be handed over, marked in the same batch (not counted:
    the outcome that replaces the mark is).
    """
    now = iso(run.clock())
    rows = [delivery_mark_entity(run.task, run.recipients[index], now) for index in sending]
    for index, outcome in outcomes:
        recipient = run.recipients[index]
        if recipient.contact_id in run.erased:  # the row keeps the outcome, not the address
            recipient = Recipient(recipient.contact_id, "", "", {})
        row = delivery_entity(
            run.task,
            recipient,
            outcome.status,
            now,
            reason=outcome.reason,
            provider=outcome.provider,
            message_id=outcome.message_id,
            attempts=outcome.attempts,
        )
        if outcome.status == DeliveryStatus.RETRYING:
            # When throttling began: the horizon runs from here, across re-queues.
            row["throttled_since"] = run.throttled_since.get(index, now) if outcome.throttled else ""
        rows.append(row)
        replaces = DeliveryStatus.RETRYING.value if index in run.was_retrying else None
        run.was_retrying.discard(index)
        tally(run.task.counts, str(outcome.status), replaces)
    if rows:
        run.storage.table(DELIVERIES).batch_upsert(rows)


def owns_task_for(run: _Run, outcomes: list[tuple[int, Outcome]]) -> bool:
    """Whether we may write these outcome rows as the task's owner (see ``task_manager/lease.py``).

    Non-terminal rows need proof (an ETag-guarded renewal): a ``retrying`` row left by a host
    that lost the task would stay in a finished job forever.
    """
    if run.lease is None:
        return True
    needs_proof = any(not DeliveryStatus(o.status).is_terminal for _, o in outcomes)
    return run.lease.still_ours(prove=needs_proof)


def record_as_stale_owner(run: _Run, outcomes: list[tuple[int, Outcome]]) -> None:
    """Another host took the task while we sent: keep only the terminal facts we observed.

    The new owner recorded our chunk ``unknown`` (or is about to). A provider's acceptance
    or rejection is a fact worth keeping, so it replaces a missing or ``unknown`` row and
    nothing else (a row events have moved on, or the new owner's own outcome, stands); a
    non-terminal state (``retrying``) is never written. The task's counts are not ours to
    write any more: the rows changed, so the task is marked for the Status Manager's recount.
    """
    facts = [(i, o) for i, o in outcomes
             if DeliveryStatus(o.status).is_terminal and o.status != DeliveryStatus.UNKNOWN]
    if not facts:
        return
    task = run.task
    rows_now = run.storage.table(DELIVERIES).partition(task.delivery_partition, select=["RowKey", "status"])
    recorded = {row["RowKey"]: row.get("status", "") for row in rows_now}
    now = iso(run.clock())
    rows = [
        delivery_entity(task, run.recipients[i], o.status, now, reason=o.reason, provider=o.provider,
                        message_id=o.message_id, attempts=o.attempts)
        for i, o in facts
        if recorded.get(run.recipients[i].contact_id, DeliveryStatus.UNKNOWN.value) == DeliveryStatus.UNKNOWN
    ]
    if rows:
        run.storage.table(DELIVERIES).batch_upsert(rows)
        mark_for_recount(run.storage, [(task.tenant_id, task.job_id, task.row_key)], run.clock)
    log.warning("stale owner kept facts job=%s task=%d rows=%d", task.job_id, task.index, len(rows))


def fail_past_throttle_horizon(run: _Run, chunk: list[int], outcomes: list[Outcome]) -> list[Outcome]:
    """A recipient throttled for longer than ``THROTTLE_HORIZON_SECONDS`` ends ``failed``.

    Throttling spends no attempts, so without this horizon a provider that never stops
    answering 429 would keep a job open for ever.
    """
    if not run.throttled_since:
        return outcomes
    now = run.clock()
    horizon = run.settings.throttle_horizon_seconds
    result = []
    for index, outcome in zip(chunk, outcomes, strict=True):
        since = run.throttled_since.get(index)
        if outcome.throttled and since and (now - parse_iso(since)).total_seconds() >= horizon:
            reason = f"throttled by the provider for more than {horizon} s: {outcome.reason}"
            outcome = Outcome(DeliveryStatus.FAILED, reason, outcome.provider, "", outcome.attempts)
        result.append(outcome)
    return result


def finish_task(run: _Run, status: TaskStatus = TaskStatus.DONE, recount: bool = True) -> None:
    """Mark the task terminal with its counts.

    ``recount``: counted from its delivery rows (one partition scan). A task that sent all its
    recipients itself finishes with its running counts instead: they tally every row it wrote
    (recovery starts them from the rows), and a row a provider event moved meanwhile has a
    ``Recounts`` mark the Status Manager acts on once the task is terminal, before it sums the
    job (``status_manager/recounts.py``), so the job's counts are exact within a pass either way.
    """
    task = run.task
    if recount:
        task.counts = count_delivery_rows(run.storage, task.delivery_partition)
    task.status, task.in_flight, task.leftover = status.value, [], []
    task.cursor = task.size
    task.lease_owner, task.lease_until = "", ""
    task.updated_at = task.completed_at = iso(run.clock())
    try:
        task.etag = run.storage.table(TASKS).update(task.progress_entity(), etag=task.etag)
    except Conflict:
        log.warning("task finished by another owner job=%s task=%d", task.job_id, task.index)


def close_unsent(run: _Run, status: DeliveryStatus, reason: str) -> TaskOutcome:
    """Give every not-yet-attempted recipient a terminal ``status`` (cancel)."""
    task = run.task
    remaining = task.leftover + list(range(task.cursor, task.size))
    for chunk in _chunks(remaining, CHUNK):
        record_outcomes(run, [(i, Outcome(status, reason)) for i in chunk])
    finish_task(run, TaskStatus.CANCELLED)
    return TaskOutcome.CANCELLED


def pause_for_provider(
    run: _Run, halted: list[int], chunk: list[int], outcomes: list[Outcome]
) -> TaskOutcome:
    """The provider refused as a whole: keep the rest unattempted and pause the job."""
    task, job = run.task, run.job
    reason = next(o.reason for o in outcomes if o.status == HALTED and o.reason != NOT_ATTEMPTED)
    task.leftover = halted + task.leftover + list(range(task.cursor, task.size))
    task.cursor = task.size
    task.in_flight = []
    task.status, task.lease_owner, task.lease_until = TaskStatus.PAUSED.value, "", ""
    task.last_error = f"provider refused: {reason}"
    task.updated_at = iso(run.clock())
    run.storage.table(TASKS).update(task.progress_entity(), etag=task.etag)
    # ETag-guarded through the state machine: a cancel that lands at the same moment wins.
    pause_job_for(run.storage, job.tenant_id, job.id,
                  f"paused: the email provider refused to send ({reason})", run.clock)
    log.error("job paused by provider job=%s task=%d", job.id, task.index)
    return TaskOutcome.PAUSED


def record_task_failure(
    storage: Storage, ticket: TaskTicket, settings: Settings, reason: str, clock: Clock = utcnow
) -> None:
    """A task message is going to the poison queue: account for its recipients and say why.

    Recipients that have no outcome yet end ``failed`` with the reason (those in flight
    ``unknown``), the task is closed and the job's ``last_error`` names the task.
    """
    try:
        task = Task.from_entity(storage.table(TASKS).get(ticket.job_id, task_id(ticket.task_index)))
        job = Job.from_entity(storage.table(JOBS).get(ticket.tenant_id, ticket.job_id))
    except NotFound:
        return
    if TaskStatus(task.status).is_terminal:
        return
    run = _Run(storage, settings, job, task, [], clock, JobCache())
    run.recipients = unpack_recipients(storage.table(TASKS).get(task.job_id, task.row_key))
    refresh_erasures(run)
    if task.in_flight or task.status == TaskStatus.SENDING:
        recover_in_flight(run)
    remaining = task.leftover + list(range(task.cursor, task.size))
    for chunk in _chunks(remaining, CHUNK):
        record_outcomes(run, [(i, Outcome(DeliveryStatus.FAILED, f"task failed: {reason}")) for i in chunk])
    task.last_error = reason
    finish_task(run)
    last_error = f"task {task.row_key} failed and went to task-queue-poison: {reason}"
    storage.table(JOBS).update(Job.changes((job.tenant_id, job.id), last_error=last_error))


def _chunks(items: list[int], size: int) -> list[list[int]]:
    return [items[i : i + size] for i in range(0, len(items), size)]
