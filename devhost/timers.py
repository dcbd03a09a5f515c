"""Timer triggers: fire a function on its NCRONTAB schedule, as the Functions host does.

Schedules have six fields, seconds first, in UTC (``*/10 * * * * *``). Each timer runs in its
own thread and calls the function in that thread, so a run can never overlap the previous one:
occurrences that pass while it runs are skipped, which is the real host's behaviour too.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from azure.functions.timer import TimerRequest
from croniter import croniter

from devhost.hostconfig import HostConfigError, parse_timespan
from devhost.invoke import call_user_function
from devhost.logs import describe_exception, log_event

_TIMESPAN_SCHEDULE = re.compile(r"^(?:\d+\.)?\d+:\d{1,2}:\d{1,2}$")
PAST_DUE_AFTER = timedelta(seconds=1)


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Schedule:
    """Next occurrences of an NCRONTAB expression (or a ``hh:mm:ss`` interval)."""

    def __init__(self, expression: str) -> None:
        self.expression = expression.strip()
        self._interval: timedelta | None = None
        if _TIMESPAN_SCHEDULE.match(self.expression):
            self._interval = timedelta(seconds=parse_timespan(self.expression))
            if self._interval <= timedelta(0):
                raise HostConfigError(f"timer interval must be positive: {expression!r}")
            return
        if len(self.expression.split()) != 6 or not croniter.is_valid(
            self.expression, second_at_beginning=True
        ):
            raise HostConfigError(
                f"not a 6-field NCRONTAB expression (seconds first): {expression!r}"
            )

    def next_after(self, moment: datetime) -> datetime:
        """The first occurrence strictly after ``moment`` (UTC)."""
        if self._interval is not None:
            return moment + self._interval
        return croniter(self.expression, moment, second_at_beginning=True).get_next(datetime)


class TimerRunner:
    """Runs one timer function on its schedule in a dedicated thread until stopped."""

    def __init__(
        self,
        function_name: str,
        schedule: Schedule,
        user_function: Callable[..., Any],
        arg_name: str,
        run_on_startup: bool = False,
    ) -> None:
        self.function_name = function_name
        self.schedule = schedule
        self.user_function = user_function
        self.arg_name = arg_name
        self.run_on_startup = run_on_startup
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"timer-{function_name}", daemon=True)

    def start(self) -> None:
        """Begin firing (and fire at once when ``runOnStartup`` is set)."""
        log_event("timer.started", function=self.function_name, schedule=self.schedule.expression)
        self._thread.start()

    def request_stop(self) -> None:
        """Fire no more (a run in progress finishes); does not wait."""
        self._stop.set()

    def stop(self, grace_seconds: float = 10.0) -> None:
        """Stop firing; wait up to ``grace_seconds`` for a run in progress to finish."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(grace_seconds)
            if self._thread.is_alive():
                log_event("timer.abandoned", logging.WARNING, function=self.function_name)

    def _run(self) -> None:
        if self.run_on_startup:
            self._fire(past_due=False)
        due = self.schedule.next_after(_utcnow())
        while not self._stop.is_set():
            wait = (due - _utcnow()).total_seconds()
            if wait > 0:
                self._stop.wait(min(wait, 1.0))  # wake now and then: the wall clock may jump
                continue
            self._fire(past_due=_utcnow() - due > PAST_DUE_AFTER)
            # Ticks that passed while the function ran are skipped, not queued up.
            due = self.schedule.next_after(max(_utcnow(), due))

    def _fire(self, past_due: bool) -> None:
        started = time.monotonic()
        log_event("timer.fired", logging.DEBUG, function=self.function_name, past_due=past_due)
        try:
            call_user_function(self.user_function, **{self.arg_name: TimerRequest(past_due=past_due)})
        except Exception as err:  # a failing run must not stop the timer
            log_event(
                "timer.failed", logging.ERROR, function=self.function_name,
                ms=round((time.monotonic() - started) * 1000), **describe_exception(err),
            )
            return
        log_event("timer.done", function=self.function_name, ms=round((time.monotonic() - started) * 1000))
