"""Timer → Status Manager."""

import azure.functions as func

from functions.runtime import runtime
from status_manager import close_finished_jobs

bp = func.Blueprint()


@bp.function_name("status_manager")
@bp.timer_trigger(arg_name="timer", schedule="%STATUS_MANAGER_SCHEDULE%", run_on_startup=False)
def status_manager_timer(timer: func.TimerRequest) -> None:
    rt = runtime()
    close_finished_jobs(rt.storage, rt.settings, rt.clock)
