"""Timer → Campaign Manager. Every 10 s locally, every minute in Azure (app setting)."""

import azure.functions as func

from campaign_manager import start_due_campaigns
from functions.runtime import runtime

bp = func.Blueprint()


@bp.function_name("campaign_manager")
@bp.timer_trigger(arg_name="timer", schedule="%CAMPAIGN_MANAGER_SCHEDULE%", run_on_startup=False)
def campaign_manager_timer(timer: func.TimerRequest) -> None:
    rt = runtime()
    start_due_campaigns(rt.storage, rt.clock)
