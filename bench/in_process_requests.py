"""``python -m bench.in_process_requests``: storage requests per email of one in-process campaign.

The managers run in this process (as ``tests/pipeline.py`` drives them) on a fresh Azurite,
sending through the real ``sendgrid`` client to the SendGrid simulator, with a
``RequestCounter`` on the one ``Storage``. No host polling is counted (the devhost's queue
reads are the host's, not Mailroom's), so the figure isolates what the managers spend: how a
change to the send path moves requests per email, in seconds rather than a full ``make bench``.
"""

from __future__ import annotations

import argparse
import json
import secrets
import time

from core.request_count import RequestCounter
from core.settings import load_settings
from core.storage import Storage
from devhost.azurite import start_azurite
from providers.sendgrid import SendGridProvider
from tests.pipeline import InProcessHost, add_contacts, job_of, make_tenant, schedule_campaign
from tests.sim_fixtures import running_sendgrid_simulator


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.in_process_requests", description=__doc__)
    parser.add_argument("--recipients", type=int, default=5000)
    args = parser.parse_args(argv)
    azurite = start_azurite()
    try:
        settings = load_settings(AzureWebJobsStorage=azurite.connection_string)
        counter = RequestCounter()
        storage = Storage(settings.connection_string, namespace="b" + secrets.token_hex(4),
                          request_counter=counter)
        storage.ensure_resources()
        with running_sendgrid_simulator() as (_, url):
            host = InProcessHost(storage, settings, SendGridProvider("SG.bench", url))
            tenant = make_tenant(storage)
            add_contacts(storage, tenant, [{"email": f"r{i}@example.org"} for i in range(args.recipients)])
            campaign = schedule_campaign(storage, tenant)
            before, started = counter.snapshot(), time.monotonic()
            host.run_until(lambda: (j := job_of(storage, campaign)) is not None and j.status == "completed",
                           timeout=600)
            after = counter.snapshot()
        spent = {k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) != before.get(k, 0)}
        job = job_of(storage, campaign)
        print(json.dumps({
            "recipients": args.recipients,
            "send_concurrency": settings.send_concurrency,
            "storage_requests": sum(spent.values()),
            "storage_requests_per_email": round(sum(spent.values()) / args.recipients, 4),
            "by_operation": dict(sorted(spent.items())),
            "counts": {k: v for k, v in (job.counts if job else {}).items() if v},
            "seconds": round(time.monotonic() - started, 1),
        }, indent=2))
    finally:
        azurite.stop()


if __name__ == "__main__":
    main()
