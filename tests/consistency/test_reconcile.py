"""Reconciliation: its pure parts, its profile query on each dialect, and
every layer boundary (source, bronze, silver, gold fact, aggregates) repaired by the next `run`
after an interrupted one, or by the reconciliation sensor, over all loaded days."""

from __future__ import annotations

import itertools
import json
import os
import random
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from dagster import DagsterInstance, build_sensor_context
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlglot import exp

from resources import reconciler
from resources.copy_runner import LocalCopyRunner
from resources.delta_tables import delta_table, partition_stats, table_stats
from resources.gold_runner import GoldRunner
from resources.lake import LakeStorage
from resources.reconciler import reconcile
from resources.silver_store import SilverStore
from spotify_assets.bronze.dialects import DIALECTS, Dialect
from spotify_assets.bronze.profile import (
    FileProfile,
    added,
    day_profiles,
    file_profile,
    profiled_columns,
)
from spotify_assets.bronze.windows import Window
from spotify_assets.catalog.gold_spec import (
    UNMATCHED_DIMENSION,
    UNMATCHED_FACTS,
    UNMATCHED_KEY,
    PointInTimeFact,
)
from spotify_assets.catalog.lake_paths import silver_path
from spotify_assets.catalog.tables import (
    CATALOG,
    CHANGE_AT,
    CHANGE_DATE,
    CHANGE_SEQ,
    VERSION_AT,
    CaptureMode,
    Table,
)
from spotify_assets.cli.commands import instance_config, refresh, run, source_simulate
from spotify_assets.consistency.reconcile import (
    ABSENT,
    AFFECTS_FROM,
    DayProfile,
    Layer,
    PartitionStats,
    affects_from,
    behind,
    day_ranges,
    first_layers,
    lookback_window,
    members_arrived,
    repair_ranges,
    stale_days,
    stale_partitions,
    written_before,
)
from spotify_assets.orchestration.catch_up import CatchUp
from spotify_assets.orchestration.definitions import build_definitions
from spotify_assets.orchestration.ingest import plan_repairs
from spotify_assets.orchestration.partitions import (
    PARTITION_RANGE_END_TAG,
    PARTITION_RANGE_START_TAG,
)
from spotify_assets.orchestration.resources import copy_runner
from spotify_assets.orchestration.settings import Settings
from spotify_assets.source.simulator import SimulationRates, simulate
from tests.helpers.bronze import load_everything, parquet_reads, runner_for
from tests.helpers.gold_reference import assert_gold_equals_source, small_source, source_session
from tests.helpers.processes import Lakehouse, cli_imports
from tests.helpers.source import LATE, SEED, initialise
from tests.helpers.tsql import parse_tsql

D1, D2, D3, D5 = date(2026, 3, 1), date(2026, 3, 2), date(2026, 3, 3), date(2026, 3, 5)


def test_a_day_differs_by_rows_checksum_or_presence() -> None:
    source = {D1: DayProfile(3, 10), D2: DayProfile(2, 7), D3: DayProfile(1, 1)}
    lake = {D1: DayProfile(3, 10), D2: DayProfile(2, 8), D5: DayProfile(1, 4)}
    assert stale_days(source, lake) == [D2, D3, D5]
    assert stale_days(source, source) == []


def test_consecutive_days_make_one_range() -> None:
    assert day_ranges([D5, D1, D2, D3, D2]) == [(D1, D3), (D5, D5)]
    assert day_ranges([]) == []


def test_a_partition_is_behind_its_upstream_by_rows_presence_or_age() -> None:
    rows = PartitionStats(5, written=100)
    assert not behind(rows, PartitionStats(5, written=100), one_to_one=False)
    assert not behind(rows, PartitionStats(3, written=101), one_to_one=False)  # dropped, grouped
    assert behind(rows, PartitionStats(3, written=99), one_to_one=False)  # built before upstream
    assert behind(rows, PartitionStats(6, written=101), one_to_one=False)  # more than upstream
    assert behind(rows, ABSENT, one_to_one=False)  # empty where it should hold data
    assert behind(ABSENT, PartitionStats(1, written=1), one_to_one=False)
    assert behind(rows, PartitionStats(4, written=101), one_to_one=True)
    assert not behind(PartitionStats(5), PartitionStats(5, written=1), one_to_one=True)
    upstream = {D1: rows, D2: rows}
    assert stale_partitions(upstream, {D1: rows, D3: rows}, one_to_one=False) == {D2, D3}


