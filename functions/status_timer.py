"""Timer → Status Manager."""

import azure.functions as func

from functions.runtime import runtime
from functions.telemetry_metrics import record_status_metrics
from privacy.retention import purge_expired_delivery_logs
from status_manager import close_finished_jobs

bp = func.Blueprint()


@bp.function_name("status_manager")
@bp.timer_trigger(arg_name="timer", schedule="%STATUS_MANAGER_SCHEDULE%", run_on_startup=False)
def status_manager_timer(timer: func.TimerRequest) -> None:
    rt = runtime()
    report = close_finished_jobs(rt.storage, rt.settings, rt.clock)
    record_status_metrics(rt.storage, report)
    purge_expired_delivery_logs(rt.storage, rt.settings, rt.clock)  # at most hourly (a marker row)
