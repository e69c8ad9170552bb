"""The source as users change it (issue 11 §4, §5): renamed, dropped and added columns, values
that do not fit their type, timestamps in any text format."""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable
from hypothesis import given
from hypothesis import strategies as st

from resources.copy_runner import CopyResult, LocalCopyRunner
from resources.reconciler import bronze_profile
from resources.silver_store import SilverStore
from resources.source_db import SourceDatabase
from spotify_assets.bronze.dialects import DIALECTS, Dialect
from spotify_assets.bronze.windows import Window
from spotify_assets.catalog.rules import DriftPolicy
from spotify_assets.catalog.tables import CATALOG, Table
from spotify_assets.cli import main
from spotify_assets.orchestration.gate import require_partitions
from spotify_assets.source.schema import type_values
from tests.helpers.bronze import runner_for
from tests.helpers.source import CLOCK0, HISTORY_START, initialise

# The fixtures' sources start their partitions on their history's first day.
CONFIGURED = CATALOG.with_partition_start(HISTORY_START)
FACT, USERS = CONFIGURED["FactStream"], CONFIGURED["DimUser"]
LATER = CLOCK0 + timedelta(hours=12)


@pytest.fixture
def loaded(sqlite_source: SourceDatabase, tmp_path: Path) -> tuple[LocalCopyRunner, Path]:
    """A source whose whole history is in bronze; returns the runner and the source file."""
    initialise(sqlite_source)
    runner = runner_for(sqlite_source, tmp_path / "lake")
    for table in (USERS, FACT):
        runner.copy(table, None, "initial", from_watermark=True)
    return runner, sqlite_source.sqlite_path()


def edit(db: Path, *statements: str, params: Sequence[tuple] = ()) -> None:
    """Run statements on the source file, then insert streams (id, listen_duration, time)."""
    with sqlite3.connect(db) as conn:
        for statement in statements:
            conn.execute(statement)
        for row in params:
            conn.execute(
                "INSERT INTO FactStream (stream_id, user_id, track_id, date_key, listen_duration, "
                "device_type, stream_timestamp) VALUES (?, 1, 1, 20260401, ?, 'mobile', ?)",
                row,
            )


def set_clock(db: Path, text: str) -> None:
    edit(db, "DELETE FROM source_clock", f"INSERT INTO source_clock VALUES ('{text}')")


def test_an_unknown_column_is_an_error_not_a_literal(loaded) -> None:
    _, db = loaded
    edit(db, "ALTER TABLE DimUser RENAME COLUMN user_name TO full_name")
    query = DIALECTS[Dialect.SQLITE].extract_query(USERS, Window(CLOCK0, LATER))
    with sqlite3.connect(db) as conn, pytest.raises(sqlite3.OperationalError, match="user_name"):
        conn.execute(query).fetchall()


@pytest.mark.parametrize(
    ("table", "change", "named"),
    [
        (USERS, "ALTER TABLE DimUser RENAME COLUMN user_name TO full_name", "user_name"),
        (USERS, "ALTER TABLE DimUser RENAME COLUMN country TO land", "country"),
        (FACT, "ALTER TABLE FactStream DROP COLUMN device_type", "device_type"),
        (USERS, "ALTER TABLE DimUser_changes DROP COLUMN end_date", "change capture"),
    ],
    ids=["rename", "rename-country", "drop", "change-table"],
)
def test_a_missing_column_stops_the_copy_in_one_line(
    loaded, table: Table, change: str, named: str
) -> None:
    runner, db = loaded
    before = runner.store(table).current().version
    edit(db, change)
    with pytest.raises(ValueError) as error:
        runner.copy(table, None, "after", from_watermark=True)
    message = str(error.value)
    assert table.name in message and named in message and "\n" not in message
    assert runner.store(table).current().version == before, "nothing committed"


@pytest.mark.parametrize("table", [USERS, FACT], ids=["cdc", "watermark"])
def test_a_missing_table_is_named_in_one_line(loaded, table: Table) -> None:
    """A table renamed in the source: `run`'s first check (the oldest change time of each
    table) and the copy name it in one line (they ended in the driver's traceback)."""
    runner, db = loaded
    edit(db, f"ALTER TABLE {table.name} RENAME TO {table.name}_old")
    expected = f"^{table.name}: the source has no such table; create it or check"
    with pytest.raises(ValueError, match=expected):
        require_partitions(runner, [table])
    with pytest.raises(ValueError, match=expected):
        runner.copy(table, None, "after", from_watermark=True)


