"""Numeric settings: anything but a finite number in range is refused in one line naming it."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from spotify_assets.orchestration.settings import Settings

NUMERIC = {
    "SPOTIFY_SAFETY_LAG_SECONDS": 0.0,
    "SPOTIFY_RECONCILE_LOOKBACK_DAYS": 1,
    "SPOTIFY_WRITER_WAIT_SECONDS": 0.0,
    "SPOTIFY_SPARK_MEMORY_GIB": 0.25,
    "SPOTIFY_CHUNK_ROWS": 1,
}


@pytest.mark.parametrize("name", NUMERIC)
@pytest.mark.parametrize("text", ["nan", "NaN", "inf", "-inf", "-1", "garbage", "1e400", "²"])
def test_a_numeric_setting_that_is_not_a_finite_number_in_range_is_refused(
    name: str, text: str
) -> None:
    with pytest.raises(ValueError) as refused:
        Settings.from_env({name: text})
    message = str(refused.value)
    assert name in message and repr(text) in message and "\n" not in message


@hypothesis_settings(deadline=None)  # not timed: a busy machine took 0.4 s for one example
@given(st.text(max_size=12))
def test_any_text_either_parses_to_a_finite_value_in_range_or_is_refused(text: str) -> None:
    for name, low in NUMERIC.items():
        try:
            settings = Settings.from_env({name: text})
        except ValueError as refused:
            assert name in str(refused)
            continue
        values = {
            "SPOTIFY_SAFETY_LAG_SECONDS": settings.safety_lag_seconds,
            "SPOTIFY_RECONCILE_LOOKBACK_DAYS": settings.reconcile_lookback_days,
            "SPOTIFY_WRITER_WAIT_SECONDS": settings.writer_wait_seconds,
            "SPOTIFY_SPARK_MEMORY_GIB": settings.spark_memory_gib,
            "SPOTIFY_CHUNK_ROWS": settings.chunk_rows,
        }
        assert math.isfinite(values[name]) and values[name] >= low


def test_numeric_settings_accept_numbers_and_default_when_unset() -> None:
    settings = Settings.from_env(
        {"SPOTIFY_SAFETY_LAG_SECONDS": " 1.5 ", "SPOTIFY_RECONCILE_LOOKBACK_DAYS": "3"}
    )
    assert (settings.safety_lag_seconds, settings.reconcile_lookback_days) == (1.5, 3)
    assert Settings.from_env({}).reconcile_lookback_days == 10
    assert Settings.from_env({"SPOTIFY_SPARK_MEMORY_GIB": "2"}).spark_memory_gib == 2.0
    assert Settings.from_env({}).spark_memory_gib == 1.0
    assert Settings.from_env({"SPOTIFY_CHUNK_ROWS": "1000"}).chunk_rows == 1000
