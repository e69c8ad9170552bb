"""SQL generated from the catalog: T-SQL that parses, identifiers that cannot inject."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import date, datetime, timedelta

import pytest
import sqlglot
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlglot import exp

from spotify_assets.bronze.dialects import DIALECTS, Dialect, SqlDialect
from spotify_assets.bronze.windows import Window
from spotify_assets.catalog.tables import (
    CATALOG,
    CHANGE_OP,
    CHANGE_SEQ,
    CaptureMode,
    CatalogError,
    Column,
    ColumnType,
    Table,
    TableRole,
    parse_mode_overrides,
    validate_identifier,
)
from tests.helpers.tsql import TSQL, parse_tsql


def tsql_statements() -> list[str]:
    statements = [TSQL.enable_cdc_on_database(), *TSQL.support_tables()]
    for table in CATALOG:
        statements += [TSQL.create_table(table), *TSQL.create_indexes(table)]
        statements += TSQL.change_capture(table)
        statements += [TSQL.insert(table.name, table.column_names, rows=3), TSQL.select(table)]
        statements.append(TSQL.columns_query(table.name))
        if table.cdc_column:
            statements.append(TSQL.first_change_query(table))
            statements.append(TSQL.captured_columns_query(table))
            window = Window(datetime(2026, 1, 1), datetime(2026, 1, 2))
            statements.append(TSQL.extract_query(table, window, carried=("email",)))
        if table.key != table.column_names:
            statements += [TSQL.update(table), TSQL.delete(table)]
    return statements


@pytest.mark.parametrize("sql", tsql_statements())
def test_every_tsql_statement_parses(sql: str) -> None:
    parse_tsql(sql)


@pytest.mark.parametrize("table", [t for t in CATALOG if t.cdc_column], ids=lambda t: t.name)
def test_tsql_cdc_enablement_executes_the_system_procedure(table: Table) -> None:
    (statement,) = TSQL.change_capture(table)
    executes = list(parse_tsql(statement)[0].find_all(exp.Execute))
    assert [e.this.sql("tsql") for e in executes] == ["sys.sp_cdc_enable_table"]
    arguments = {e.this.sql("tsql"): e.expression.sql("tsql") for e in executes[0].expressions}
    assert arguments["@source_name"] == f"N'{table.name}'"
    assert arguments["@capture_instance"] == f"N'dbo_{table.name}'"


def test_tsql_cdc_extraction_reads_images_and_the_capture_instance_in_the_window() -> None:
    table = CATALOG["DimUser"]
    window = Window(datetime(2026, 3, 1), datetime(2026, 3, 2, 0, 0, 5))
    sql = TSQL.extract_query(table, window)
    statements = parse_tsql(sql)
    assert [type(s) for s in statements] == [exp.Declare, exp.Declare, exp.Union]
    union = statements[-1]
    functions = [t.name for t in union.find_all(exp.Anonymous) if "fn_cdc" in t.name]
    assert "fn_cdc_get_all_changes_dbo_DimUser" in functions
    assert "'2026-03-01T00:00:00.000'" in sql and "'2026-03-02T00:00:05.000'" in sql
    changes, images = union.left, union.right
    assert [c.alias_or_name for c in changes.expressions] == [
        "_op",
        "_seq",
        "_changed_at",
        *table.column_names,
    ]
    assert len(changes.expressions) == len(images.expressions)


@pytest.mark.parametrize("dialect", list(DIALECTS), ids=str)
@pytest.mark.parametrize("table", list(CATALOG), ids=lambda t: t.name)
def test_extraction_queries_are_bounded_on_both_sides(dialect: Dialect, table: Table) -> None:
    sql = DIALECTS[dialect]
    window = Window(datetime(2026, 3, 1, 6), datetime(2026, 3, 2))
    query = sql.extract_query(table, window)
    if table.mode is CaptureMode.SNAPSHOT:
        assert "WHERE" not in query
        return
    low, high = sql.timestamp_literal(window.start), sql.timestamp_literal(window.end)
    parts = query.split("UNION ALL")
    if dialect is Dialect.TSQL and table.mode is CaptureMode.CDC:
        # Native CDC is bounded by the LSN range mapped from the same window.
        assert f"'smallest greater than or equal', {low}" in query
        assert f"'largest less than', {high}" in query
        parts = parts[1:]
    for part in parts:
        assert f">= {low}" in part and f"< {high}" in part
    parse = sqlglot.parse(
        query, read={"sqlite": "sqlite", "postgresql": "postgres"}.get(dialect.value, "tsql")
    )
    assert all(p is not None for p in parse)


SQLITE = DIALECTS[Dialect.SQLITE]
FACT = CATALOG["FactStream"]
PROFILE_FROM = datetime(2026, 3, 1)


def sqlite_change_times(rows: list[tuple[int, str]]) -> sqlite3.Connection:
    """FactStream's key and change time, indexed as `source init` indexes them."""
    db = sqlite3.connect(":memory:")
    key, time = FACT.key[0], FACT.cdc_column
    db.execute(f"CREATE TABLE {FACT.name} ({key} INTEGER PRIMARY KEY, {time} TIMESTAMP)")
    for statement in SQLITE.create_indexes(FACT):
        db.execute(statement)
    db.executemany(f"INSERT INTO {FACT.name} VALUES (?, ?)", rows)
    return db


