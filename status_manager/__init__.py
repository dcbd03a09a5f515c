"""Status Manager: job counts, closing jobs and campaigns, lease recovery, window refill."""

from status_manager.manager import StatusReport, close_finished_jobs

__all__ = ["StatusReport", "close_finished_jobs"]
