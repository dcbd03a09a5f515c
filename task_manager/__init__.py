"""Task Manager: claim → render → send with retries → record outcomes."""

from task_manager.dispatch import Dispatcher, Outcome
from task_manager.manager import TaskOutcome, TemplateCache, record_task_failure, send_task

__all__ = ["Dispatcher", "Outcome", "TaskOutcome", "TemplateCache", "record_task_failure", "send_task"]
