"""The transition tables are the only word on which status may follow which."""

from __future__ import annotations

import itertools

import pytest

from core.errors import StateConflict
from core.job_state import (
    CAMPAIGN_FOR_JOB,
    CAMPAIGN_TRANSITIONS,
    JOB_TRANSITIONS,
    IllegalTransition,
    check_campaign_move,
    check_job_move,
)
from core.status import CampaignStatus, JobStatus


@pytest.mark.parametrize(("current", "target"), list(itertools.product(JobStatus, JobStatus)))
def test_a_job_moves_only_along_the_table(current: JobStatus, target: JobStatus) -> None:
    allowed = current == target or target in JOB_TRANSITIONS[current]
    if allowed:
        check_job_move(current.value, target.value)
    else:
        with pytest.raises(IllegalTransition):
            check_job_move(current.value, target.value)


@pytest.mark.parametrize(("current", "target"), list(itertools.product(CampaignStatus, CampaignStatus)))
def test_a_campaign_moves_only_along_the_table(current: CampaignStatus, target: CampaignStatus) -> None:
    allowed = current == target or target in CAMPAIGN_TRANSITIONS[current]
    if allowed:
        check_campaign_move(current.value, target.value)
    else:
        with pytest.raises(IllegalTransition):
            check_campaign_move(current.value, target.value)


def test_final_statuses_go_nowhere() -> None:
    for status in (JobStatus.COMPLETED, JobStatus.CANCELLED, JobStatus.FAILED):
        assert not JOB_TRANSITIONS[status]
    for status in (CampaignStatus.COMPLETED, CampaignStatus.CANCELLED, CampaignStatus.FAILED):
        assert not CAMPAIGN_TRANSITIONS[status]


def test_an_illegal_move_is_a_state_conflict_the_api_answers_409() -> None:
    with pytest.raises(StateConflict, match="a completed job cannot become sending"):
        check_job_move("completed", "sending")


def test_a_campaign_can_follow_every_move_its_job_makes_while_it_runs() -> None:
    for job_from, targets in JOB_TRANSITIONS.items():
        for job_to in targets:
            before, after = CAMPAIGN_FOR_JOB[job_from], CAMPAIGN_FOR_JOB[job_to]
            assert before == after or after in CAMPAIGN_TRANSITIONS[before], (job_from, job_to)
