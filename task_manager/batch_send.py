"""Batched sends: one SendGrid request for a whole send group of a job (personalizations).

A job whose template uses recipient data only as plain values (``core.templates.substitutable``)
and whose providers route to SendGrid is sent batched: the bodies are rendered once per job
with a placeholder per value (``render_skeleton``), each recipient brings its subject, headers,
ids and substitutions, and a send group goes to SendGrid as one request
(``SendGridProvider.send_batch``). A batch is a send group and nothing else: at most
``MAX_SEND_GROUP`` (50) recipients, named in the run's in-flight row by the table batch that records
the previous group's outcomes, taken from the host's in-flight budget exactly like a per-recipient
group (``mark_budget.py``). ``SENDGRID_BATCH_SIZE`` only switches batching off (0) or cuts a
batched job's groups smaller; it never makes them larger, so the one bound on what a killed host
leaves ``unknown`` (the mark budget) holds for batched jobs too. The choice is made once per
job, at its first claim, and written on the job (``send_mode``, ``send_mode_reason``:
``GET /jobs/{id}`` shows it).

What stays as it was, per recipient: the group is named in flight before the request (the
group *is* the batch, so a crash leaves ``unknown`` at most the host's mark budget);
a 400 naming addresses fails those with SendGrid's message and the rest go once more; a 429
or 5xx retries the batch within the task's budget (a 429 spends no attempt, a 5xx one for each
recipient in it); no answer after the request was written is ``unknown`` for the batch, never
resent under at-most-once. Failover moves the batch as a whole (``FailoverSender.send_batch_via``):
to the next provider's batch, or, when that provider sends one message per request, to the
per-recipient path through it. The rate limits and per-domain pacing take one token per
recipient, and the fair send pool counts a batch as that many sends.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace

from core.errors import NotBatchable, SendError, StateConflict
from core.job_state import change_job
from core.models import Job
from core.retry import Attempts, call_with_retries
from core.settings import Settings
from core.status import DeliveryStatus
from core.templates import MAX_SUBSTITUTION_BYTES, CompiledTemplate, Skeleton, substitutable
from providers.base import OutboundEmail, SendResult
from task_manager.dispatch import Dispatcher, Outcome, Route
from task_manager.mark_budget import MAX_SEND_GROUP
from task_manager.run import TaskRun

BATCHED = "batched"
PER_RECIPIENT = "per-recipient"
SENDGRID = "sendgrid"


@dataclass(frozen=True)
class SendMode:
    """How a job's recipients go to the provider, and why (shown on the job)."""

    mode: str
    reason: str


def decide_send_mode(
    settings: Settings, template: CompiledTemplate, route: Route, dispatcher: Dispatcher
) -> SendMode:
    """Batched when batching is on, the job's first provider is SendGrid and the template is substitutable."""
    if settings.sendgrid_batch_size <= 0:
        return SendMode(PER_RECIPIENT, "SENDGRID_BATCH_SIZE is 0: one request per recipient")
    first = first_provider(route, dispatcher)
    if first != SENDGRID or not can_batch(dispatcher):
        return SendMode(PER_RECIPIENT, f"the job's first provider is {first or 'unknown'}, which takes one "
                                       "recipient per request")
    if not substitutable(template.spec):
        return SendMode(PER_RECIPIENT, "the template uses recipient data in logic (if/for/set, filters): "
                                       "rendered for each recipient")
    return SendMode(BATCHED, f"SendGrid personalizations: up to {batch_size(settings)} recipients "
                             "(one send group) of one body per request")


def batch_size(settings: Settings) -> int:
    """Recipients per batched request: a send group (``SEND_GROUP_SIZE``, at most ``MAX_SEND_GROUP``),
    cut to ``SENDGRID_BATCH_SIZE`` when that is smaller."""
    return max(1, min(settings.sendgrid_batch_size, settings.send_group_size, MAX_SEND_GROUP))


def first_provider(route: Route, dispatcher: Dispatcher) -> str:
    """The provider a send of this route tries first: the tenant's order, else the sender's own."""
    if route.providers:
        return route.providers[0]
    sender = dispatcher.provider
    inner = getattr(sender, "inner", sender)  # per-domain pacing wraps the failover list
    order = getattr(inner, "order", None)
    return str(order[0]) if order else str(getattr(sender, "name", ""))


def can_batch(dispatcher: Dispatcher) -> bool:
    sender = dispatcher.provider
    return hasattr(sender, "send_batch_via") or hasattr(sender, "send_batch")


def settle_send_mode(run: TaskRun, decided: SendMode) -> SendMode:
    """The job's send mode: the one already on the job, else ``decided``, written once.

    Every first claim of a job's tasks may decide at once (several hosts); one write wins
    (ETag-guarded, through ``core.job_state``) and every task follows what the job says, so the
    choice is made once per job even when a tenant's providers change meanwhile.
    """
    job = run.job
    if job.send_mode:
        return SendMode(job.send_mode, job.send_mode_reason)

    def decide(current: Job) -> dict[str, str] | None:
        if current.send_mode:
            return None
        return {"send_mode": decided.mode, "send_mode_reason": decided.reason}

    try:
        written = change_job(run.storage, job.tenant_id, job.id, decide)
    except StateConflict:
        return decided  # the row kept changing: this task sends as decided, the next one writes it
    job.send_mode, job.send_mode_reason = written.send_mode, written.send_mode_reason
    return SendMode(written.send_mode, written.send_mode_reason)


