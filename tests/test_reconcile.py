"""Reconciliation's pure parts and its profile query on each dialect (DESIGN.md §7)."""

from __future__ import annotations

from datetime import date, datetime

import pytest
from sqlglot import exp

from resources.dialects import DIALECTS
from resources.odbc import Dialect
from resources.reconciler import reconcile
from spotify_assets.catalog import CATALOG, CHANGE_AT, CHANGE_SEQ
from spotify_assets.reconcile import DayProfile, day_ranges, lookback_window, stale_days
from spotify_assets.windows import Window
from tests.test_dialects import parse_tsql

D1, D2, D3, D5 = date(2026, 3, 1), date(2026, 3, 2), date(2026, 3, 3), date(2026, 3, 5)


def test_a_day_differs_by_rows_checksum_or_presence() -> None:
    source = {D1: DayProfile(3, 10), D2: DayProfile(2, 7), D3: DayProfile(1, 1)}
    lake = {D1: DayProfile(3, 10), D2: DayProfile(2, 8), D5: DayProfile(1, 4)}
    assert stale_days(source, lake) == [D2, D3, D5]
    assert stale_days(source, source) == []


def test_consecutive_days_make_one_range() -> None:
    assert day_ranges([D5, D1, D2, D3, D2]) == [(D1, D3), (D5, D5)]
    assert day_ranges([]) == []


def test_lookback_stops_at_the_watermark_and_the_first_partition() -> None:
    watermark = datetime(2026, 3, 10, 6, 30)
    assert lookback_window(watermark, 3, D1) == Window(datetime(2026, 3, 7), watermark)
    assert lookback_window(watermark, 30, D1) == Window(datetime(2026, 3, 1), watermark)
    assert lookback_window(None, 3, D1) is None
    assert lookback_window(datetime(2026, 3, 1), 3, D1) is None


@pytest.mark.parametrize("name", ["FactStream", "DimUser"])
def test_profile_query_is_bounded_and_parses_as_tsql(name: str) -> None:
    window = Window(datetime(2026, 3, 1), datetime(2026, 3, 4, 12))
    sql = DIALECTS[Dialect.TSQL].daily_profile_query(CATALOG[name], window)
    (statement,) = parse_tsql(sql)
    assert isinstance(statement, exp.Select) and statement.args.get("group")
    assert "'2026-03-01T00:00:00.000'" in sql and "'2026-03-04T12:00:00.000'" in sql


def test_native_cdc_profile_counts_what_the_extraction_writes_to_bronze() -> None:
    """SQL Server native CDC: the profile reads the capture instance's change records bounded
    by the LSNs of the window, and counts and sums them by the same `_seq` and `_changed_at`
    expressions the extraction writes into bronze (as the trigger change tables' profile
    does with their own columns), so bronze and the source agree record for record."""
    tsql, table = DIALECTS[Dialect.TSQL], CATALOG["DimUser"]
    window = Window(datetime(2026, 3, 1), datetime(2026, 3, 4, 12))
    profile = parse_tsql(tsql.daily_profile_query(table, window))[0]
    extract = parse_tsql(tsql.extract_query(table, window))[-1]

    def expressions(statement: exp.Expression) -> dict[str, str]:
        return {a.alias: a.this.sql("tsql") for a in statement.find_all(exp.Alias) if a.alias}

    from_profile, from_extract = expressions(profile), expressions(extract)
    for column in (CHANGE_SEQ, CHANGE_AT):
        assert from_profile[column] == from_extract[column], column
    assert "sys.fn_cdc_map_lsn_to_time" in from_profile[CHANGE_AT]
    assert {(t.db, t.name) for t in profile.find_all(exp.Table)} == {("cdc", "dbo_DimUser_CT")}
    sql = profile.sql("tsql")
    assert "__$operation IN (1, 2, 4)" in sql  # the records fn_cdc_get_all_changes_* returns
    assert sql.count("sys.fn_cdc_map_time_to_lsn") == 2


def test_reconcile_sees_rows_the_lake_lacks(sqlite_source, tmp_path) -> None:
    from tests.test_bronze import load_everything, runner_for
    from tests.test_source_db import initialise

    initialise(sqlite_source)
    runner = runner_for(sqlite_source, tmp_path / "lake")
    load_everything(runner, sqlite_source.catalog)
    fact = sqlite_source.catalog["FactStream"]
    assert reconcile(runner, fact, 7).stale == ()
    with sqlite_source.session() as session:
        stream_id, ts = session.query(
            "SELECT stream_id, stream_timestamp FROM FactStream ORDER BY stream_timestamp DESC"
        )[3]
        session.execute("DELETE FROM FactStream WHERE stream_id = ?", [stream_id])
    found = reconcile(runner, fact, 7)
    day = datetime.fromisoformat(str(ts)).date()
    assert found.stale == (day,)
    assert found.source[day].rows == found.bronze[day].rows - 1
    assert "stale" in found.describe()
