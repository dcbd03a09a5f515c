"""The bench's printed table (plain text, also pasted into the README's Performance section)."""

from __future__ import annotations

from typing import Any

from bench.cost import usd_per_million_emails

TARGETS = {
    "storage_requests_per_email": 0.05,
    "ratio_to_sdk_ceiling": 0.5,
    "ratio_to_baseline": 20,
    "cpu_us_per_email": 1000,
    "peak_rss_mb": 300,
    "fairness_ratio": 2,
}

# Issue 18: SMTP's Python CPU per email at most this many times the SendGrid path's (same run).
SMTP_CPU_RATIO = 2


def _f(value: Any, digits: int = 0) -> str:
    if value is None:
        return "–"
    if isinstance(value, str):
        return value
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}"


def _verdict(key: str, value: float | None) -> str:
    if value is None:
        return "not measured"
    target = TARGETS[key]
    ok = value >= target if key in ("ratio_to_sdk_ceiling", "ratio_to_baseline") else value <= target
    return "met" if ok else "NOT met"


def render_table(results: dict[str, Any]) -> str:
    ceiling = results["ceiling"]
    lines = [
        f"Mailroom bench, {results['date']}, {results['machine']}",
        "",
        "Azurite ceiling (single client thread)",
        f"  batched table writes/s, azure-data-tables SDK   {_f(ceiling['raw_batch_writes_per_second'])}",
        f"  batched table writes/s, lean client            {_f(ceiling['lean_batch_writes_per_second'])}",
        f"  queue sends/s                                  {_f(ceiling['queue_sends_per_second'])}",
        f"  queue receive+deletes/s                        {_f(ceiling['queue_receive_deletes_per_second'])}",
        "",
        "| run | recipients | hosts | emails/s | storage req/email | host polling req/email | "
        "CPU µs/email | peak RSS MB/host | wall s | $/1M emails (storage) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    rows = [(f"Mailroom, SendGrid {r.get('send_path', 'batched')}", r) for r in results.get("mailroom", [])]
    rows += [(f"Mailroom, SendGrid {r['send_path']}", r) for r in results.get("other_send_paths", [])]
    rows += [("Mailroom scale-out", r) for r in results.get("scale_out", [])]
    rows += [("Mailroom over SMTP (local sink)", results["smtp"])] if results.get("smtp") else []
    for label, r in rows:
        cost = usd_per_million_emails(r["requests_by_operation"], r["roster_size"])
        lines.append(
            f"| {label} | {_f(r['roster_size'])} | {r['hosts']} | {_f(r['emails_per_second'])} | "
            f"{_f(r['storage_requests_per_email'], 4)} | {_f(r['host_polling_requests_per_email'], 4)} | "
            f"{_f(r['cpu_us_per_email'])} | {' / '.join(_f(x) for x in r['peak_rss_mb_per_host'])} | "
            f"{_f(r['seconds'], 1)} | {cost:.3f} |"
        )
    base = results.get("baseline")
    if base:
        cost = usd_per_million_emails(base["requests_by_operation"], base["recipients"])
        lines.append(
            f"| seed design (1 msg + 1 record per recipient) | {_f(base['recipients'])} | 1 (8 threads) | "
            f"{_f(base['emails_per_second'])} | {_f(base['storage_requests_per_email'], 2)} | – | "
            f"{_f(base['cpu_us_per_email'])} | {_f(base['peak_rss_mb'])} | {_f(base['seconds'], 1)} | "
            f"{cost:.3f} |"
        )
    lines += [
        "",
        "Stages of the largest run (seconds): "
        + ", ".join(
            f"{k} {_f(v, 1)}" for k, v in (results.get("mailroom") or [{}])[-1].get("stages", {}).items()
        ),
    ]
    expansion = results.get("expansion")
    if expansion:
        lines.append(
            f"Roster expansion only, {_f(expansion['recipients'])} recipients ({expansion['azurite']}): "
            f"{_f(expansion['expansion_seconds'], 1)} s, "
            f"{_f(expansion['expansion_recipients_per_second'])}/s, "
            f"{_f(expansion['cpu_us_per_recipient'])} µs CPU/recipient, "
            f"peak RSS {_f(expansion['peak_rss_mb'])} MB"
        )
    million = results.get("million")
    if million:
        m = million
        lines.append(
            f"Through the API, {_f(m['recipients'])} recipients: import/s per {_f(m['slice_size'])} "
            f"{m['import_contacts_per_second_by_slice']}, expansion/s per slice "
            f"{m['expansion_recipients_per_second_by_slice']}, {_f(m['emails_per_second'])} emails/s, "
            f"{m['storage_requests_per_email']:.4f} req/email, {_f(m['cpu_us_per_email'])} µs CPU/email, "
            f"peak RSS {m['peak_rss_mb_per_host']} MB, counts add up: {m['counts_add_up']}, "
            f"sent twice: {m['sent_twice']}"
        )
    spy = (results.get("mailroom") or [{}])[-1].get("profile")
    if spy:
        lines += ["", "Where host 0's CPU went in the largest run (py-spy, share of busy samples):"]
        lines += [f"  self {share * 100:5.1f}%  {name}" for name, share in spy["self"][:10]]
        wanted = (
            "providers/",
            "task_manager/",
            "job_manager/",
            "status_manager/",
            "core/",
            "jinja2/",
            "tables/",
            "queue/",
            "json/",
        )
        picked = [(n, v) for n, v in spy["inclusive"] if n.startswith(wanted)][:12]
        lines += [f"  incl {share * 100:5.1f}%  {name}" for name, share in picked]
    latency = results.get("providers_latency")
    if latency:
        lines += ["", "Provider latency (python -m bench.providers_latency):", latency["output"].rstrip()]
    if results.get("other_send_path"):
        lines += [
            "",
            f"SendGrid paths side by side, {_f(results['recipients'])} recipients (issue 18):",
            f"  {results['send_path']}: {_f(results['emails_per_second'])} emails/s = "
            f"{_f(results['ratio_to_lean_ceiling'], 3)}× the lean ceiling, "
            f"{_f(results['cpu_us_per_email'])} µs CPU/email, "
            f"{_f(results['storage_requests_per_email'], 4)} storage req/email",
            f"  {results['other_send_path']}: {_f(results['other_emails_per_second'])} emails/s = "
            f"{_f(results['other_ratio_to_lean_ceiling'], 3)}× the lean ceiling, "
            f"{_f(results['other_cpu_us_per_email'])} µs CPU/email, "
            f"{_f(results['other_storage_requests_per_email'], 4)} storage req/email",
            f"  CPU per email {results['send_path']} ÷ {results['other_send_path']}: "
            f"{_f(results['cpu_ratio_to_other_send_path'], 2)}× (target ≤ 0.4×)",
        ]
    lines += ["", "DESIGN §9 targets (largest end-to-end run):"]
    for key, target in TARGETS.items():
        value = results.get(key)
        lines.append(f"  {key:<28} {_f(value, 3):>12}   target {target:<6} {_verdict(key, value)}")
    if results.get("smtp_cpu_us_per_email") is not None:
        ratio = results.get("smtp_cpu_ratio_to_sendgrid")
        verdict = "not measured" if ratio is None else ("met" if ratio <= SMTP_CPU_RATIO else "NOT met")
        lines.append(
            f"  SMTP: {_f(results['smtp_emails_per_second'])} emails/s, "
            f"{_f(results['smtp_cpu_us_per_email'])} µs CPU/email = {_f(ratio, 2)}× SendGrid "
            f"{results.get('smtp_compared_with', '')}'s"
            f"   target {SMTP_CPU_RATIO}×   {verdict}"
        )
    largest = (results.get("mailroom") or [{}])[-1]
    lines.append(
        f"  small job idle → loaded (s)  {_f(largest.get('small_job_idle_seconds'), 1)}"
        f" → {_f(largest.get('small_job_loaded_seconds'), 1)}"
    )
    if results.get("usd_per_million_emails") is not None:
        lines.append(
            f"  storage $ per 1M emails (prices {results['prices_as_of']}): Mailroom "
            f"{results['usd_per_million_emails']:.3f}, seed design "
            f"{_f(results.get('baseline_usd_per_million_emails'), 3)}"
        )
    return "\n".join(lines)
