"""Queue messages: small pydantic models with ids and cursors, never rosters or bodies."""

from __future__ import annotations

import json
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from core.errors import BadMessage

# W3C trace context: version-traceid-parentid-flags (core.telemetry carries traces across queues).
TRACEPARENT_PATTERN = r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$"


class Ticket(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def to_text(self) -> str:
        return self.model_dump_json(exclude_none=True)  # no trace context: no field at all


class JobTicket(Ticket):
    """Asks the Job Manager to expand (or continue expanding) one job's roster."""

    tenant_id: str = Field(min_length=1, max_length=64)
    job_id: str = Field(min_length=1, max_length=64)
    traceparent: str | None = Field(None, pattern=TRACEPARENT_PATTERN)


class TaskTicket(Ticket):
    """Asks the Task Manager to send one task (chunk of recipients) of a job."""

    tenant_id: str = Field(min_length=1, max_length=64)
    job_id: str = Field(min_length=1, max_length=64)
    task_index: int = Field(ge=0)
    traceparent: str | None = Field(None, pattern=TRACEPARENT_PATTERN)


T = TypeVar("T", bound=Ticket)


def parse_ticket(kind: type[T], text: str) -> T:
    """Decode a message body or raise ``BadMessage`` saying what is wrong with it."""
    try:
        return kind.model_validate_json(text)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise BadMessage(f"{kind.__name__} rejected: {where}: {first['msg']}") from err


def ids_in(text: str) -> tuple[str | None, str | None]:
    """Best-effort (tenant_id, job_id) from a message that failed to parse.

    A malformed message that still names its job lets the job show why it was rejected.
    """
    try:
        value = json.loads(text)
    except ValueError:
        return None, None
    if not isinstance(value, dict):
        return None, None
    tenant, job = value.get("tenant_id"), value.get("job_id")
    return (tenant if isinstance(tenant, str) else None, job if isinstance(job, str) else None)