def test_a_fact_day_is_stale_once_a_dimension_day_up_to_it_was_rewritten() -> None:
    dimensions = {D2: PartitionStats(0, written=50)}
    fact = {d: PartitionStats(1, written=40) for d in (D1, D2, D3)} | {D5: PartitionStats(1, 60)}
    assert written_before(dimensions, fact) == {D2, D3}


def test_a_dimension_version_affects_the_fact_from_its_business_day_or_every_day() -> None:
    """A version changes the fact's point-in-time lookups from its business day on, even if it
    was captured days later (an update keeping an old updated_at); one that can replace its
    key's first version, which every older fact of the key takes, changes every day."""
    day = {d: date(2026, 1, d) for d in range(1, 10)}
    versions = [  # key, business time, sequence, captured on: the first fact day it changes
        (1, datetime(2026, 1, 3, 5), None, day[3], day[3]),  # an image
        (1, datetime(2026, 1, 3, 5), 7, day[9], date.min),  # an update keeping its time
        (2, datetime(2026, 1, 2), None, day[2], day[2]),
        (2, datetime(2026, 1, 9, 8), 8, day[9], day[9]),  # an update
        (2, datetime(2026, 1, 9, 8), 9, day[9], day[9]),  # keeping its time: not the first
        (3, datetime(2026, 1, 5), 3, day[5], day[5]),  # a new key's insert
        (3, datetime(2026, 1, 4), 5, day[9], date.min),  # backdated before it
        (4, datetime(2026, 1, 1), None, day[1], day[1]),
        (4, datetime(2026, 1, 8), 10, day[8], day[8]),  # a delete
        (4, datetime(2026, 1, 1), 11, day[8], date.min),  # a restore with its original time
    ]
    names = ["user_id", VERSION_AT, CHANGE_SEQ, CHANGE_DATE, "expected"]
    table = pa.table(
        dict(zip(names, zip(*versions, strict=True), strict=True)),
        schema=pa.schema([("user_id", pa.int32()), (VERSION_AT, pa.timestamp("us")),
                          (CHANGE_SEQ, pa.int64()), (CHANGE_DATE, pa.date32()),
                          ("expected", pa.date32())]),
    )  # fmt: skip
    found = affects_from(table, ["user_id"], VERSION_AT, CHANGE_SEQ, CHANGE_DATE)
    assert found["expected"].to_pylist() == found[AFFECTS_FROM].to_pylist()
    by_day = {d: PartitionStats(0, 50) for d in found[AFFECTS_FROM].to_pylist()}
    fact = {d: PartitionStats(1, 40) for d in day.values()}
    assert written_before(by_day, fact) == set(day.values())


def _first_day_affected(rows: list[tuple[int, datetime | None, int | None, date]]) -> list[date]:
    """`affects_from` by its definition, key by key in plain Python."""
    found = []
    for key, time, sequence, day in rows:
        own = [r for r in rows if r[0] == key]
        earliest = min((r[1] for r in own if r[1] is not None), default=None)
        first = min((r[2] for r in own if r[2] is not None), default=None)
        follows = any(r[2] is None for r in own) or (sequence is not None and sequence > first)
        replaces = sequence is not None and time is not None and time == earliest and follows
        found.append(date.min if replaces else min(day, time.date()) if time else day)
    return found


@settings(deadline=None)  # the first example pays pyarrow's first conversions
@given(
    st.lists(
        st.tuples(
            st.integers(1, 3),
            st.none() | st.sampled_from([datetime(2026, 1, d, h) for d in (2, 3) for h in (0, 9)]),
            st.none() | st.integers(1, 4),
            st.sampled_from([date(2026, 1, d) for d in (1, 2, 3, 4)]),
        ),
        max_size=12,
    )
)
def test_affects_from_follows_its_definition(
    rows: list[tuple[int, datetime | None, int | None, date]],
) -> None:
    names = ["user_id", VERSION_AT, CHANGE_SEQ, CHANGE_DATE]
    types = [pa.int32(), pa.timestamp("us"), pa.int64(), pa.date32()]
    columns = zip(*rows, strict=True) if rows else [[] for _ in names]
    versions = pa.table(
        [pa.array(c, t) for c, t in zip(columns, types, strict=True)], names=names
    ).append_column("row", pa.array(range(len(rows)), pa.int64()))
    found = affects_from(versions, ["user_id"], VERSION_AT, CHANGE_SEQ, CHANGE_DATE)
    by_row = dict(zip(found["row"].to_pylist(), found[AFFECTS_FROM].to_pylist(), strict=True))
    assert [by_row[i] for i in range(len(rows))] == _first_day_affected(rows)


