"""What every host process does first: read the settings, or stop with one line naming the bad one."""

from __future__ import annotations

from core.errors import SettingsError
from core.settings import Settings, get_settings


def checked_settings() -> Settings:
    """The process's settings; a missing or malformed one exits the process with one line.

    ``SystemExit`` with a message prints just that message (no traceback), so the host's log
    shows ``mailroom: setting TASK_SIZE: ...`` and nothing to scroll past.
    """
    try:
        return get_settings()
    except SettingsError as err:
        raise SystemExit(f"mailroom: {err}") from None
