"""The send pool shares its threads between tenants in turn (DESIGN §5, fairness)."""

from __future__ import annotations

import threading
import time

import pytest

from task_manager.send_pool import FairSendPool, PoolClosed


def _wait_for(predicate, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        time.sleep(0.005)


def test_map_returns_results_in_the_order_of_the_items() -> None:
    pool = FairSendPool(4)
    try:
        assert pool.map("t1", lambda n: n * n, range(50)) == [n * n for n in range(50)]
    finally:
        pool.shutdown()


def test_an_error_in_one_item_reaches_the_caller() -> None:
    pool = FairSendPool(2)

    def boom(n: int) -> int:
        if n == 3:
            raise ValueError("three")
        return n

    try:
        with pytest.raises(ValueError, match="three"):
            pool.map("t1", boom, range(6))
    finally:
        pool.shutdown()


def test_a_tenant_with_a_long_line_does_not_keep_a_neighbour_waiting() -> None:
    pool = FairSendPool(1)
    gate = threading.Event()
    order: list[str] = []
    threads: list[threading.Thread] = []

    def run(key: str, items: list[str]) -> None:
        thread = threading.Thread(target=pool.map, args=(key, lambda item: order.append(item), items))
        thread.start()
        threads.append(thread)

    try:
        threads.append(threading.Thread(target=pool.map, args=("big", lambda _: gate.wait(5), [0])))
        threads[-1].start()
        _wait_for(lambda: pool.waiting() == {})  # the only thread is held by the gate
        run("big", [f"big-{n}" for n in range(10)])
        _wait_for(lambda: pool.waiting().get("big") == 10)
        run("small", ["small-0", "small-1"])
        _wait_for(lambda: pool.waiting().get("small") == 2)
        gate.set()
        for thread in threads:
            thread.join(5)
    finally:
        pool.shutdown()
    assert order[:4] == ["big-0", "small-0", "big-1", "small-1"]
    assert len(order) == 12


def test_a_lone_tenant_gets_every_thread() -> None:
    pool = FairSendPool(4)
    all_running = threading.Barrier(4, timeout=5)  # breaks unless 4 items run at the same time
    try:
        assert pool.map("only", lambda _: all_running.wait() >= 0, range(4)) == [True] * 4
    finally:
        pool.shutdown()


def test_work_handed_in_after_shutdown_is_refused() -> None:
    pool = FairSendPool(1)
    pool.shutdown()
    with pytest.raises(PoolClosed):
        pool.map("t1", str, [1])
