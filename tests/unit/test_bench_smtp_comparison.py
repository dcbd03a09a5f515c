"""The bench holds the SMTP phase against the SendGrid per-recipient path (issue 18's target)."""

from __future__ import annotations

from bench.__main__ import smtp_comparison_run


def run(path: str, size: int, cpu: float) -> dict[str, object]:
    return {"send_path": path, "roster_size": size, "cpu_us_per_email": cpu}


def test_the_per_recipient_run_of_the_smtp_phases_size_is_preferred():
    results = {"mailroom": [run("batched", 10_000, 120), run("batched", 100_000, 130)],
               "other_send_paths": [run("per-recipient", 100_000, 370), run("per-recipient", 10_000, 400)]}
    assert smtp_comparison_run(results, 10_000) == run("per-recipient", 10_000, 400)


def test_without_one_of_that_size_the_largest_per_recipient_run_is_used_never_the_batched_one():
    results = {"mailroom": [run("batched", 10_000, 120), run("batched", 100_000, 130)],
               "other_send_paths": [run("per-recipient", 100_000, 370)]}
    assert smtp_comparison_run(results, 10_000) == run("per-recipient", 100_000, 370)


def test_a_run_with_only_the_batched_path_is_compared_with_it_and_none_without_sendgrid_runs():
    assert smtp_comparison_run({"mailroom": [run("batched", 500, 120)]}, 200) == run("batched", 500, 120)
    assert smtp_comparison_run({"mailroom": []}, 200) is None
