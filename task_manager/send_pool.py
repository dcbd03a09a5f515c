"""Provider calls in flight, shared fairly between the tenants whose tasks run on this host.

A host runs several tasks at once and they share ``SEND_CONCURRENCY`` sending threads. A plain
thread pool serves them first come, first served: a tenant with eight 500-recipient tasks queues
800 sends ahead of a neighbour's single 100-recipient task, which then waits for all of them.
Here each tenant has its own line and the threads take from the lines in turn, so a tenant's
share of the threads does not grow with how many of its tasks the host runs (DESIGN §5,
fairness). A lone tenant still gets every thread: the pool never idles while work is waiting.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class PoolClosed(RuntimeError):
    """Work was handed to a pool after ``shutdown``."""


class _Job(Generic[T, R]):
    __slots__ = ("fn", "item", "future", "weight")

    def __init__(self, fn: Callable[[T], R], item: T, weight: int = 1) -> None:
        self.fn, self.item, self.weight = fn, item, weight
        self.future: Future[R] = Future()


class FairSendPool:
    """``workers`` threads serving per-key lines round-robin (one item per line per turn).

    Turns are weighed in sends: an item of ``weight`` n (a batch of n recipients in one request)
    counts as n sends, and the next item comes from the waiting line served least so far (a
    line that starts waiting starts level with the least served), so a tenant whose recipients
    go out in batches takes no bigger share of the sends than one sending them one by one.
    """

    def __init__(self, workers: int, name: str = "send") -> None:
        self._lines: OrderedDict[str, deque[_Job]] = OrderedDict()
        self._served: dict[str, int] = {}  # sends handed out per waiting line (weights summed)
        self._ready = threading.Condition()
        self._closed = False
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{n}", daemon=True)
            for n in range(max(1, workers))
        ]
        for thread in self._threads:
            thread.start()

    def map(self, key: str, fn: Callable[[T], R], items: Iterable[T], weight: int = 1) -> list[R]:
        """``fn`` over ``items`` in ``key``'s line, each counted as ``weight`` sends; results in
        order, the first error re-raised."""
        jobs = [_Job(fn, item, weight) for item in items]
        with self._ready:
            if self._closed:
                raise PoolClosed("the send pool was shut down")
            if key not in self._lines:
                self._served[key] = min(self._served.values(), default=0)
            line = self._lines.setdefault(key, deque())
            line.extend(jobs)
            self._ready.notify(len(jobs))
        return [job.future.result() for job in jobs]

    def waiting(self) -> dict[str, int]:
        """Items not yet started, per key (for tests and diagnostics)."""
        with self._ready:
            return {key: len(line) for key, line in self._lines.items()}

    def shutdown(self) -> None:
        """Finish what was handed in, then stop the threads."""
        with self._ready:
            self._closed = True
            self._ready.notify_all()
        for thread in self._threads:
            thread.join()

    def _next(self) -> _Job | None:
        with self._ready:
            while not self._lines:
                if self._closed:
                    return None
                self._ready.wait()
            key = min(self._lines, key=self._served.__getitem__)  # the first of the least served
            line = self._lines[key]
            job = line.popleft()
            self._served[key] += job.weight
            if line:
                self._lines.move_to_end(key)  # this line's next item waits for the others' turn
            else:
                del self._lines[key], self._served[key]
            return job

    def _work(self) -> None:
        while (job := self._next()) is not None:
            if not job.future.set_running_or_notify_cancel():
                continue
            try:
                job.future.set_result(job.fn(job.item))
            except BaseException as err:  # noqa: BLE001 - handed to the caller through the future
                job.future.set_exception(err)
