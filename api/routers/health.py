"""Health: is storage reachable, and how deep are the queues (API.md "Health").

No auth, so load balancers and uptime checks can call it. It answers with its own body
(not the error shape) even when degraded, because monitors read ``storage`` and ``queues``.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from api.dependencies import get_raw_storage
from api.errors import RETRY_AFTER_SECONDS
from core.errors import StorageError
from core.storage import ALL_QUEUES, POISON_SUFFIX, Storage

router = APIRouter(tags=["health"])


class HealthPublic(BaseModel):
    status: str
    storage: str
    queues: dict[str, int]


def queue_names() -> list[str]:
    return [name for base in ALL_QUEUES for name in (base, base + POISON_SUFFIX)]


@router.get(
    "/health", response_model=HealthPublic,
    responses={503: {"model": HealthPublic, "description": "Storage is down (`Retry-After` set)."}},
)
def health(request: Request, storage: Annotated[Storage, Depends(get_raw_storage)]) -> JSONResponse:
    try:
        storage.ping()
        request.app.state.resource_gate.ensure(storage)  # first call creates the queues it reports
        queues = {name: storage.queue(name).depth() for name in queue_names()}
    except StorageError:
        body = HealthPublic(status="degraded", storage="down", queues={})
        return JSONResponse(body.model_dump(), status_code=503, headers={"Retry-After": RETRY_AFTER_SECONDS})
    return JSONResponse(HealthPublic(status="ok", storage="ok", queues=queues).model_dump())