def substitution_bytes(substitutions: dict[str, str]) -> int:
    """Their size as SendGrid counts it (the personalization's ``substitutions`` JSON)."""
    return len(json.dumps(substitutions, ensure_ascii=False).encode())


def too_large_to_batch(substitutions: dict[str, str]) -> bool:
    """A recipient whose values pass SendGrid's limit per personalization is sent alone.

    A character takes at most 6 bytes in that JSON (``\\uXXXX``) and each pair adds 6 (quotes,
    colon, comma), so values whose bound is under the limit need no JSON to know it."""
    bound = 2 + sum(6 * (len(key) + len(value)) + 6 for key, value in substitutions.items())
    return bound > MAX_SUBSTITUTION_BYTES and substitution_bytes(substitutions) > MAX_SUBSTITUTION_BYTES


def fill(email: OutboundEmail) -> OutboundEmail:
    """The recipient's whole message, as SendGrid would make it from the skeleton (replace each
    placeholder by its value): what a provider without personalizations is given."""
    html, text = email.html, email.text
    for key, value in email.substitutions.items():
        html, text = html.replace(key, value), text.replace(key, value)
    return replace(email, html=html, text=text, substitutions={})


@dataclass
class BatchSend:
    """A batched job's send groups: each is one request (``size`` recipients at most: a send group)."""

    skeleton: Skeleton
    size: int

    def send(
        self, dispatcher: Dispatcher, emails: list[OutboundEmail], route: Route | None, prior: Sequence[int]
    ) -> list[Outcome]:
        """One outcome per email, in order. Those rendered on the skeleton go in one request; one
        rendered whole (its values too large for a personalization) is sent alone."""
        route = route or Route()
        outcomes: list[Outcome | None] = [None] * len(emails)
        batched = [k for k, e in enumerate(emails) if self.on_skeleton(e)]
        alone = [k for k, e in enumerate(emails) if not self.on_skeleton(e)]
        if batched:
            answers = self.send_batch(dispatcher, [emails[k] for k in batched], route,
                                      [prior[k] for k in batched])
            for k, outcome in zip(batched, answers, strict=True):
                outcomes[k] = outcome
        if alone:
            for k, outcome in zip(alone, dispatcher.send_all([emails[k] for k in alone], route,
                                                              [prior[k] for k in alone]), strict=True):
                outcomes[k] = outcome
        return [o for o in outcomes if o is not None]

    def on_skeleton(self, email: OutboundEmail) -> bool:
        return email.html == self.skeleton.html and email.text == self.skeleton.text

    def send_batch(
        self, dispatcher: Dispatcher, emails: list[OutboundEmail], route: Route, prior: Sequence[int]
    ) -> list[Outcome]:
        """The batch through the provider's ``send_batch`` with the retry policy, on a sending
        thread of the tenant's line; where failover picks a provider without batches, each
        recipient whole through the per-recipient path from that provider on."""
        try:
            return dispatcher.in_turn(
                route.tenant_id, lambda: attempt_batch(dispatcher, emails, route, prior), weight=len(emails)
            )
        except NotBatchable as err:
            order = route.providers
            if err.provider in order:
                order = order[order.index(err.provider):]
            return dispatcher.send_all([fill(e) for e in emails], replace(route, providers=order), prior)


def attempt_batch(
    dispatcher: Dispatcher, emails: list[OutboundEmail], route: Route, prior: Sequence[int]
) -> list[Outcome]:
    """Send the batch, retrying it as a whole while the provider's answer is the same for all
    (429, 5xx, connect errors, every provider held) within the policy and the task's deadline.

    Attempts count as for one recipient's send: a 429 or a hold spends none, a 5xx one for each
    recipient in the batch, and an answered request one. The batch starts from its most-tried
    recipient's count, so none of them passes ``MAX_SEND_ATTEMPTS``.
    """
    sender = dispatcher.provider
    via = getattr(sender, "send_batch_via", None)
    name = getattr(sender, "name", "")
    start = max(prior, default=0)
    attempts = Attempts(count=start)

    def attempt() -> list[SendResult | SendError]:
        if dispatcher.limiter is not None and route.tenant_per_second:
            for _ in emails:
                dispatcher.limiter.acquire(f"tenant:{route.tenant_id}", route.tenant_per_second)
        answers: list[SendResult | SendError] = (
            via(emails, route.providers) if via is not None
            else sender.send_batch(emails)  # type: ignore[attr-defined]
        )
        first = answers[0] if answers else None
        if isinstance(first, SendError) and all(a is first for a in answers):
            raise first  # the request's answer, the same for everyone: retried as a whole
        return answers

    try:
        answers = call_with_retries(attempt, dispatcher.policy, attempts, deadline=route.deadline)
    except SendError as err:
        spent = attempts.count - start
        return [dispatcher.outcome_of(err, p + spent, route, name) for p in prior]
    spent = attempts.count - start
    return [
        Outcome(DeliveryStatus.SENT, "", answer.provider or name, answer.message_id, p + spent)
        if isinstance(answer, SendResult)
        else dispatcher.outcome_of(answer, p + spent, route, name)
        for answer, p in zip(answers, prior, strict=True)
    ]


def open_batch_send(
    run: TaskRun, template: CompiledTemplate, route: Route, dispatcher: Dispatcher
) -> BatchSend | None:
    """The job's batched sending, or ``None`` when it goes per recipient (decided once per job)."""
    mode = settle_send_mode(run, decide_send_mode(run.settings, template, route, dispatcher))
    if mode.mode != BATCHED or not substitutable(template.spec):
        return None
    size = batch_size(run.settings)
    return BatchSend(run.jobs.skeleton(run.job, template), size)
