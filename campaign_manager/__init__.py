"""Campaign Manager: due campaigns → jobs → job tickets."""

from campaign_manager.manager import start_due_campaigns

__all__ = ["start_due_campaigns"]