_TIMES = [datetime(2026, 1, d, h, m) for d in (2, 3, 4) for h in (0, 23) for m in (0, 59)]


@settings(deadline=None)
@given(
    st.sampled_from(["FactStream", "DimUser"]),
    st.lists(
        st.tuples(
            st.none() | st.sampled_from(_TIMES),
            st.none() | st.integers(1, 2**62),  # the key
            st.none() | st.integers(1, 2**62),  # the sequence (None: an image)
        ),
        max_size=12,
    ),
    st.lists(st.integers(0, 12), max_size=3),
    st.sampled_from(_TIMES),
    st.sampled_from(_TIMES),
)
def test_recorded_file_profiles_add_up_to_the_profile_of_their_rows(
    name: str,
    rows: list[tuple[datetime | None, int | None, int | None]],
    cuts: list[int],
    start: datetime,
    end: datetime,
) -> None:
    """Rows cut into files: each file's recorded profile stands for it where the window holds
    its rows, the rest is profiled from the rows in the window (as reconciliation does), and
    together they are the profile of every row in the window."""
    table = CATALOG[name]
    time, key, sequence = profiled_columns(table)[0], table.key[0], CHANGE_SEQ
    types = {time: pa.timestamp("us"), key: pa.int64(), sequence: pa.int64()}
    columns = list(zip(*rows, strict=True)) if rows else [[], [], []]
    held = pa.table({c: pa.array(v, types[c]) for c, v in zip(types, columns, strict=True)})
    window = Window(min(start, end), max(start, end))
    bounds = [0, *sorted(min(c, len(rows)) for c in cuts), len(rows)]
    files = [held.slice(a, b - a) for a, b in itertools.pairwise(bounds)]
    recorded = [(f, file_profile(f, table)) for f in files]
    parts = [p.days if p.within(window) else day_profiles(f, table, window).items()
             for f, p in recorded]  # fmt: skip
    assert added(parts) == day_profiles(held, table, window)
    for f, p in recorded:
        if p.within(window):
            assert dict(p.days) == day_profiles(f, table, window)
        assert FileProfile.from_json(json.loads(json.dumps(p.to_json()))) == p


def test_a_fact_day_is_stale_once_a_member_it_found_no_row_of_has_arrived() -> None:
    """Facts of a key no dimension row had when their day was built take the key's first
    version once it arrives, whatever its business time: exactly those days are rebuilt."""
    unmatched = pa.table(
        {
            "stream_date": [D1, D2, D3, D5],
            UNMATCHED_DIMENSION: ["DimUser", "DimTrack", "DimUser", "DimUser"],
            UNMATCHED_KEY: ["7", "7", "8", "9"],
            UNMATCHED_FACTS: [1, 2, 1, 3],
        }
    )
    present = {"DimUser": pa.array(["1", "7", "9"]), "DimTrack": pa.array(["8"])}
    assert members_arrived(unmatched, present, "stream_date") == {D1, D5}
    assert members_arrived(unmatched, {}, "stream_date") == set()


def test_a_day_is_rebuilt_from_its_first_stale_layer_in_ranges() -> None:
    first = first_layers(
        [(Layer.BRONZE, [D3]), (Layer.SILVER, [D1, D3]), (Layer.AGGREGATES, [D2, D5])]
    )
    assert first == {D1: Layer.SILVER, D2: Layer.AGGREGATES, D3: Layer.BRONZE, D5: Layer.AGGREGATES}
    assert repair_ranges(first) == [
        (Layer.BRONZE, D3, D3), (Layer.SILVER, D1, D1), (Layer.AGGREGATES, D2, D2),
        (Layer.AGGREGATES, D5, D5),
    ]  # fmt: skip


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
    # The records the extraction keeps (tests/test_dialects.py runs both on emulated CDC).
    assert extract.left.args["where"].sql("tsql") in sql
    assert sql.count("sys.fn_cdc_map_time_to_lsn") == 2