def test_sqlite_profiles_a_lookback_off_the_index_without_sorting_its_rows() -> None:
    """Grouping by day made SQLite sort every row of the lookback (4 s at scale 10)."""
    window = Window(PROFILE_FROM, PROFILE_FROM + timedelta(days=10, hours=7))
    plan = sqlite_change_times([]).execute(
        "EXPLAIN QUERY PLAN " + SQLITE.daily_profile_query(FACT, window)
    )
    steps = [step[-1] for step in plan]
    assert not [s for s in steps if "TEMP B-TREE" in s], steps
    assert any(f"USING COVERING INDEX ix_{FACT.name}_{FACT.cdc_column}" in s for s in steps)


_TEXTS = ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M:%S.%f", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d")
_moments = st.datetimes(PROFILE_FROM - timedelta(days=2), PROFILE_FROM + timedelta(days=9))


@settings(deadline=None, max_examples=60)
@given(
    times=st.lists(st.tuples(_moments, st.sampled_from(_TEXTS)), max_size=40),
    start=_moments,
    length=st.one_of(st.timedeltas(timedelta(0), timedelta(days=8)), st.just(timedelta(days=500))),
)
def test_sqlite_profile_a_day_at_a_time_equals_grouping_by_day(
    times: list[tuple[datetime, str]], start: datetime, length: timedelta
) -> None:
    """Whatever the window (whole days, cut days, empty, longer than a compound SELECT joins)
    and however the source wrote its times, the profile is the day-grouped one."""
    db = sqlite_change_times([(i, t.strftime(f)) for i, (t, f) in enumerate(times, 1)])
    window = Window(start, start + length)
    grouped = SqlDialect.daily_profile_query(SQLITE, FACT, window)
    assert sorted(db.execute(SQLITE.daily_profile_query(FACT, window))) == sorted(
        db.execute(grouped)
    )


