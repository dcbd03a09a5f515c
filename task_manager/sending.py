"""Handing recipients over in send groups: decide the unsendable, render, name in flight, send.

Suppressed, erased, invalid and unrenderable recipients are decided before any mark, so they
are never named in flight; a crash leaves ``unknown`` at most the group in the provider's hands.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from core.clock import parse_iso
from core.erasures import ERASED_REASON, erased_contacts_of_job
from core.errors import RenderError
from core.ids import is_sendable_address
from core.models import Job, Recipient, Tenant
from core.settings import Settings
from core.status import DeliveryStatus
from core.storage import DELIVERIES
from core.suppressions import SuppressionCache
from core.templates import CompiledTemplate, Skeleton, build_context
from core.unsubscribe import UnsubscribeClaim, one_click_headers, unsubscribe_url
from providers.base import OutboundEmail
from task_manager.batch_send import BatchSend, open_batch_send, too_large_to_batch
from task_manager.dispatch import HALTED, NOT_ATTEMPTED, Dispatcher, Outcome, Route
from task_manager.mark_budget import MAX_SEND_GROUP, MarkShare
from task_manager.outcomes import owns_task_for, record_as_stale_owner, record_outcomes
from task_manager.run import TaskRun


def open_group_sender(
    run: TaskRun,
    dispatcher: Dispatcher,
    suppressions: SuppressionCache,
    pending: list[int],
    share: MarkShare | None = None,
) -> GroupSender:
    """What the task's sends need, read once: template, route, prior attempts, suppressed addresses,
    and the task's share of the host's in-flight budget (``share``: one taken before the claim)."""
    storage, job, jobs = run.storage, run.job, run.jobs
    template = jobs.template(storage, job)
    route = route_for(job, run.settings, jobs.tenant(storage, job.tenant_id))
    batch = open_batch_send(run, template, route, dispatcher)
    if job.dry_run:  # validated by the provider a real run would use, delivered by none
        dispatcher = dispatcher.dry_run()
    prior = prior_attempts(run)
    suppressed = suppressions.suppressed(job.tenant_id, [run.recipients[i].email for i in pending])
    size = max(1, min(send_group_size(run.settings), dispatcher.marks.capacity // 2))
    if batch is not None:  # a batched job's send group is its batch: one request, within the same share
        size = min(size, batch.size)
    share = share or MarkShare(dispatcher.marks, job.tenant_id, size)
    share.resize(max(1, min(size, len(pending))))
    return GroupSender(run, template, dispatcher, suppressed, route, prior, share=share, group_size=size,
                       batch=batch)


def send_group_size(settings: Settings) -> int:
    """Recipients handed over per in-flight batch: what a crash can leave ``unknown``."""
    return max(1, min(settings.send_group_size, MAX_SEND_GROUP))


def refresh_erasures(run: TaskRun) -> None:
    """Learn which contacts were deleted since the job started (one small range query).

    Asked after a send group's in-flight row lands and before the group is handed over, at
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


def prior_attempts(run: TaskRun) -> dict[int, int]:
    """Attempts already made for leftover recipients left ``retrying`` by an earlier run.

    A leftover whose row already holds a terminal outcome is noted in ``run.recorded_leftover``
    and not sent.
    """
    if not run.task.leftover:
        return {}
    rows = {
        row["RowKey"]: row
        for row in run.storage.table(DELIVERIES).partition(
            run.task.delivery_partition, select=["RowKey", "status", "attempts", "throttled_since"]
        )
    }
    prior: dict[int, int] = {}
    for index in run.task.leftover:
        row = rows.get(run.recipients[index].contact_id)
        if row is not None and DeliveryStatus(row.get("status", "")).is_terminal:
            # An outcome is on record (a provider event proved a recipient waiting for its
            # reconciliation resend accepted): handing it over again would be a second hand-off.
            run.recorded_leftover.add(index)
        elif row is not None and row.get("status") == DeliveryStatus.RETRYING:
            prior[index] = int(row.get("attempts", 0) or 0)
            run.was_retrying.add(index)
            if row.get("throttled_since"):
                run.throttled_since[index] = row["throttled_since"]
    return prior