def test_reconcile_sees_rows_the_lake_lacks(sqlite_source, tmp_path) -> None:
    initialise(sqlite_source)
    runner = runner_for(sqlite_source, tmp_path / "lake")
    load_everything(runner, sqlite_source.catalog)
    fact = sqlite_source.catalog["FactStream"]
    # Silver is not built here: every loaded day is stale from silver, none from bronze.
    assert set(reconcile(runner, fact, 7).stale.values()) == {Layer.SILVER}
    with sqlite_source.session() as session:
        stream_id, ts = session.query(
            "SELECT stream_id, stream_timestamp FROM FactStream ORDER BY stream_timestamp DESC"
        )[3]
        session.execute("DELETE FROM FactStream WHERE stream_id = ?", [stream_id])
    found = reconcile(runner, fact, 7)
    day = datetime.fromisoformat(str(ts)).date()
    assert [d for d, layer in found.stale.items() if layer is Layer.BRONZE] == [day]
    assert found.source[day].rows == found.bronze[day].rows - 1
    assert "stale" in found.describe()


def _without_profiles(runner: LocalCopyRunner, table: Table) -> None:
    """The latest manifest of `table` as written before bronze recorded its files' sizes and
    profiles (today's lakes)."""
    store = runner.store(table)
    path = Path(runner.lake.path(store.manifest_path(store.current().version)))
    manifest = json.loads(path.read_text())
    for file in manifest["files"]:
        del file["bytes"], file["profile"]
    path.write_text(json.dumps(manifest))


