"""Trigger adapters (Blueprints): decode the trigger, call a manager, nothing else."""

from functions.campaign_timer import bp as campaign_timer
from functions.job_queue import bp as job_queue
from functions.status_timer import bp as status_timer
from functions.task_queue import bp as task_queue

BLUEPRINTS = (campaign_timer, job_queue, task_queue, status_timer)

__all__ = ["BLUEPRINTS"]