_WRITTEN = (*_TEXTS, "%Y-%m-%d %H:%M")
# Times and bounds to the millisecond, the precision of SQLite's normalised text.
_millis = _moments.map(lambda t: t.replace(microsecond=t.microsecond // 1000 * 1000))
_minutes = _moments.map(lambda t: t.replace(second=0, microsecond=0))
_bounds = st.one_of(_millis, _minutes, _minutes.map(lambda t: t.replace(hour=0, minute=0)))


@settings(deadline=None, max_examples=150)
@given(
    times=st.lists(
        st.tuples(st.one_of(_moments, _minutes), st.sampled_from(_WRITTEN)), max_size=40
    ),
    bounds=st.tuples(_bounds, _bounds),
)
def test_sqlite_windows_hold_exactly_the_rows_whose_time_is_in_them(
    times: list[tuple[datetime, str]], bounds: tuple[datetime, datetime]
) -> None:
    """However the source wrote its times and wherever the window cuts a day (a slice of a day
    read alone, to the minute or to the millisecond), a row is in the window iff its time is."""
    written = [(t.strftime(f), f) for t, f in times]
    db = sqlite_change_times([(i, text) for i, (text, _) in enumerate(written, 1)])
    window = Window(min(bounds), max(bounds))
    key, time = FACT.key[0], FACT.cdc_column
    query = f"SELECT {key} FROM {FACT.name} WHERE {SQLITE._within(time, window)}"
    moments = [datetime.strptime(text, f) for text, f in written]
    expected = {i for i, moment in enumerate(moments, 1) if window.start <= moment < window.end}
    assert {i for (i,) in db.execute(query)} == expected


@pytest.mark.parametrize(
    "name",
    ["DimUser; DROP TABLE x", 'a"b', "a]b", "1abc", "", "x" * 64, "naïve", "a b", "a--b"],
)
def test_hostile_identifiers_are_rejected(name: str) -> None:
    with pytest.raises(CatalogError, match="invalid identifier"):
        validate_identifier(name)
    for dialect in DIALECTS.values():
        with pytest.raises(CatalogError):
            dialect.quote(name)


def test_a_catalog_entry_with_a_hostile_column_is_rejected() -> None:
    with pytest.raises(CatalogError, match="invalid identifier"):
        Column("x; DROP TABLE DimUser", ColumnType.INT)


def test_catalog_entries_are_validated() -> None:
    good = CATALOG["DimArtist"]
    with pytest.raises(CatalogError, match="key column"):
        Table(
            "T",
            "t",
            good.columns,
            ("nope",),
            TableRole.DIMENSION,
            CaptureMode.CDC,
            "updated_at",
        )
    with pytest.raises(CatalogError, match="needs a cdc column"):
        Table(
            "T",
            "t",
            good.columns,
            good.key,
            TableRole.DIMENSION,
            CaptureMode.WATERMARK,
            None,
        )
    with pytest.raises(CatalogError, match="must be a timestamp"):
        Table(
            "T",
            "t",
            good.columns,
            good.key,
            TableRole.DIMENSION,
            CaptureMode.CDC,
            "genre",
        )


def test_catalog_defaults_and_mode_overrides() -> None:
    modes = {t.name: t.mode for t in CATALOG}
    assert modes == {
        "DimUser": CaptureMode.CDC,
        "DimArtist": CaptureMode.CDC,
        "DimTrack": CaptureMode.CDC,
        "DimDate": CaptureMode.SNAPSHOT,
        "FactStream": CaptureMode.WATERMARK,
    }
    assert CATALOG["FactStream"].cdc_column == "stream_timestamp"
    overridden = CATALOG.with_modes(parse_mode_overrides("DimUser=watermark, DimTrack=WATERMARK"))
    assert overridden["DimUser"].mode is CaptureMode.WATERMARK
    assert overridden["DimTrack"].mode is CaptureMode.WATERMARK
    assert overridden["DimArtist"].mode is CaptureMode.CDC
    by_lake_name = CATALOG.with_modes(parse_mode_overrides("dim_user=watermark"))
    assert by_lake_name["DimUser"].mode is CaptureMode.WATERMARK
    with pytest.raises(CatalogError, match="unknown capture mode"):
        parse_mode_overrides("DimUser=nightly")
    with pytest.raises(CatalogError, match="unknown table 'DimNope'"):
        CATALOG.with_modes({"DimNope": CaptureMode.CDC})
    with pytest.raises(CatalogError, match="Table=mode"):
        parse_mode_overrides("DimUser")


@pytest.mark.parametrize("dialect", list(DIALECTS), ids=str)
def test_dml_binds_values_as_parameters(dialect: Dialect) -> None:
    sql = DIALECTS[dialect]
    table = CATALOG["DimUser"]
    assert sql.insert(table.name, table.column_names, rows=2).count("?") == 14
    assert sql.update(table).count("?") == len(table.columns)
    assert sql.delete(table).count("?") == 1


# --- SQL Server native CDC, emulated on SQLite ---
#
# No SQL Server runs here. The change records a capture instance holds are written into a SQLite
# table as CDC writes `cdc.<instance>_CT` (an update is two rows sharing its commit LSN and
# seqval: operation 3 with the values before, 4 with the values after), and the generated T-SQL
# runs on them once its engine-specific parts are rewritten: the table functions read that
# table (`N'all'` leaves out operation 3, as documented), `sys.fn_cdc_map_*` map through the
# commit times below, the seqval is stored as the BIGINT the extraction cuts out of it, and
# casts to DATETIME2/DECIMAL/DATE become their SQLite equivalents. The logic the extraction and
# the profile add on top (CASE, windows, filters) runs as written.

DIM_USER = CATALOG["DimUser"]
CDC_COLUMNS = ("__$start_lsn", "__$seqval", "__$operation", *DIM_USER.column_names)
COMMITS = {lsn: f"2026-03-01 0{lsn // 10}:00:00.000" for lsn in (10, 20, 30, 40, 50)}


def cdc_row(lsn: int, seqval: int, operation: int, user_id: int, name: str) -> tuple:
    updated = COMMITS[lsn]
    return (lsn, seqval, operation, user_id, name, "SE", "Free", "2025-01-01", None, updated)


# A user inserted, renamed, re-keyed in place (20 -> 5000: SQL Server logs a singleton update
# of the key as operations 3 and 4), another re-keyed by a deferred update (7 -> 7000:
# operations 1 and 2), and the re-keyed user deleted.
KEY_UPDATES = [
    cdc_row(10, 1, 2, 20, "ann"),
    cdc_row(10, 2, 2, 7, "bob"),
    cdc_row(20, 3, 3, 20, "ann"),
    cdc_row(20, 3, 4, 20, "anna"),
    cdc_row(30, 4, 3, 20, "anna"),
    cdc_row(30, 4, 4, 5000, "anna"),
    cdc_row(40, 5, 1, 7, "bob"),
    cdc_row(40, 6, 2, 7000, "bob"),
    cdc_row(50, 7, 1, 5000, "anna"),
]


def _on_sqlite(node: exp.Expression) -> exp.Expression:
    if isinstance(node, exp.Table) and isinstance(node.this, exp.Anonymous):
        assert node.this.name == f"fn_cdc_get_all_changes_{TSQL.capture_instance(DIM_USER)}"
        row_filter = node.this.expressions[2].name
        assert row_filter in ("all", "all update old"), row_filter
        where = " WHERE __$operation <> 3" if row_filter == "all" else ""
        rows = sqlglot.parse_one(f"SELECT * FROM ct{where}", read="sqlite")
        return exp.Subquery(this=rows, alias=node.args["alias"])
    if isinstance(node, exp.Table) and node.db == "cdc":
        assert node.name == f"{TSQL.capture_instance(DIM_USER)}_CT"
        return exp.Table(this=exp.to_identifier("ct"), alias=node.args["alias"])
    if isinstance(node, exp.Dot) and isinstance(node.expression, exp.Anonymous):
        # sys.fn_cdc_map_*: registered without the schema (a replacement is not walked again)
        return node.expression.transform(_on_sqlite)
    if isinstance(node, exp.Convert) and isinstance(node.expression, exp.Substring):
        return node.expression.this  # the seqval column holds the extracted BIGINT already
    if isinstance(node, exp.Cast) and node.to.this is exp.DataType.Type.DATE:
        return exp.Substring(
            this=node.this, start=exp.Literal.number(1), length=exp.Literal.number(10)
        )
    if isinstance(node, exp.Cast) and node.to.this in (
        exp.DataType.Type.DATETIME2,
        exp.DataType.Type.DECIMAL,
    ):
        return node.this
    return node


def run_on_emulated_cdc(statement: exp.Expression, changes: list[tuple]) -> list[tuple]:
    def lsn_to_time(lsn: int) -> str:
        return COMMITS[lsn]

    def time_to_lsn(relation: str, moment: str) -> int | None:
        at = moment.replace("T", " ")
        if relation == "smallest greater than or equal":
            return min((lsn for lsn, t in COMMITS.items() if t >= at), default=None)
        assert relation == "largest less than", relation
        return max((lsn for lsn, t in COMMITS.items() if t < at), default=None)

    db = sqlite3.connect(":memory:")
    db.create_function("fn_cdc_map_lsn_to_time", 1, lsn_to_time)
    db.create_function("fn_cdc_map_time_to_lsn", 2, time_to_lsn)
    columns = ", ".join(f'"{c}"' for c in CDC_COLUMNS)
    db.execute(f"CREATE TABLE ct ({columns})")
    db.executemany(f"INSERT INTO ct VALUES ({', '.join('?' for _ in CDC_COLUMNS)})", changes)
    return db.execute(statement.transform(_on_sqlite).sql("sqlite")).fetchall()


def extracted_records(changes: list[tuple]) -> list[tuple]:
    """(_op, _seq, user_id, user_name) of each change record the extraction writes to bronze."""
    window = Window(datetime(2026, 3, 1), datetime(2026, 3, 2))
    union = parse_tsql(TSQL.extract_query(DIM_USER, window))[-1]
    assert isinstance(union, exp.Union)
    names = [e.alias_or_name for e in union.left.expressions]
    rows = run_on_emulated_cdc(union.left, changes)
    columns = [names.index(c) for c in (CHANGE_OP, CHANGE_SEQ, "user_id", "user_name")]
    return sorted(tuple(row[i] for i in columns) for row in rows)


def test_native_cdc_key_updates_close_the_old_key_and_open_the_new_one() -> None:
    """Whether SQL Server logs an update of the key in place (operations 3 and 4) or deferred
    (1 and 2), bronze gets the old key's delete and the new key's insert, as the triggers of
    the other dialects record it; an update keeping its key stays one update."""
    assert extracted_records(KEY_UPDATES) == [
        ("D", 4, 20, "anna"),
        ("D", 5, 7, "bob"),
        ("D", 7, 5000, "anna"),
        ("I", 1, 20, "ann"),
        ("I", 2, 7, "bob"),
        ("I", 4, 5000, "anna"),
        ("I", 6, 7000, "bob"),
        ("U", 3, 20, "anna"),
    ]


def test_native_cdc_profile_counts_the_records_the_extraction_writes() -> None:
    """Reconciliation's source side counts the change records of the window and sums their
    `_seq` from the change table: exactly the records bronze gets, key updates included."""
    window = Window(datetime(2026, 3, 1), datetime(2026, 3, 2))
    (profile,) = parse_tsql(TSQL.daily_profile_query(DIM_USER, window))
    records = extracted_records(KEY_UPDATES)
    assert run_on_emulated_cdc(profile, KEY_UPDATES) == [
        ("2026-03-01", len(records), sum(seq for _, seq, _, _ in records))
    ]


def test_a_window_to_the_end_of_time_is_written_from_its_edge_days(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The idle check's window runs from the watermark to the end of time: writing SQLite's
    condition walked its 2.9M days (seconds per table on every idle `run`); only the first and
    last day can be cut."""
    walked: list[object] = []
    days = Window.days

    def counted(window: Window) -> Iterator[date]:
        for day in days(window):
            walked.append(day)
            yield day

    monkeypatch.setattr(Window, "days", counted)
    condition = SQLITE._within("t", Window(datetime(2026, 11, 20, 12, 30), datetime(9999, 12, 31)))
    assert "2026-11-20 12:30" in condition
    assert len(walked) <= 2