def test_manifests_without_profiles_are_reconciled_from_their_files(
    sqlite_source, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lake whose manifests hold no profile of their files (written before they did) is
    reconciled as before, from its files read back; the same days are found stale."""
    initialise(sqlite_source)
    runner = runner_for(sqlite_source, tmp_path / "lake")
    load_everything(runner, sqlite_source.catalog)
    with sqlite_source.session() as session:
        session.execute("DELETE FROM FactStream WHERE stream_id = (SELECT stream_id FROM "
                        "FactStream ORDER BY stream_timestamp DESC LIMIT 1 OFFSET 3)")  # fmt: skip
        session.apply(simulate(session.read_state(), days=1, seed=SEED, rates=LATE))
    tables = [t for t in sqlite_source.catalog if t.change_time_column]
    recorded = {t.name: reconcile(runner, t, 7) for t in tables}
    assert any(Layer.BRONZE in found.stale.values() for found in recorded.values())

    read = parquet_reads(monkeypatch)
    assert {t.name: reconcile(runner, t, 7) for t in tables} == recorded
    assert read == []
    for table in tables:
        _without_profiles(runner, table)
    assert {t.name: reconcile(runner, t, 7) for t in tables} == recorded
    assert {path.split("/")[1] for path in read} == {t.name for t in tables}


def test_a_bronze_file_changed_since_it_was_written_is_read_not_its_profile(
    sqlite_source, tmp_path
) -> None:
    """A file of another size than the manifest recorded (replaced by hand, damaged) is read:
    its day is compared with the source by what it holds now."""
    initialise(sqlite_source)
    runner = runner_for(sqlite_source, tmp_path / "lake")
    fact = sqlite_source.catalog["FactStream"]
    runner.copy(fact, None, "first", from_watermark=True)
    manifest = runner.store(fact).current()
    day = max(manifest.partitions())
    assert reconcile(runner, fact, 7).stale.get(day) is not Layer.BRONZE
    (file, *_) = manifest.files_of(day)
    path = runner.lake.path(file.path)
    pq.write_table(pq.read_table(path).slice(1), path)
    assert reconcile(runner, fact, 7).stale[day] is Layer.BRONZE


# Days reconciliation used to skip: older than the lookback of the resume logic and of the
# source comparison (the small source's history ends 4 days ago and spans 21 days).
OLD = 15


def _lakehouse(home: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """A small embedded source; CLI runs and in-process runs share one Dagster instance."""
    settings = small_source(home)
    settings.dagster_home.mkdir(parents=True)
    (settings.dagster_home / "dagster.yaml").write_text(instance_config())
    monkeypatch.setenv("DAGSTER_HOME", str(settings.dagster_home))
    return settings


def _delta_versions(settings: Settings) -> dict[str, int]:
    """Versions of every silver and gold table but the calendar's (a snapshot is copied whole
    by every run)."""
    tables = [t for t in CATALOG if t.mode is not CaptureMode.SNAPSHOT]
    names = [f"silver/{t.lake_name}" for t in tables]
    names += [f"gold/{t.lake_name}" for t in tables if t.gold]
    names += [f"gold/{a.name}" for a in CATALOG.aggregates]
    lake = LakeStorage(url=settings.lake_url)
    return {name: delta_table(lake, name).version() for name in names}


def _drop_source_streams(settings: Settings, day: date, count: int) -> None:
    """Streams deleted at the source (watermark mode cannot see it): only a refresh of `day`
    brings the lake level again."""
    with source_session(settings) as session:
        session.execute(
            "DELETE FROM FactStream WHERE stream_id IN (SELECT stream_id FROM FactStream "
            "WHERE date(stream_timestamp) = ? LIMIT ?)",
            (day.isoformat(), count),
        )


# Each test runs the pipeline several times (Dagster runs).
@pytest.mark.timeout(600)
def test_the_next_run_repairs_a_run_killed_after_bronze_committed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, killed_run
) -> None:
    settings = _lakehouse(tmp_path, monkeypatch)
    killed_run(Lakehouse(settings.home), random.Random(5))  # the initial load: all the history
    run(settings)
    assert_gold_equals_source(settings)

    # An SCD2 dimension emptied outside any run: applying only what silver gained since would
    # leave it empty, so it is rebuilt whole, and the fact after it.
    lake, users = LakeStorage(url=settings.lake_url), f"gold/{CATALOG['DimUser'].lake_name}"
    rows = delta_table(lake, users).to_pyarrow_table().num_rows
    delta_table(lake, users).delete()
    run(settings)
    assert delta_table(lake, users).to_pyarrow_table().num_rows == rows
    assert_gold_equals_source(settings)


def _fail(*args: object, **kwargs: object) -> None:
    raise RuntimeError("injected failure")


@pytest.mark.timeout(600)
def test_the_next_run_repairs_a_failure_in_each_layer_and_lost_gold_partitions(
    loaded_lakehouse: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = loaded_lakehouse
    today = datetime.now(UTC).date()
    failing = {"silver": (SilverStore, "refresh"), "gold fact": (GoldRunner, "build_fact"),
               "aggregates": (GoldRunner, "build_aggregate")}  # fmt: skip
    for n, (owner, method) in enumerate(failing.values()):
        day = today - timedelta(days=OLD + n)
        _drop_source_streams(settings, day, 3)
        with monkeypatch.context() as patch, pytest.raises(Exception, match="injected"):
            patch.setattr(owner, method, _fail)
            refresh(settings, day, day, [CATALOG.fact.name])  # bronze re-extracted, then fails
    run(settings)
    assert_gold_equals_source(settings)

    # Gold partitions lost outside any run, older than the lookback: the reconciliation
    # sensor requests the rebuild of exactly those days, from the layer that lost them.
    lake = LakeStorage(url=settings.lake_url)
    fact, aggregate = CATALOG.fact.lake_name, CATALOG.aggregates[0].name
    deleted, emptied = today - timedelta(days=OLD + 4), today - timedelta(days=OLD + 5)
    delta_table(lake, f"gold/{fact}").delete(f"stream_date = '{deleted}'")
    delta_table(lake, f"gold/{aggregate}").delete(f"stream_date = '{emptied}'")
    defs, instance = build_definitions(settings), DagsterInstance.get()
    sensor = defs.resolve_sensor_def("reconciliation_sensor")
    with build_sensor_context(instance=instance, resources=defs.resources,
                              definitions=defs) as context:  # fmt: skip
        requests = sensor.evaluate_tick(context).run_requests or []
    selected = {
        (r.tags[PARTITION_RANGE_START_TAG], r.tags[PARTITION_RANGE_END_TAG]): {
            k.path[-1] for k in r.asset_selection
        }
        for r in requests
    }
    aggregates = {a.name for a in CATALOG.aggregates}
    assert selected == {
        (str(deleted), str(deleted)): {fact, *aggregates},
        (str(emptied), str(emptied)): aggregates,
    }
    for request in requests:
        CatchUp(defs, instance).execute(request)
    assert_gold_equals_source(settings)

    versions = _delta_versions(settings)
    assert run(settings)["repaired"] == []
    assert _delta_versions(settings) == versions, "a run with nothing to do writes nothing"


@pytest.mark.timeout(600)
def test_reconciliation_reads_only_the_dimension_versions_written_since_the_fact_was_built(
    loaded_lakehouse: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A silver file of a dimension older than every fact day's build cannot make one stale:
    a run with nothing new reads no version, a run after a simulated day the versions of the
    keys changed since the initial load, not the dimensions' whole history; and an idle run
    reading them does not import pandas."""
    settings = loaded_lakehouse
    read: list[int] = []

    def counted(versions: pa.Table, *columns: object) -> pa.Table:
        read.append(versions.num_rows)
        return affects_from(versions, *columns)  # type: ignore[arg-type]

    monkeypatch.setattr(reconciler, "affects_from", counted)
    assert run(settings)["repaired"] == []
    assert read == []

    source_simulate(settings, 1, 3, SimulationRates(late_fraction=0.0))
    run(settings)
    spec = CATALOG.fact.gold
    assert isinstance(spec, PointInTimeFact)
    lake = LakeStorage(url=settings.lake_url)
    history = [table_stats(lake, silver_path(CATALOG[x.dimension])).rows for x in spec.lookups]
    assert read, "the new versions are read"
    assert max(read) * 10 < min(history), (read, history)
    assert_gold_equals_source(settings)
    # Reading them takes neither pyarrow's datasets nor Acero, which import pandas.
    result, imported = cli_imports(["run"], ("pandas",), dict(os.environ))
    assert json.loads(result.stdout) == {"incremental": [], "repaired": []}
    assert imported == []


