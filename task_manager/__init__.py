"""Task Manager: claim → render → send with retries → record outcomes."""

from task_manager.dispatch import Dispatcher, Outcome
from task_manager.job_cache import JobCache
from task_manager.manager import TaskOutcome, record_task_failure, send_task

__all__ = ["Dispatcher", "Outcome", "TaskOutcome", "JobCache", "record_task_failure", "send_task"]
