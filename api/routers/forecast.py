"""The operator's volume forecast (API.md "Operator": ``GET /forecast``, admin and support keys)."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter

from api.auth import OperatorReaderDep
from api.dependencies import SettingsDep, StorageDep
from api.routers.conventions import ERROR_RESPONSES
from api.schemas import VolumeForecastPublic
from job_manager.forecast import volume_forecast

router = APIRouter(tags=["operator"], responses=ERROR_RESPONSES)


@router.get("/forecast", response_model=VolumeForecastPublic)
def get_forecast(
    principal: OperatorReaderDep, storage: StorageDep, settings: SettingsDep
) -> VolumeForecastPublic:
    """Emails scheduled per hour for the next 7 days, across tenants and per provider.

    From the Schedule index and each campaign's audience estimate (cached on the campaign, made
    when missing or stale), spread over the hours at each run's forecast rate; dry runs excluded.
    A support key made for one tenant sees that tenant's runs only.
    """
    only = None if principal.operator_wide else principal.tenant_id  # a tenant's support key: its own
    return VolumeForecastPublic.model_validate(asdict(volume_forecast(storage, settings, only)))
