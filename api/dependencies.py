"""Request-scoped access to what ``create_app`` put on ``app.state``.

Routers never build a ``Storage`` or read settings themselves: tests hand ``create_app``
their own (a namespaced Storage on Azurite), and production gets the process-wide ones.
Tables and queues are created lazily on the first request that needs storage, so importing
the app (the Functions host does that while indexing) never touches the network.
"""

from __future__ import annotations

import threading
from typing import Annotated

from fastapi import Depends, Request

from core.settings import Settings
from core.storage import Storage


class ResourceGate:
    """Runs ``storage.ensure_resources()`` once per process, retrying after a failure."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ready = False

    def ensure(self, storage: Storage) -> None:
        if self._ready:
            return
        with self._lock:
            if not self._ready:
                storage.ensure_resources()  # a StorageError here is a 503; the next request retries
                self._ready = True


def get_settings(request: Request) -> Settings:
    """The app's settings (``create_app``'s argument or ``core.settings.get_settings()``)."""
    return request.app.state.settings


def get_raw_storage(request: Request) -> Storage:
    """The app's Storage without the first-use table creation (health checks use this)."""
    return request.app.state.storage


def get_storage(request: Request) -> Storage:
    """The app's Storage, with tables and queues guaranteed to exist."""
    storage: Storage = request.app.state.storage
    request.app.state.resource_gate.ensure(storage)
    return storage


SettingsDep = Annotated[Settings, Depends(get_settings)]
StorageDep = Annotated[Storage, Depends(get_storage)]