def test_a_new_column_follows_the_drift_policy(loaded, sail_spark) -> None:
    runner, db = loaded
    silver = SilverStore(runner.lake, sail_spark, FACT)
    silver.refresh(None, "initial")
    edit(db, "ALTER TABLE FactStream ADD COLUMN email TEXT", params=[(900_001, 120, str(LATER))])
    edit(db, "UPDATE FactStream SET email = 'a@b.c' WHERE stream_id = 900001")
    set_clock(db, str(LATER + timedelta(hours=1)))

    for policy in (DriftPolicy.DROP, DriftPolicy.FAIL):
        strict = replace(FACT, silver=replace(FACT.silver, new_columns=policy))
        if policy is DriftPolicy.FAIL:
            with pytest.raises(ValueError, match=r"FactStream: new column.* email"):
                runner.copy(strict, None, "fail", from_watermark=True)
        else:
            assert runner.source_columns(strict).carried == ()
            assert runner.source_columns(strict).ignored == ("email",)

    result = runner.copy(FACT, None, "carry", from_watermark=True)
    bronze = runner.store(FACT).read(LATER.date())
    new = bronze.filter(pc.equal(bronze["stream_id"], 900_001))
    assert new["email"].to_pylist() == ["a@b.c"]
    (day,) = result.partitions
    silver.refresh((day, day), "carry")
    rows = silver.read().where("stream_id = 900001").select("email").collect()
    assert [r.email for r in rows] == ["a@b.c"]
    silver.refresh(None, "again")  # partitions extracted before the column appeared
    assert silver.read().where("email IS NULL").count() > 0, "older rows: NULL"
    assert silver.read().where("email = 'a@b.c'").count() == 1


def test_a_new_column_only_in_the_table_is_not_captured(loaded) -> None:
    runner, db = loaded
    edit(db, "ALTER TABLE DimUser ADD COLUMN email TEXT")
    columns = runner.source_columns(USERS)
    assert columns.carried == () and columns.ignored == ("email",)


def test_values_that_do_not_fit_their_type_reach_quarantine(loaded, sail_spark) -> None:
    runner, db = loaded
    bad = {900_001: "abc", 900_002: "12.5", 900_003: "", 900_004: 9_999_999_999}
    rows = [(k, v, str(LATER)) for k, v in bad.items()] + [(900_005, 200, str(LATER))]
    edit(db, params=rows)
    set_clock(db, str(LATER + timedelta(hours=1)))
    result = runner.copy(FACT, None, "dirty", from_watermark=True)

    bronze = runner.store(FACT).read(LATER.date())
    new = bronze.filter(pc.greater(bronze["stream_id"], 900_000)).sort_by("stream_id")
    assert new["listen_duration"].to_pylist() == [None, None, None, None, 200]
    raw = [json.loads(v) if v else None for v in new["_untyped"].to_pylist()]
    assert raw == [{"listen_duration": str(v)} for v in bad.values()] + [None]

    silver = SilverStore(runner.lake, sail_spark, FACT)
    (day,) = result.partitions
    counted = silver.refresh((day, day), "dirty")
    assert counted.failures["values_typed"] == 4
    quarantined = {
        r.stream_id: (r._rule, json.loads(r._raw)["_untyped"]["listen_duration"])
        for r in silver.read_quarantine().where("stream_id > 900000").collect()
    }
    assert quarantined == {k: ("values_typed", str(v)) for k, v in bad.items()}
    assert silver.read().where("stream_id = 900005").count() == 1


def test_text_that_is_not_utf8_reaches_quarantine_with_its_bytes(loaded, sail_spark) -> None:
    """SQLite keeps any bytes in a text (a user's tool wrote Latin-1): the ODBC re-read dropped
    the byte ('t\\xffv' became 'tv') without a word. The value is untyped, kept as escapes."""
    runner, db = loaded
    edit(db, params=[(900_001, 60, str(LATER)), (900_002, 60, str(LATER))])
    edit(db, "UPDATE FactStream SET device_type = CAST(x'74ff76' AS TEXT) WHERE stream_id = 900001")
    set_clock(db, str(LATER + timedelta(hours=1)))
    result = runner.copy(FACT, None, "latin1", from_watermark=True)

    bronze = runner.store(FACT).read(LATER.date())
    new = bronze.filter(pc.greater(bronze["stream_id"], 900_000)).sort_by("stream_id")
    assert new["device_type"].to_pylist() == [None, "mobile"]
    assert [json.loads(v) if v else None for v in new["_untyped"].to_pylist()] == [
        {"device_type": "t\\xffv"},
        None,
    ]
    silver = SilverStore(runner.lake, sail_spark, FACT)
    (day,) = result.partitions
    assert silver.refresh((day, day), "latin1").failures["values_typed"] == 1