@pytest.mark.timeout(600)
def test_late_streams_are_repaired_in_the_incremental_run_itself(
    loaded_lakehouse: Settings,
) -> None:
    """Late streams are in the source when `run` starts: their days are re-extracted by the
    incremental run, one Dagster run, and reconciliation afterwards finds nothing."""
    settings = loaded_lakehouse
    source_simulate(settings, 1, SEED, LATE)
    runner = copy_runner(settings)
    catalog = runner.source.catalog
    fact = catalog.fact
    late = {d for d, at in reconcile(runner, fact, settings.reconcile_lookback_days).stale.items()
            if at is Layer.BRONZE}  # fmt: skip
    assert late, "the simulated day holds late streams in loaded days"
    instance = DagsterInstance.get()
    runs = instance.get_runs_count()
    dimensions = [silver_path(t) for t in catalog if t.change_time_column and t is not fact]
    watermark = runner.store(fact).current().watermark
    assert watermark is not None

    def loaded_days(name: str) -> dict[date, PartitionStats]:
        held = partition_stats(runner.lake, name, CHANGE_DATE)
        return {day: stats for day, stats in held.items() if day < watermark.date()}

    before = {name: loaded_days(name) for name in dimensions}
    result = run(settings)
    assert instance.get_runs_count() == runs + 1
    assert result["repaired"] == []
    # The run's days start at the first late day; the dimensions' bronze changed none of the
    # loaded ones: their silver partitions stay as they were.
    assert {name: loaded_days(name) for name in dimensions} == before
    (load,) = [load for load in result["incremental"] if load["table"] == fact.name]
    assert load["window"].startswith(f"[{min(late)} 00:00:00, ")
    assert plan_repairs(runner, list(catalog), settings.reconcile_lookback_days, True) == []
    assert_gold_equals_source(settings)


def _late_copies(settings: Settings, day: date, count: int) -> None:
    """`count` streams of `day` inserted again under new ids: late rows of a loaded day."""
    with source_session(settings) as session:
        session.execute(
            "INSERT INTO FactStream SELECT stream_id + 1000000, user_id, track_id, date_key, "
            "listen_duration, device_type, stream_timestamp FROM FactStream "
            "WHERE date(stream_timestamp) = ? LIMIT ?",
            (day.isoformat(), count),
        )


@pytest.mark.timeout(600)
def test_a_run_after_a_crash_with_late_days_rebuilds_them_in_one_run(
    loaded_lakehouse: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run that re-extracted late days and stopped before silver: the next run resumes from
    the first of them, even one older than the lookback counted from today (the source's clock
    behind the wall clock): one Dagster run, and reconciliation afterwards finds nothing."""
    settings = loaded_lakehouse
    lookback = settings.reconcile_lookback_days
    watermark = copy_runner(settings).store(CATALOG.fact).current().watermark
    assert watermark is not None
    early = watermark.date() - timedelta(days=lookback - 1)
    assert early < datetime.now(UTC).date() - timedelta(days=lookback), "clock behind today"
    for day in (early, watermark.date() - timedelta(days=2)):
        _late_copies(settings, day, 3)
    with monkeypatch.context() as patch, pytest.raises(Exception, match="injected"):
        patch.setattr(SilverStore, "refresh", _fail)
        run(settings)  # bronze re-extracted from `early`, then stopped
    instance = DagsterInstance.get()
    runs = instance.get_runs_count()
    assert run(settings)["repaired"] == []
    assert instance.get_runs_count() == runs + 1
    runner = copy_runner(settings)
    assert plan_repairs(runner, list(runner.source.catalog), lookback, True) == []
    assert_gold_equals_source(settings)
