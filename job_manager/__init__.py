"""Job Manager: criteria → roster → tasks, windowed and resumable."""

from job_manager.manager import ExpansionOutcome, expand_roster, fail_expansion

__all__ = ["ExpansionOutcome", "expand_roster", "fail_expansion"]
