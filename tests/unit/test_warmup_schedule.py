"""A warm-up schedule: what it accepts, what each day allows, and the day a remainder is sent on."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.errors import SettingsError
from core.settings import load_settings
from core.warmup_schedule import (
    DEFAULT_SCHEDULE,
    BadSchedule,
    allowance_on,
    days_to_send,
    parse_schedule,
    spelled,
)

ramps = st.lists(st.integers(1, 10**6), min_size=1, max_size=30).map(sorted)


def test_the_default_starts_at_50_a_day_and_doubles_for_16_days():
    assert DEFAULT_SCHEDULE[:4] == (50, 100, 200, 400)
    assert len(DEFAULT_SCHEDULE) == 16 and DEFAULT_SCHEDULE[-1] == 1_638_400
    assert all(b == 2 * a for a, b in zip(DEFAULT_SCHEDULE, DEFAULT_SCHEDULE[1:], strict=False))


@given(ramps)
def test_a_spelled_ramp_parses_back_to_itself(days):
    assert parse_schedule(spelled(days)) == tuple(days)


@pytest.mark.parametrize("text", ["", "50,,100", "50,abc", "100,50", "0,10", "-5", "1.5"])
def test_a_bad_schedule_is_refused(text):
    with pytest.raises(BadSchedule):
        parse_schedule(text)


def test_a_bad_warmup_schedule_setting_names_the_setting():
    with pytest.raises(SettingsError, match="WARMUP_SCHEDULE"):
        load_settings(WARMUP_SCHEDULE="100,50")


@given(ramps, st.integers(-3, 40))
def test_each_day_of_the_ramp_allows_its_number_and_none_after_it(days, day_number):
    allowed = allowance_on(days, day_number)
    if 0 <= day_number < len(days):
        assert allowed == days[day_number]
    else:
        assert allowed is None


@given(ramps, st.integers(1, 10**7))
def test_the_remainder_is_sent_on_the_first_day_the_ramp_so_far_covers_it(days, remaining):
    day = days_to_send(days, remaining)
    assert sum(days[: day + 1]) >= remaining or day == len(days)  # past the ramp: uncapped
    assert sum(days[:day]) < remaining  # not a day earlier
