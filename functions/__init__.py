"""Trigger adapters (Blueprints): decode the trigger, call a manager, nothing else."""

from functions import campaign_timer, events_queue, job_queue, status_timer, task_queue

BLUEPRINTS = (campaign_timer.bp, job_queue.bp, task_queue.bp, status_timer.bp, events_queue.bp)

__all__ = ["BLUEPRINTS"]