def test_simulating_a_source_holding_text_that_is_not_utf8_says_so(
    sqlite_source: SourceDatabase, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    """`source simulate` on a source whose user name is not UTF-8: one line naming the table
    and the column (a traceback from sqlite3: 'Could not decode to UTF-8 column')."""
    initialise(sqlite_source)
    db = sqlite_source.sqlite_path()
    edit(db, "UPDATE DimUser SET user_name = CAST(x'41ff42' AS TEXT) WHERE user_id = 1")
    monkeypatch.setenv("SPOTIFY_HOME", str(db.parent))
    assert main(["source", "simulate", "--days", "1"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: source simulate: DimUser holds text that is not UTF-8 (column 'user_name'), "
        "which the simulator cannot rewrite: correct it in the source"
    ]


def test_a_long_text_beside_a_value_that_does_not_fit_still_loads(loaded) -> None:
    """A window holding a bad value is read again as text, whatever the length of its other
    texts: one over arrow-odbc's 4000-byte buffers stopped the table's load for good."""
    runner, db = loaded
    device = 'Zoë 😀 "quoted"\n' + "x" * 20_000
    edit(db, params=[(900_001, "abc", str(LATER))])
    with sqlite3.connect(db) as conn:
        conn.execute(
            "INSERT INTO FactStream VALUES (900002, 1, 1, 20260401, 60, ?, ?)", (device, str(LATER))
        )
    set_clock(db, str(LATER + timedelta(hours=1)))
    runner.copy(FACT, None, "long", from_watermark=True)

    bronze = runner.store(FACT).read(LATER.date())
    new = bronze.filter(pc.greater(bronze["stream_id"], 900_000)).sort_by("stream_id")
    assert new["device_type"].to_pylist() == ["mobile", device]
    assert new["_untyped"].to_pylist() == ['{"listen_duration": "abc"}', None]


def test_a_null_key_the_source_allows_reaches_quarantine(loaded, sail_spark) -> None:
    """A source without the catalog's NOT NULL: bronze copies its rows raw (a NULL key stopped
    the table's load for good) and silver quarantines them under the critical rule."""
    runner, db = loaded
    result = copy_a_null_key(runner, db)

    bronze = runner.store(FACT).read(LATER.date())
    assert bronze["stream_id"].null_count == 1
    (day,) = result.partitions
    silver = SilverStore(runner.lake, sail_spark, FACT)
    counted = silver.refresh((day, day), "null key")
    assert counted.failures["stream_id_not_null"] == 1
    assert declares_not_null(silver.path, "stream_id"), "a valid row has its key"


def copy_a_null_key(runner: LocalCopyRunner, db: Path) -> CopyResult:
    """The source's FactStream without its NOT NULL constraints, then a stream without an id."""
    unconstrained(db, [(None, 100, str(LATER))])
    set_clock(db, str(LATER + timedelta(hours=1)))
    return runner.copy(FACT, None, "null key", from_watermark=True)


def unconstrained(db: Path, streams: Sequence[tuple]) -> None:
    """The source's FactStream without its NOT NULL constraints, then `streams` (`edit`'s)."""
    edit(
        db,
        "ALTER TABLE FactStream RENAME TO FactStream_old",
        "CREATE TABLE FactStream (stream_id INTEGER, user_id INTEGER, track_id INTEGER, "
        "date_key INTEGER, listen_duration INTEGER, device_type TEXT, stream_timestamp TIMESTAMP)",
        "INSERT INTO FactStream SELECT * FROM FactStream_old",
        "DROP TABLE FactStream_old",
        params=streams,
    )


def test_a_stream_without_a_time_is_named_not_skipped(loaded) -> None:
    """A source without the NOT NULL constraint holds streams without a stream_timestamp: no
    window reads them and no partition can hold them (they were never loaded nor reported:
    `run` and `verify` found all well). The copy fails in one line naming the table, the
    column, how many rows and a key."""
    runner, db = loaded
    unconstrained(db, [(900_002, 100, None), (900_001, 100, None), (900_003, 100, str(LATER))])
    set_clock(db, str(LATER + timedelta(hours=1)))
    expected = (
        r"^FactStream: the source holds 2 rows without a stream_timestamp \(stream_id 900001 "
        r"and others\), which no partition can hold: set their stream_timestamp or delete them "
        r"in the source$"
    )
    with pytest.raises(ValueError, match=expected):
        runner.copy(FACT, None, "no time", from_watermark=True)


def test_a_change_record_without_a_time_is_named_not_skipped(loaded) -> None:
    """A change table without its NOT NULL constraint holds a record without `_changed_at`:
    no window reads it, and the copy fails in one line as for a stream without a time."""
    runner, db = loaded
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA writable_schema = ON")
        conn.execute(
            "UPDATE sqlite_master SET sql = replace(sql, '`_changed_at` TIMESTAMP NOT NULL', "
            "'`_changed_at` TIMESTAMP') WHERE name = 'DimUser_changes'"
        )
    edit(
        db,
        "UPDATE DimUser SET country = 'FR' WHERE user_id = 1",
        "UPDATE DimUser_changes SET _changed_at = NULL",
    )
    expected = (
        r"^DimUser: DimUser_changes holds 1 row without a _changed_at \(user_id 1\), which no "
        "partition can hold"
    )
    with pytest.raises(ValueError, match=expected):
        runner.copy(USERS, None, "no time", from_watermark=True)


@pytest.mark.parametrize("op", [None, "X"], ids=["null", "unknown"])
def test_a_change_record_without_an_operation_is_named_in_one_line(loaded, op: str) -> None:
    """A change table without its constraint on `_op` holds a record that is no insert,
    update or delete: the copy names it in one line (a NULL stopped the table's load with
    "Casting field '_op' with null values to non-nullable"; an unknown one was applied as an
    update)."""
    runner, db = loaded
    constraint = "`_op` TEXT NOT NULL CHECK (`_op` IN ('I', 'U', 'D'))"
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA writable_schema = ON")
        conn.execute(
            "UPDATE sqlite_master SET sql = replace(sql, ?, '`_op` TEXT') "
            "WHERE name = 'DimUser_changes'",
            (constraint,),
        )
    edit(db, "UPDATE DimUser SET country = 'FR' WHERE user_id = 1")
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE DimUser_changes SET _op = ?", (op,))
    set_clock(db, str(LATER))
    expected = (
        rf"^DimUser: DimUser_changes holds change records whose _op is not I, U or D "
        rf"\(user_id 1: {op!r}\): correct or delete them in the source$"
    )
    with pytest.raises(ValueError, match=expected):
        runner.copy(USERS, None, "no operation", from_watermark=True)


def test_a_change_feed_window_without_records_copies_nothing(loaded) -> None:
    """A window of a cdc table that holds no change record and no image: nothing to check,
    nothing copied (the operations' check failed on the empty read)."""
    runner, db = loaded
    set_clock(db, str(LATER))
    result = runner.copy(USERS, None, "quiet", from_watermark=True)
    assert result.rows_read == 0 and result.watermark_after == LATER


def declares_not_null(path: str, column: str) -> bool:
    return not next(f for f in DeltaTable(path).schema().fields if f.name == column).nullable


def as_declared(rows: pa.Table) -> pa.Table:
    """Bronze rows as bronze wrote them before it copied NULL: with the catalog's NOT NULL."""
    declared = pa.schema(
        f.with_nullable(FACT.column(f.name).nullable) if f.name in FACT.column_names else f
        for f in rows.schema
    )
    return rows.cast(declared)


def test_a_lake_from_before_nullable_keys_quarantines_a_null_key(loaded, sail_spark) -> None:
    """Silver and its quarantine built from bronze files that declared the catalog's NOT NULL
    (a lake from before bronze copied NULL), then a NULL key: it reaches quarantine (the write
    failed the quarantine's NOT NULL at every run), silver keeps its key NOT NULL."""
    runner, db = loaded
    for file in runner.store(FACT).current().files:
        path = runner.lake.path(file.path)
        pq.write_table(as_declared(pq.read_table(path)), path)
    silver = SilverStore(runner.lake, sail_spark, FACT)
    before = silver.refresh(None, "before").silver_rows
    assert declares_not_null(silver.quarantine_path, "stream_id"), "as such lakes were"

    (day,) = copy_a_null_key(runner, db).partitions
    counted = silver.refresh((day, day), "null key")
    assert counted.failures["stream_id_not_null"] == 1
    assert silver.read().count() == before
    assert declares_not_null(silver.path, "stream_id")
    assert not declares_not_null(silver.quarantine_path, "stream_id")


def test_bronze_files_from_before_nullable_keys_are_read_with_new_ones(loaded) -> None:
    """Files written when bronze declared the catalog's NOT NULL beside newer ones: the
    reconciliation's profile reads days of both (their schemas differed: it failed)."""
    runner, _ = loaded
    store = runner.store(FACT)
    manifest = store.current()
    first = min(manifest.partitions())
    older = next(f for f in manifest.files if f.partition == first)
    pq.write_table(as_declared(store.read(first, manifest)), runner.lake.path(older.path))

    window = Window(datetime.combine(first, datetime.min.time()), LATER)
    profile = bronze_profile(runner, FACT, window)
    assert sum(day.rows for day in profile.values()) == len(store.read_all(manifest))


@pytest.mark.parametrize("text", ["", "soon"])
def test_a_change_time_that_is_no_time_is_named_in_one_line(loaded, text: str) -> None:
    """SQLite keeps any text in a timestamp column: '' is the oldest change time, 'soon' waits
    after every bound; each stopped every table with "Invalid isoformat string"."""
    runner, db = loaded
    edit(db, params=[(900_001, 100, text)])
    set_clock(db, str(LATER))
    expected = f"^FactStream: the source holds '{text}' in stream_timestamp, which is not a time"
    with pytest.raises(ValueError, match=expected):
        result = runner.copy(FACT, None, "no time", from_watermark=True)
        runner.not_loaded_yet(FACT, result.high)


def test_unix_seconds_in_a_change_time_are_named_with_the_conversion(loaded) -> None:
    """A source a user's tool filled with unix times (INTEGER seconds): the line said only that
    1793617200 is not a time; it names the conversion to the text a time needs."""
    runner, db = loaded
    edit(db, params=[(900_001, 100, 1_793_617_200)])
    set_clock(db, str(LATER))
    expected = (
        "FactStream: the source holds '1793617200' in stream_timestamp, a number, not a time: "
        "if it counts seconds since 1970, store it as UTC text (UPDATE FactStream SET "
        "stream_timestamp = datetime(stream_timestamp, 'unixepoch') WHERE "
        "typeof(stream_timestamp) <> 'text')"
    )
    with pytest.raises(ValueError) as raised:
        runner.copy(FACT, None, "unix", from_watermark=True)
    assert str(raised.value) == expected


@pytest.mark.parametrize(
    ("table", "text"),
    [
        (FACT, f"{LATER:%Y-%m-%dT%H:%M:%S}+02:00"),
        (FACT, f"{LATER:%Y-%m-%dT%H:%M:%S}Z"),
        (FACT, f"{LATER:%Y-%m-%d %H:%M:%S.%f}-05:00"),
        (USERS, f"{LATER:%Y-%m-%dT%H:%M:%S}+02:00"),
    ],
    ids=["fact-plus", "fact-z", "fact-minus", "image"],
)
def test_a_change_time_with_a_zone_offset_is_refused_in_one_line(
    loaded, table: Table, text: str
) -> None:
    """Windows compare SQLite's text (a whole day by its text date), so a change time with an
    offset could land on another day than its UTC one: refused, never re-dated (the fallback
    read dropped the offset: `+02:00` was stored 2 hours off). Among times without one, so it
    is neither the oldest nor the first read."""
    runner, db = loaded
    before = runner.store(table).current().version
    if table is FACT:
        edit(db, params=[(900_001, 100, str(LATER)), (900_002, 100, text)])
    else:
        edit(db, f"UPDATE DimUser SET updated_at = '{text}' WHERE user_id = 1")
    set_clock(db, str(LATER + timedelta(hours=6)))
    column = "stream_timestamp" if table is FACT else "updated_at or _changed_at"
    expected = (
        f"^{table.name}: the source holds {re.escape(repr(text))} in {column}, a time with a "
        "zone offset, "
        r"[^\n]*store it in UTC without an offset$"
    )
    with pytest.raises(ValueError, match=expected):
        runner.copy(table, None, "zoned", from_watermark=True)
    assert runner.store(table).current().version == before, "nothing committed"


def test_a_waiting_change_time_with_a_zone_offset_is_refused(loaded) -> None:
    """Past the clock, the oldest waiting change time is parsed alone: its offset was dropped."""
    runner, db = loaded
    text = f"{LATER + timedelta(days=1):%Y-%m-%dT%H:%M:%S}+02:00"
    edit(db, params=[(900_001, 100, text)])
    set_clock(db, str(LATER))
    expected = f"^FactStream: the source holds {re.escape(repr(text))} in stream_timestamp, a time"
    with pytest.raises(ValueError, match=expected):
        runner.not_loaded_yet(FACT, LATER)


def test_a_timestamp_value_with_a_zone_offset_reaches_silver_in_utc(loaded, sail_spark) -> None:
    """A dimension's change records keep `updated_at` as a value (their change time is the
    capture's): `+02:00` and `Z` are converted to UTC, never read 2 hours off."""
    runner, db = loaded
    set_clock(db, str(LATER))
    edit(db, "UPDATE DimUser SET user_name = 'zoned' WHERE user_id IN (1, 2)")
    day = f"{LATER:%Y-%m-%d}"
    edit(
        db,
        f"UPDATE DimUser_changes SET updated_at = '{day}T10:00:00+02:00' WHERE user_id = 1",
        f"UPDATE DimUser_changes SET updated_at = '{day}T10:00:00Z' WHERE user_id = 2",
    )
    set_clock(db, str(LATER + timedelta(hours=1)))
    result = runner.copy(USERS, None, "zoned values", from_watermark=True)

    (partition,) = result.partitions
    SilverStore(runner.lake, sail_spark, USERS).refresh((partition, partition), "zoned")
    silver = SilverStore(runner.lake, sail_spark, USERS).read()
    rows = silver.where("user_name = 'ZONED'").select("user_id", "updated_at").collect()
    ten = datetime.combine(LATER.date(), datetime.min.time()) + timedelta(hours=10)
    assert {r.user_id: r.updated_at for r in rows} == {1: ten - timedelta(hours=2), 2: ten}


@pytest.mark.parametrize("clock_format", ["%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S.%f"])
def test_any_timestamp_text_lands_in_the_window_of_its_time(loaded, clock_format: str) -> None:
    runner, db = loaded
    second = timedelta(seconds=1)
    times = {
        900_001: f"{LATER - second:%Y-%m-%dT%H:%M:%S}",
        900_002: f"{LATER:%Y-%m-%d %H:%M:%S}",
        900_003: f"{LATER:%Y-%m-%dT%H:%M:%S.000}",
        900_004: f"{LATER + second:%Y-%m-%d %H:%M:%S}",
        900_005: f"{LATER - second:%Y-%m-%d %H:%M:%S.999}",
    }
    edit(db, params=[(k, 100, t) for k, t in times.items()])
    for clock in (LATER, LATER + timedelta(hours=6)):
        set_clock(db, f"{clock:{clock_format}}")
        runner.copy(FACT, None, f"to {clock}", from_watermark=True)

    bronze = runner.store(FACT).read_all()
    new = bronze.filter(pc.greater(bronze["stream_id"], 900_000)).sort_by("stream_id")
    assert new["stream_id"].to_pylist() == sorted(times), "each row exactly once"
    for row in new.to_pylist():
        assert row["_window_start"] <= row["stream_timestamp"] < row["_window_end"], row
    assert runner.store(FACT).current().watermark == LATER + timedelta(hours=6)


@pytest.mark.parametrize("form", ["%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M:%S.%f", "%Y-%m-%d %H:%M"])
def test_rows_loaded_are_not_reported_waiting_whatever_their_text(loaded, form: str) -> None:
    """Waiting rows compared SQLite's text with the bound's ('… HH:MM:SS.fff'): a loaded row of
    the bound's day in the `T` form sorts after it and was reported not loaded yet."""
    runner, db = loaded
    after = LATER + timedelta(hours=7)
    edit(db, params=[(900_001, 100, f"{LATER:{form}}"), (900_002, 100, f"{after:{form}}")])
    set_clock(db, str(LATER + timedelta(hours=6)))
    result = runner.copy(FACT, None, "loaded", from_watermark=True)
    assert runner.not_loaded_yet(FACT, result.high).rows == 1, "the row after the bound only"


def test_sqlite_windows_use_the_change_time_index(loaded) -> None:
    _, db = loaded
    query = DIALECTS[Dialect.SQLITE].extract_query(FACT, Window(CLOCK0, LATER))
    with sqlite3.connect(db) as conn:
        plan = " ".join(str(row) for row in conn.execute(f"EXPLAIN QUERY PLAN {query}"))
    assert "ix_FactStream_stream_timestamp" in plan


def test_untyped_values_keep_their_raw_text() -> None:

    schema = pa.schema([("n", pa.int32()), ("t", pa.timestamp("us"))])
    text = pa.table(
        {
            "n": ["1", "x", None, "3000000000"],
            "t": ["2026-01-01 00:00:00", "2026-01-01T01:00", "", None],
        }
    )
    typed = type_values(text, schema)
    assert typed["n"].to_pylist() == [1, None, None, None]
    assert typed["t"].to_pylist() == [datetime(2026, 1, 1), datetime(2026, 1, 1, 1), None, None]
    assert [json.loads(v) if v else None for v in typed["_untyped"].to_pylist()] == [
        None, {"n": "x"}, {"t": ""}, {"n": "3000000000"},
    ]  # fmt: skip


@given(
    st.datetimes(datetime(1900, 1, 2), datetime(2200, 12, 30)),
    st.integers(-14 * 60, 14 * 60),
    st.sampled_from(["T", " "]),
)
def test_a_timestamp_text_with_a_zone_offset_is_typed_in_utc(
    moment: datetime, minutes: int, sep: str
) -> None:
    """SQLite keeps an ISO text with an offset in a timestamp column: typed, it is its UTC time
    (the lake's times are naive UTC), never the local time with the offset dropped."""
    sign = "-" if minutes < 0 else "+"
    offset = f"{sign}{abs(minutes) // 60:02}:{abs(minutes) % 60:02}"
    texts = [moment.isoformat(sep=sep) + offset, moment.isoformat(sep=sep) + "Z"]
    typed = type_values(pa.table({"t": texts}), pa.schema([("t", pa.timestamp("us"))]))
    assert typed["t"].to_pylist() == [moment - timedelta(minutes=minutes), moment]
    assert typed["_untyped"].to_pylist() == [None, None]


# --- through the command line, as the issue reproduces them ---


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("SPOTIFY_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))
    monkeypatch.delenv("SPOTIFY_SOURCE_ODBC", raising=False)
    monkeypatch.delenv("SPOTIFY_CAPTURE_MODES", raising=False)
    (home / "dagster").mkdir(parents=True)
    argv = ["source", "init", "--scale", "0.002", "--history-days", "21", "--end-date"]
    assert main([*argv, "2026-11-20"]) == 0
    return home


def test_run_after_a_rename_fails_in_one_line(home: Path, capsys: pytest.CaptureFixture[str]):
    edit(home / "source.db", "ALTER TABLE DimUser RENAME COLUMN user_name TO full_name")
    capsys.readouterr()
    # Found inside the bronze asset's run: a runtime failure (exit 1), one line naming it.
    assert main(["run", "--tables", "DimUser"]) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()[-1:]
    assert line.startswith("error: bronze/DimUser ")
    assert "DimUser: the source has no column(s) user_name (renamed or dropped" in line


def test_a_second_run_changes_nothing_whatever_the_timestamp_text(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = home / "source.db"
    set_clock(db, "2026-11-21 12:00:00")
    edit(
        db,
        "UPDATE DimUser SET subscription_type = 'Family', updated_at = '2026-11-21 12:00:00' "
        "WHERE user_id = 1",
        "UPDATE DimUser SET country = 'GB', updated_at = '2026-11-21T06:00:00' WHERE user_id = 2",
    )
    capsys.readouterr()
    assert main(["run", "--tables", "DimUser"]) == 0
    capsys.readouterr()
    assert main(["run", "--tables", "DimUser"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert sum(load["rows"] for load in again["incremental"]) == 0 and again["repaired"] == []


def test_a_repeated_fact_key_is_quarantined_and_one_row_kept(loaded, sail_spark) -> None:
    runner, db = loaded
    silver = SilverStore(runner.lake, sail_spark, FACT)
    silver.refresh(None, "initial")
    ddl = DIALECTS[Dialect.SQLITE].create_table(FACT).replace("FactStream", "Unkeyed")
    ddl = ddl.replace(",\n  PRIMARY KEY (`stream_id`)", "")
    (taken,) = silver.read().orderBy("stream_id").limit(1).collect()
    edit(
        db,
        ddl,
        "INSERT INTO Unkeyed SELECT * FROM FactStream",
        "DROP TABLE FactStream",
        "ALTER TABLE Unkeyed RENAME TO FactStream",
        params=[
            (taken.stream_id, 1, str(LATER)),
            (900_001, 2, str(LATER)),
            (900_001, 1, str(LATER)),
        ],
    )
    set_clock(db, str(LATER + timedelta(hours=1)))
    day = runner.copy(FACT, None, "dup", from_watermark=True).partitions[0]

    for rerun in ("dup", "again"):
        result = silver.refresh((day, day), rerun)
        assert result.failures["stream_id_unique"] == 2
        assert result.silver_rows + result.quarantined == result.bronze_rows
        kept = silver.read().where(f"stream_id IN ({taken.stream_id}, 900001)").collect()
        assert sorted((r.stream_id, r.listen_duration) for r in kept) == [
            (taken.stream_id, taken.listen_duration), (900_001, 1),
        ]  # fmt: skip
    silver.refresh(None, "whole")
    valid = silver.read()
    assert valid.count() == valid.select("stream_id").distinct().count()


def test_a_fact_rebuilt_a_chunk_of_days_at_a_time_equals_one_query(loaded, sail_spark) -> None:
    runner, db = loaded
    ddl = DIALECTS[Dialect.SQLITE].create_table(FACT).replace("FactStream", "Unkeyed")
    ddl = ddl.replace(",\n  PRIMARY KEY (`stream_id`)", "")
    edit(
        db,
        ddl,
        "INSERT INTO Unkeyed SELECT * FROM FactStream",
        "DROP TABLE FactStream",
        "ALTER TABLE Unkeyed RENAME TO FactStream",
        params=[(900_001, 2, str(LATER))],
    )
    set_clock(db, str(LATER + timedelta(hours=1)))
    last = runner.copy(FACT, None, "new", from_watermark=True).partitions[-1]
    days = (HISTORY_START, last)
    SilverStore(runner.lake, sail_spark, FACT).refresh(days, "before")
    # The same key arrives late on the first day: the earliest row wins, whichever chunk holds
    # it, although silver held the other one when the rebuild started.
    first = datetime.combine(HISTORY_START, datetime.min.time())
    edit(db, params=[(900_001, 1, str(first + timedelta(hours=1)))])
    runner.copy(FACT, Window(first, first + timedelta(days=1)), "late")
    bronze_rows = sum(f.rows for f in SilverStore(runner.lake, sail_spark, FACT).bronze_files(days))
    chunked = SilverStore(runner.lake, sail_spark, FACT, chunk_rows=bronze_rows // 2)
    chunks = chunked.chunks(days)
    assert len(chunks) >= 2

    def rebuilt(store: SilverStore) -> tuple[list[tuple], list[tuple], int]:
        before = DeltaTable(store.path).version()
        result = store.refresh(days, "rebuild")
        assert result.failures["stream_id_unique"] == 1
        kept = store.read().where("stream_id = 900001").collect()
        assert [r.listen_duration for r in kept] == [1]
        rows = [sorted(map(tuple, t.collect())) for t in (store.read(), store.read_quarantine())]
        return rows[0], rows[1], DeltaTable(store.path).version() - before

    *in_chunks, commits = rebuilt(chunked)
    assert commits == len(chunks)  # a write per chunk
    *in_one_query, commits = rebuilt(SilverStore(runner.lake, sail_spark, FACT))
    assert commits == 1
    assert in_chunks == in_one_query


@given(
    st.lists(st.tuples(st.integers(-(2**31), 2**31 - 1), st.integers(0, 4)), min_size=1),
    st.integers(1, 9),
)
def test_a_whole_number_in_decimal_notation_fits_an_integer(
    values: list[tuple[int, int]], fraction: int
) -> None:
    """`185.00` is how a server prints a whole NUMERIC: it fits an integer column (a column
    retyped in the source must not send every row to quarantine); `185.5` does not."""
    whole = [f"{n}.{'0' * zeros}" if zeros else str(n) for n, zeros in values]
    typed = type_values(pa.table({"n": [*whole, f"7.{fraction}"]}), pa.schema([("n", pa.int32())]))
    assert typed["n"].to_pylist() == [n for n, _ in values] + [None]
    assert typed["_untyped"].to_pylist() == [None] * len(values) + [f'{{"n": "7.{fraction}"}}']