def decide_unsendable(
    run: TaskRun, chunk: list[int], template: CompiledTemplate, suppressed: set[str],
    skeleton: Skeleton | None = None,
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
                emails.append((index, render_email(run, recipient, template, skeleton)))
            except RenderError as err:
                decided[index] = Outcome(DeliveryStatus.SKIPPED, f"template error: {err}")
    return decided, emails


@dataclass
class GroupSender:
    """Hands a task's recipients to the provider one send group at a time, each named in flight first.

    Each group's in-flight row rides in one table batch with the outcomes not yet written (the
    previous group's, across chunk boundaries, and recipients decided without the provider), so
    what the run's in-flight row names at any moment is the group in the provider's hands: that,
    not a chunk, is what a crash leaves ``unknown``. The last group's outcomes (and the emptied
    in-flight row) wait for ``flush``, which the task calls before it writes its own row. After
    a refusal as a whole the rest is not attempted.

    Before its first hand-over the task takes its ``share`` of the host's in-flight budget
    (``mark_budget.py``; it may wait there for other tasks to finish) and gives it back after
    ``flush``, so a killed host leaves at most that budget ``unknown``, however many tasks it ran.
    """

    run: TaskRun
    template: CompiledTemplate
    dispatcher: Dispatcher
    suppressed: set[str]
    route: Route | None = None
    prior: dict[int, int] = field(default_factory=dict)
    unwritten: list[tuple[int, Outcome]] = field(default_factory=list)
    lost: bool = False
    erasures_checked_at: float | None = None  # monotonic time of the last erasure check
    share: MarkShare | None = None  # this task's part of the host's in-flight budget
    group_size: int = 0  # recipients per send group (0: ``send_group_size`` of the settings)
    batch: BatchSend | None = None  # the job goes out batched: each send group is one request
    marked: bool = False  # this run's in-flight row exists (``flush`` empties it)

    def send_chunk(self, chunk: list[int]) -> list[Outcome]:
        """The chunk's outcomes in chunk order (``HALTED`` for what was not attempted)."""
        run = self.run
        skeleton = self.batch.skeleton if self.batch is not None else None
        decided, emails = decide_unsendable(run, chunk, self.template, self.suppressed, skeleton)
        outcomes: dict[int, Outcome] = dict(decided)
        self.unwritten.extend(decided.items())
        size = self.group_size or send_group_size(run.settings)
        halted = False
        for start in range(0, len(emails), size):
            group = emails[start : start + size]
            if halted:
                outcomes.update((index, Outcome(HALTED, NOT_ATTEMPTED)) for index, _ in group)
                continue
            if self.share is not None:
                self.share.hold()
            if not mark_group_sending(run, self.unwritten, [index for index, _ in group]):
                self.lost, self.unwritten = True, []
                self.give_back_marks()
                return [outcomes.get(i, Outcome(HALTED, NOT_ATTEMPTED)) for i in chunk]
            self.unwritten, self.marked = [], True
            group = self.without_erased(group, outcomes)
            indexes = [index for index, _ in group]
            answers = self.hand_over([email for _, email in group], [self.prior.get(i, 0) for i in indexes])
            answers = fail_past_throttle_horizon(run, indexes, answers)
            outcomes.update(zip(indexes, answers, strict=True))
            self.unwritten.extend((i, o) for i, o in zip(indexes, answers, strict=True) if o.status != HALTED)
            halted = any(o.status == HALTED for o in answers)
        return [outcomes[i] for i in chunk]

    def hand_over(self, emails: list[OutboundEmail], prior: list[int]) -> list[Outcome]:
        """The seam where a marked group goes to the provider: one request for a batched job
        (``task_manager/batch_send.py``), one per recipient otherwise."""
        if self.batch is not None:
            return self.batch.send(self.dispatcher, emails, self.route, prior)
        return self.dispatcher.send_all(emails, self.route, prior)

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
        try:
            if not owns_task_for(self.run, outcomes):
                record_as_stale_owner(self.run, outcomes)
                return False
            record_outcomes(self.run, outcomes, in_flight=[] if self.marked else None)
            self.marked = False
            return True
        finally:
            self.give_back_marks()

    def give_back_marks(self) -> None:
        """This run's in-flight row names nobody any more (or the run ended): the share goes back."""
        if self.share is not None:
            self.share.give_back()


def mark_group_sending(run: TaskRun, outcomes: list[tuple[int, Outcome]], group: list[int]) -> bool:
    """One batch: earlier outcomes plus the run's in-flight row naming this group (``core/in_flight.py``).
    False: the task is not ours.

    Before it, the owner shows it may write these outcomes (``owns_task_for``); after it, that the
    lease was still fresh when the marks landed (``still_ours``: renewed less than a third of a
    lease ago, so no other host can have claimed the task and recovered before them). Only then
    is the group handed over. A host that lost the task keeps the terminal facts it observed.
    """
    if not owns_task_for(run, outcomes):
        record_as_stale_owner(run, outcomes)
        return False
    record_outcomes(run, outcomes, in_flight=group)
    return run.lease is None or run.lease.still_ours()


def render_email(
    run: TaskRun, recipient: Recipient, template: CompiledTemplate, skeleton: Skeleton | None = None
) -> OutboundEmail:
    """The recipient's message: rendered whole, or for a batched job (``skeleton``) its subject and
    substitutions on the job's skeleton bodies (whole again when they are too large to batch)."""
    job, task = run.job, run.task
    url = unsubscribe_url(
        run.settings.public_url,
        run.settings.signing_key,
        UnsubscribeClaim(job.tenant_id, recipient.contact_id, job.campaign_id or job.test_of),
    )
    context = build_context(recipient, job.campaign_name, url)
    substitutions: dict[str, str] = {}
    if skeleton is not None:
        rendered, substitutions = skeleton.message_for(context)
        if too_large_to_batch(substitutions):
            skeleton, substitutions = None, {}
    if skeleton is None:
        rendered = template.render(context)
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
        substitutions=substitutions,
    )


def fail_past_throttle_horizon(run: TaskRun, chunk: list[int], outcomes: list[Outcome]) -> list[Outcome]:
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
