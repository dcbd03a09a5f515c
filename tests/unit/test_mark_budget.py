"""A host's budget of ``sending`` marks: bounded, waited for while holding nothing, shared in turn."""

from __future__ import annotations

import threading

from core.settings import load_settings
from devhost.stack import wait_for
from task_manager.mark_budget import MarkBudget, MarkShare, mark_budget_size


def start_taking(budget: MarkBudget, tenant: str, recipients: int, granted: list[str]) -> threading.Thread:
    """A task waiting for its share in a thread; its tenant is appended to ``granted`` when served."""
    waiting_before = sum(budget.waiting().values())
    thread = threading.Thread(target=lambda: (budget.take(tenant, recipients), granted.append(tenant)),
                              daemon=True)
    thread.start()
    wait_for(lambda: sum(budget.waiting().values()) > waiting_before, 5, f"{tenant}'s task to queue")
    return thread


def test_the_budget_is_twice_the_sending_threads_or_twice_a_group_when_a_group_is_larger():
    default = load_settings()
    assert mark_budget_size(default.send_concurrency, default.send_group_size) == 2 * default.send_concurrency
    assert mark_budget_size(send_concurrency=50, send_group_size=50) == 100  # the defaults: 2 x threads
    assert mark_budget_size(send_concurrency=32, send_group_size=50) == 100
    assert mark_budget_size(send_concurrency=8, send_group_size=8) == 16
    assert mark_budget_size(send_concurrency=64, send_group_size=50) == 128
    assert mark_budget_size(send_concurrency=4, send_group_size=500) == 100  # a group is at most 50


def test_a_task_waits_for_its_share_until_another_task_gives_its_share_back():
    budget = MarkBudget(100)
    first, second = MarkShare(budget, "t1", 50), MarkShare(budget, "t1", 50)
    first.hold()
    second.hold()
    granted: list[str] = []

    third = start_taking(budget, "t2", 50, granted)
    assert granted == [] and budget.in_use() == 100

    first.give_back()
    third.join(5)
    assert granted == ["t2"] and budget.in_use() == 100


def test_holding_a_share_again_takes_nothing_more():
    budget = MarkBudget(100)
    share = MarkShare(budget, "t1", 50)
    share.hold()
    share.hold()  # the next group of the same task: its batch records the last group and marks this one

    assert budget.in_use() == 50
    share.give_back()
    share.give_back()
    assert budget.in_use() == 0


def test_a_share_is_at_most_half_the_budget_so_a_waiting_task_is_always_served():
    budget = MarkBudget(16)

    assert budget.take("t1", 50) == 8


def test_waiting_tenants_are_served_in_turn_not_in_arrival_order():
    budget = MarkBudget(2)
    holders = [MarkShare(budget, "big", 1), MarkShare(budget, "big", 1)]
    for share in holders:
        share.hold()
    granted: list[str] = []
    threads = [start_taking(budget, "big", 1, granted) for _ in range(3)]
    threads.append(start_taking(budget, "small", 1, granted))

    for served in range(1, 5):
        budget.give_back(1)
        wait_for(lambda served=served: len(granted) == served, 5, "the next task to be served")

    assert granted == ["big", "small", "big", "big"]
    for thread in threads:
        thread.join(5)


def test_a_share_taken_before_the_claim_gives_back_what_a_smaller_task_does_not_need():
    budget = MarkBudget(100)
    share = MarkShare(budget, "t1", 50)
    share.hold()

    share.resize(3)  # the claimed task has three recipients to send
    assert budget.in_use() == 3
    share.give_back()
    assert budget.in_use() == 0
