"""Calling a user function the way the Python worker does, sync or ``async def``."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any


def call_user_function(fn: Callable[..., Any], **kwargs: Any) -> Any:
    """Run ``fn(**kwargs)`` to completion in the calling thread.

    Each devhost worker thread has no event loop of its own, so a coroutine function gets a
    fresh one with ``asyncio.run``; that keeps concurrent invocations independent.
    """
    result = fn(**kwargs)
    if inspect.isawaitable(result):
        return asyncio.run(_await(result))
    return result


async def _await(awaitable: Any) -> Any:
    return await awaitable
