"""What the Functions host reads besides the code: ``host.json`` and app settings.

Kept apart from ``core.settings`` on purpose: triggers may name *any* app setting (``%NAME%`` in a
schedule, a ``connection`` name), so devhost resolves names the way the host does, environment
first and then ``local.settings.json`` ``Values``, instead of going through typed ``Settings`` fields.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.settings import PROJECT_ROOT, devstore_connection_string

HOST_JSON = PROJECT_ROOT / "host.json"
DEFAULT_STORAGE_SETTING = "AzureWebJobsStorage"

JOB_HOST_PREFIX = "AzureFunctionsJobHost__"
QUEUE_KEYS = ("batchSize", "newBatchThreshold", "maxPollingInterval", "visibilityTimeout",
              "maxDequeueCount", "messageEncoding")

_TIMESPAN = re.compile(r"^(?:(?P<days>\d+)\.)?(?P<h>\d+):(?P<m>\d{1,2}):(?P<s>\d{1,2}(?:\.\d+)?)$")
_SETTING_REF = re.compile(r"%([^%]+)%")


class HostConfigError(ValueError):
    """host.json or an app setting a trigger needs is missing or malformed."""


def parse_timespan(value: str | float | int) -> float:
    """Seconds in a .NET TimeSpan string such as ``"00:00:02"`` or ``"1.00:00:00"``.

    host.json writes durations that way; numbers are accepted as seconds for convenience.
    """
    if isinstance(value, (int, float)):
        return float(value)
    match = _TIMESPAN.match(value.strip())
    if not match:
        raise HostConfigError(f"not a TimeSpan (expected hh:mm:ss): {value!r}")
    days = int(match["days"] or 0)
    return days * 86400 + int(match["h"]) * 3600 + int(match["m"]) * 60 + float(match["s"])


@dataclass(frozen=True)
class QueueConfig:
    """``extensions.queues`` of host.json, with the host's defaults for what is left out."""

    batch_size: int = 16
    new_batch_threshold: int = 8
    max_polling_interval: float = 60.0
    visibility_timeout: float = 0.0
    max_dequeue_count: int = 5
    message_encoding: str = "base64"
    lease_seconds: float = 600.0  # how long a received message stays invisible while it runs

    @property
    def max_in_flight(self) -> int:
        """The real host's concurrency bound per queue function: batchSize + newBatchThreshold."""
        return self.batch_size + self.new_batch_threshold

    @classmethod
    def from_host_json(cls, data: dict[str, Any]) -> QueueConfig:
        """Build from a parsed host.json document."""
        queues = dict(data.get("extensions", {}).get("queues", {}))
        batch = int(queues.get("batchSize", cls.batch_size))
        if not 1 <= batch <= 32:
            raise HostConfigError("extensions.queues.batchSize must be 1..32 (a receive's limit)")
        encoding = str(queues.get("messageEncoding", "base64")).lower()
        if encoding not in ("base64", "none"):
            raise HostConfigError("extensions.queues.messageEncoding must be 'base64' or 'none'")
        lease = parse_timespan(data["functionTimeout"]) if data.get("functionTimeout") else 600.0
        return cls(
            batch_size=batch,
            new_batch_threshold=int(queues.get("newBatchThreshold", batch // 2)),
            max_polling_interval=parse_timespan(queues.get("maxPollingInterval", "00:01:00")),
            visibility_timeout=parse_timespan(queues.get("visibilityTimeout", "00:00:00")),
            max_dequeue_count=int(queues.get("maxDequeueCount", 5)),
            message_encoding=encoding,
            lease_seconds=max(lease, 1.0),
        )


def load_queue_config(path: Path = HOST_JSON) -> QueueConfig:
    """Queue semantics from host.json (the project's own unless told otherwise).

    App settings named ``AzureFunctionsJobHost__extensions__queues__<key>`` (and
    ``AzureFunctionsJobHost__functionTimeout``) override the file, as in the real host; that is
    how a test or one environment changes, say, ``maxDequeueCount`` without another host.json.
    """
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        data = {}
    except ValueError as err:
        raise HostConfigError(f"{path.name} is not valid JSON") from err
    queues = data.setdefault("extensions", {}).setdefault("queues", {})
    for key in QUEUE_KEYS:
        override = resolve_app_setting(f"{JOB_HOST_PREFIX}extensions__queues__{key}")
        if override is not None:
            queues[key] = override
    timeout = resolve_app_setting(f"{JOB_HOST_PREFIX}functionTimeout")
    if timeout is not None:
        data["functionTimeout"] = timeout
    return QueueConfig.from_host_json(data)


def _local_settings_values() -> dict[str, Any]:
    path = Path(os.environ.get("MAILROOM_LOCAL_SETTINGS", PROJECT_ROOT / "local.settings.json"))
    if not path.is_file():
        return {}
    try:
        return dict(json.loads(path.read_text()).get("Values", {}))
    except (ValueError, AttributeError) as err:
        raise HostConfigError(f"{path.name} is not valid JSON with a 'Values' map") from err


def resolve_app_setting(name: str) -> str | None:
    """An app setting's value: environment first, then ``local.settings.json`` Values.

    That is the Functions host's order locally; read on every call so a test that sets an
    environment variable sees it.
    """
    value = os.environ.get(name)
    if value is not None:
        return value
    found = _local_settings_values().get(name)
    return None if found is None else str(found)


def expand_app_settings(text: str) -> str:
    """Replace each ``%NAME%`` in a binding property by that app setting, as the host does.

    An unresolved name fails indexing (the real host refuses to start the function too).
    """
    def _sub(match: re.Match[str]) -> str:
        value = resolve_app_setting(match[1])
        if value is None:
            raise HostConfigError(
                f"app setting %{match[1]}% is not set (environment or local.settings.json Values)"
            )
        return value

    return _SETTING_REF.sub(_sub, text)


def resolve_connection_string(connection: str | None) -> str:
    """The storage connection string a trigger's ``connection`` names.

    Like the host: the setting itself, else ``AzureWebJobs<name>``; an absent
    ``AzureWebJobsStorage`` means the development storage, and ``UseDevelopmentStorage=true``
    is expanded because the storage SDKs do not understand it.
    """
    name = connection or DEFAULT_STORAGE_SETTING
    value = resolve_app_setting(name) or resolve_app_setting(f"AzureWebJobs{name}")
    if not value:
        if name != DEFAULT_STORAGE_SETTING:
            raise HostConfigError(f"connection setting {name!r} is not set")
        value = "UseDevelopmentStorage=true"
    if value.strip().lower().startswith("usedevelopmentstorage=true"):
        return devstore_connection_string()
    return value.strip()


def is_function_disabled(function_name: str) -> bool:
    """Honour ``AzureWebJobs.<name>.Disabled``, the host's switch to turn one function off."""
    value = resolve_app_setting(f"AzureWebJobs.{function_name}.Disabled")
    return (value or "").strip().lower() in ("1", "true", "yes")
