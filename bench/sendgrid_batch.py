"""``python -m bench.sendgrid_batch``: the sending thread's CPU per email, one request per recipient
against one request for a batch (SendGrid personalizations), in process against the simulator.

Both paths send the same recipients of the bench's template through the real ``sendgrid``
library and ``providers.sendgrid``; the per-recipient path renders each message whole, the
batch path renders the job's skeleton once and each recipient's subject and substitutions.
CPU is ``time.thread_time`` of the sending thread (the simulator runs in other threads).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from core.templates import TemplateSpec, build_context, compile_template, render_skeleton
from devhost.sendgrid_sim import SendGridSimulator
from devhost.stack import SIMULATOR_KEY, serve_in_thread
from providers.base import OutboundEmail
from providers.sendgrid import SendGridProvider

TEMPLATE = TemplateSpec(
    subject="Hello {{ contact.name }}",
    text="Hi {{ contact.name }}, your plan is {{ contact.attributes.plan }}.\n"
    "Unsubscribe: {{ unsubscribe_url }}",
    html="<p>Hi {{ contact.name }}, your plan is {{ contact.attributes.plan }}.</p>"
    '<p><a href="{{ unsubscribe_url }}">Unsubscribe</a></p>',
    from_email="news@example.org",
    from_name="Bench",
)


def _contexts(count: int) -> list[dict[str, Any]]:
    return [
        build_context(
            {"email": f"r{i:07d}@example.com", "name": f"Recipient {i}", "attributes": {"plan": "pro"}},
            "Bench", f"https://mailroom.example/api/v1/unsubscribe/token{i:07d}",
        )
        for i in range(count)
    ]


def _ids(i: int) -> dict[str, str]:
    return {"tenant_id": "t1", "job_id": "j1", "task_id": "00001", "contact_id": f"c{i:016x}"}


def _unsubscribe(ctx: dict[str, Any]) -> dict[str, str]:
    return {"List-Unsubscribe": f"<{ctx['unsubscribe_url']}>"}


def per_recipient(provider: SendGridProvider, contexts: list[dict[str, Any]]) -> float:
    compiled = compile_template(TEMPLATE)
    started = time.thread_time()
    for i, ctx in enumerate(contexts):
        rendered = compiled.render(ctx)
        provider.send(OutboundEmail(
            to_email=ctx["contact"]["email"], to_name=ctx["contact"]["name"], subject=rendered.subject,
            from_email=TEMPLATE.from_email, from_name=TEMPLATE.from_name, html=rendered.html,
            text=rendered.text, headers=_unsubscribe(ctx), custom_args=_ids(i),
        ))
    return (time.thread_time() - started) / len(contexts)


def batched(provider: SendGridProvider, contexts: list[dict[str, Any]], size: int | None = None) -> float:
    """The recipients in requests of ``size`` (all in one when ``None``), skeleton rendered once."""
    started = time.thread_time()
    skeleton = render_skeleton(TEMPLATE, "Bench")
    size = size or len(contexts)
    for first in range(0, len(contexts), size):
        messages = []
        for i in range(first, min(len(contexts), first + size)):
            ctx = contexts[i]
            message, values = skeleton.message_for(ctx)
            messages.append(OutboundEmail(
                to_email=ctx["contact"]["email"], to_name=ctx["contact"]["name"], subject=message.subject,
                from_email=TEMPLATE.from_email, from_name=TEMPLATE.from_name, html=message.html,
                text=message.text, headers=_unsubscribe(ctx), custom_args=_ids(i),
                substitutions=values,
            ))
        outcomes = provider.send_batch(messages)
        assert all(not isinstance(o, Exception) for o in outcomes)
    return (time.thread_time() - started) / len(contexts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--recipients", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch-sizes", type=int, nargs="*", default=[],
                        help="also send the same recipients in requests of each size, side by side "
                        "(e.g. 50 500: a send group against the old default)")
    args = parser.parse_args()
    contexts = _contexts(args.recipients)
    sim = SendGridSimulator(api_key=SIMULATOR_KEY)
    with serve_in_thread(sim.app) as url:
        provider = SendGridProvider(SIMULATOR_KEY, url)
        single = min(per_recipient(provider, contexts) for _ in range(args.rounds))
        batch = min(batched(provider, contexts) for _ in range(args.rounds))
        sized = {n: min(batched(provider, contexts, n) for _ in range(args.rounds)) for n in args.batch_sizes}
        provider.close()
        requests = sim.stats()["requests"]
    print(f"{args.recipients} recipients, best of {args.rounds} rounds ({requests} requests in all)")
    print(f"  one request per recipient: {single * 1e6:7.0f} µs CPU per email (render + send)")
    print(f"  one request for the batch: {batch * 1e6:7.0f} µs CPU per email = {batch / single:.2f}×")
    for n, cpu in sized.items():
        print(f"  requests of {n:>4}:         {cpu * 1e6:7.0f} µs CPU per email = {cpu / single:.2f}×")


if __name__ == "__main__":
    main()
