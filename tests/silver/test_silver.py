"""Silver on the lake (README: Silver): Delta partitions replaced from bronze, on Sail."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pytest
from dagster import DagsterEventType, DagsterInstance
from deltalake import DeltaTable
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from resources import silver_store
from resources.delta_tables import add_actions
from resources.lake import LakeStorage
from resources.silver_store import SilverStore
from spotify_assets.bronze.windows import Window
from spotify_assets.catalog.tables import CATALOG, RUN_ID, Table, TableRole
from spotify_assets.cli.commands import source_init, source_simulate
from spotify_assets.orchestration import ingest
from spotify_assets.orchestration.settings import Settings
from spotify_assets.silver.transform import CHANGE_DATE, RULE, in_windows, transform
from spotify_assets.source.generator import generate
from spotify_assets.source.simulator import SimulationRates, simulate
from tests.helpers.bronze import load_everything, runner_for
from tests.helpers.source import HISTORY_END, ON_TIME, SEED, initialise
from tests.helpers.spark_requests import naming, record_requests

ALL_DAYS = (date(2026, 1, 1), HISTORY_END + timedelta(days=3))
DIRTY = SimulationRates(dirty_fraction=0.3, late_fraction=0.0)


@pytest.fixture
def lakehouse(sqlite_source, tmp_path: Path, sail_spark):
    source = sqlite_source
    initialise(source)
    runner = runner_for(source, tmp_path / "lake")
    with source.session() as session:
        session.apply(simulate(session.read_state(), days=2, seed=SEED, rates=DIRTY))
    load_everything(runner, source.catalog, "initial")
    return source, runner, sail_spark


def store_of(lakehouse, name: str) -> SilverStore:
    _, runner, spark = lakehouse
    return SilverStore(runner.lake, spark, CATALOG[name])


def days_of(table: Table) -> tuple[date, date] | None:
    return ALL_DAYS if table.change_time_column else None


def snapshot(store: SilverStore) -> list[tuple]:
    return sorted(tuple(row) for row in store.read().collect())


def test_full_build_writes_delta_that_any_reader_opens(lakehouse) -> None:
    for table in CATALOG:
        store = store_of(lakehouse, table.name)
        result = store.refresh(days_of(table), "build")
        assert result.bronze_rows > 0
        assert result.silver_rows + result.quarantined <= result.bronze_rows
        delta = DeltaTable(store.path)
        assert delta.to_pyarrow_table().num_rows == result.silver_rows
        expected = [CHANGE_DATE] if table.change_time_column else []
        assert delta.metadata().partition_columns == expected
        assert {f.name for f in delta.schema().fields} >= set(table.column_names)


def test_dirty_rows_land_in_quarantine_with_their_rule(lakehouse) -> None:
    store = store_of(lakehouse, "FactStream")
    result = store.refresh(ALL_DAYS, "build")
    quarantine = DeltaTable(store.quarantine_path).to_pyarrow_table()
    assert quarantine.num_rows == result.quarantined > 0
    rules = set(quarantine[RULE].to_pylist())
    assert rules <= {"user_id_not_null", "track_id_not_null", "listen_duration_in_range"}
    assert result.failures["listen_duration_in_range"] > 0
    silver = DeltaTable(store.path).to_pyarrow_table()
    bad = pc.or_(
        pc.less(silver["listen_duration"], 0), pc.greater(silver["listen_duration"], 86400)
    )
    assert not pc.any(bad).as_py() and pc.all(pc.is_valid(silver["user_id"])).as_py()
    devices = set(silver["device_type"].to_pylist())
    assert devices <= {"mobile", "desktop", "web", "smart_speaker", "tv"}, "padding/case cleaned"


def test_replaying_a_partition_changes_nothing(lakehouse) -> None:
    for table in CATALOG:
        store = store_of(lakehouse, table.name)
        store.refresh(days_of(table), "build")
        before = snapshot(store)
        day = HISTORY_END if table.change_time_column else None
        store.refresh((day, day) if day else None, "replay")
        assert snapshot(store) == before, f"{table.lake_name}: a replay changed silver"


def test_a_dimension_keeps_one_file_per_day(lakehouse) -> None:
    # Every later read of the whole dimension (the next apply's preceding versions, gold's
    # versions of the changed keys, reconciliation) pays per file: its windows' hash buckets
    # would write a file per bucket stream into every day.
    for table in (t for t in CATALOG if t.role is TableRole.DIMENSION):
        store = store_of(lakehouse, table.name)
        store.refresh(ALL_DAYS, "build")
        store.refresh((HISTORY_END, HISTORY_END), "replay")
        days = add_actions(DeltaTable(store.path))[f"partition.{CHANGE_DATE}"].to_pylist()
        assert len(days) == len(set(days)) > 1, f"{table.lake_name}: {len(days)} files"


def test_a_dimension_of_more_than_one_batch_keeps_one_file_per_day(
    sqlite_source, tmp_path: Path, sail_spark
) -> None:
    # Past one of Sail's batches (8192 rows) a step after the gathering by day spread each day
    # over both streams again (scale 1's 20k artists: two files a day).
    data = generate(0.1, SEED, HISTORY_END)  # 10k users, in one held bronze chunk
    initialise(sqlite_source, replace(data, shape=replace(data.shape, streams=0)))
    runner = runner_for(sqlite_source, tmp_path / "lake")
    users = sqlite_source.catalog["DimUser"]
    runner.copy(users, None, "initial", from_watermark=True)
    store = SilverStore(runner.lake, sail_spark, users)
    assert store.refresh(ALL_DAYS, "build").silver_rows > 8192
    days = add_actions(DeltaTable(store.path))[f"partition.{CHANGE_DATE}"].to_pylist()
    assert len(days) == len(set(days)), f"{len(days)} files for {len(set(days))} days"


def test_a_load_with_nothing_to_quarantine_writes_no_quarantine_version(
    sqlite_source, tmp_path: Path, sail_spark
) -> None:
    # Writing the quarantine runs the whole transform a second time; with every bronze row
    # valid (the manifest's and the log's counts tell) a first load commits each table once,
    # rows and all (no empty version first), and a rebuild writes no quarantine version.
    initialise(sqlite_source)
    runner = runner_for(sqlite_source, tmp_path / "lake")
    load_everything(runner, sqlite_source.catalog, "initial")
    for table in CATALOG:
        store = SilverStore(runner.lake, sail_spark, table)
        result = store.refresh(days_of(table), "build")
        assert result.silver_rows == result.bronze_rows > 0, table.lake_name
        assert result.quarantined == 0 and not any(result.failures.values())
        assert DeltaTable(store.path).version() == 0, table.lake_name
        assert DeltaTable(store.quarantine_path).version() == 0, table.lake_name
        assert DeltaTable(store.quarantine_path).to_pyarrow_table().num_rows == 0
        day = max(result.rows_per_day, default=None)  # the newest day holding rows
        store.refresh((day, day) if day else None, "replay")
        assert DeltaTable(store.path).version() == 1, table.lake_name
        assert DeltaTable(store.quarantine_path).version() == 0, table.lake_name


def test_a_dimension_whose_versions_collapse_writes_no_quarantine_without_a_failing_row(
    sqlite_source, tmp_path: Path, sail_spark, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A dimension's images and change records of one version collapse, so the counts cannot
    # tell that nothing is quarantined; that no row fails a rule can, without running the
    # transform a second time to write an empty quarantine.
    initialise(sqlite_source)
    runner = runner_for(sqlite_source, tmp_path / "lake")
    load_everything(runner, sqlite_source.catalog, "initial")
    clean = SimulationRates(dirty_fraction=0.0, late_fraction=0.0)
    with sqlite_source.session() as session:
        session.apply(simulate(session.read_state(), days=2, seed=SEED, rates=clean))
    load_everything(runner, sqlite_source.catalog, "incremental")
    changed = (HISTORY_END, HISTORY_END + timedelta(days=2))
    stores = [SilverStore(runner.lake, sail_spark, t) for t in CATALOG]
    collapsing = [
        s
        for s in stores
        if s.table.role is TableRole.DIMENSION
        and transform(s.table, s.read_bronze(changed), "probe").repeats
    ]
    assert collapsing, "no dimension whose versions collapse"
    for store in collapsing:
        store.refresh(ALL_DAYS, "build")
    written: list[str] = []
    replace = silver_store.replace_partitions

    def recorded(lake: LakeStorage, frame: DataFrame, path: str, *rest: Any) -> None:
        written.append(path)
        replace(lake, frame, path, *rest)

    monkeypatch.setattr(silver_store, "replace_partitions", recorded)
    for store in collapsing:
        store.refresh(changed, "replay")
        assert DeltaTable(store.quarantine_path).to_pyarrow_table().num_rows == 0
    assert written == [store.path for store in collapsing]


def test_a_day_whose_rows_all_turn_valid_loses_its_quarantined_rows(lakehouse) -> None:
    source, runner, _ = lakehouse
    facts = runner.source.catalog["FactStream"]
    store = store_of(lakehouse, "FactStream")
    built = store.refresh(ALL_DAYS, "build")
    day = max(built.quarantined_per_day)
    quarantine = DeltaTable(store.quarantine_path).to_pyarrow_table()
    on_day = pc.equal(quarantine[CHANGE_DATE], day)
    dirty = quarantine.filter(on_day)["stream_id"].to_pylist()
    assert dirty and None not in dirty
    # The source loses the day's dirty rows; the day's bronze is re-extracted and rebuilt.
    with sqlite3.connect(source.sqlite_path()) as db:
        db.execute(f"DELETE FROM FactStream WHERE stream_id IN ({','.join(map(str, dirty))})")
    runner.copy(facts, Window.of_days(day, day), "refresh")
    result = store.refresh((day, day), "refresh")
    assert result.quarantined == 0 and result.silver_rows == result.bronze_rows > 0
    after = DeltaTable(store.quarantine_path).to_pyarrow_table()
    assert not pc.any(pc.equal(after[CHANGE_DATE], day)).as_py()
    assert after.num_rows == quarantine.num_rows - len(dirty)  # other days keep theirs


def test_a_bronze_refresh_cascades_into_silver(lakehouse) -> None:
    source, runner, _ = lakehouse
    facts = runner.source.catalog["FactStream"]
    store = store_of(lakehouse, "FactStream")
    store.refresh(ALL_DAYS, "build")
    with source.session() as session:
        session.apply(simulate(session.read_state(), days=1, seed=SEED + 1,
                               rates=SimulationRates(late_fraction=0.3)))  # fmt: skip
    runner.copy(facts, None, "incremental", from_watermark=True)
    late_days = (HISTORY_END - timedelta(days=5), HISTORY_END + timedelta(days=3))
    runner.copy(facts, Window.of_days(*late_days), "refresh")
    before = store.read().count()
    result = store.refresh(late_days, "refresh")
    bronze_rows = runner.store(facts).read_all().num_rows
    assert store.read().count() > before
    assert store.read().count() + store.read_quarantine().count() == bronze_rows
    assert result.days == late_days


def test_cli_run_builds_bronze_and_silver_with_asset_checks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings.from_env({"SPOTIFY_HOME": str(tmp_path)})
    end = date.today() - timedelta(days=2)
    source_init(settings, 0.002, SEED, end, history_days=21)
    source_simulate(settings, 1, SEED, replace(ON_TIME, dirty_fraction=0.3))
    instance = DagsterInstance.ephemeral()
    loads = {load.table: load for load in ingest.incremental(settings, instance)}
    facts = loads["FactStream"]
    assert facts.silver_rows + facts.quarantined == facts.rows
    assert facts.quarantined > 0
    evaluations = {
        (e.asset_key.path[-1], e.check_name): e.passed
        for run in instance.get_runs()
        for entry in instance.all_logs(run.run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION)
        for e in [entry.dagster_event.event_specific_data]
        if e.asset_key.path[0] == "silver"
    }
    rules = {(t.lake_name, r.name) for t in CATALOG for r in t.silver.rules}
    assert set(evaluations) == rules, "every rule of every table reports an asset check"
    assert evaluations[("fact_stream", "stream_id_not_null")] is True
    assert False in {
        evaluations[("fact_stream", r)] for r in ("user_id_not_null", "listen_duration_in_range")
    }


def test_a_file_live_in_hundreds_of_windows_is_read(sail_spark) -> None:
    """A bronze file superseded in many places keeps its rows in as many windows; the filter
    must still encode (a chain of ORs nested past Spark Connect's protobuf limit did not)."""
    start = datetime(2026, 3, 1)
    windows = [
        Window(start + timedelta(minutes=10 * i), start + timedelta(minutes=10 * i + 5))
        for i in range(300)
    ]
    times = sail_spark.createDataFrame(
        [(start + timedelta(minutes=m),) for m in range(3000)], "at timestamp_ntz"
    )
    assert times.where(in_windows(F.col("at"), windows)).count() == 1500


def test_a_refresh_reads_each_bronze_file_once(lakehouse, monkeypatch) -> None:
    """Every Spark request over a list of small files pays for each file (Sail plans them one by
    one), and a refresh makes several (analyses, repeat checks, the write, the quarantine): a
    small chunk's bronze files are analysed once and read once, then requests read what is held."""
    requests = record_requests(monkeypatch)
    for table in CATALOG:
        store = store_of(lakehouse, table.name)
        files = [f.path for f in store.bronze_files(days_of(table))]
        requests.clear()
        store.refresh(days_of(table), "build")
        reading = naming(requests, files)
        assert len(reading) == 2, f"{table.name}: {len(reading)} of {len(requests)} read bronze"


def test_held_and_reread_bronze_build_the_same_silver(lakehouse, monkeypatch) -> None:
    """Past `FEW_ROWS` a refresh reads bronze's files in each query instead: the same silver."""
    built = {}
    for how, bound in (("held", silver_store.FEW_ROWS), ("read again", 0)):
        monkeypatch.setattr(silver_store, "FEW_ROWS", bound)
        for table in CATALOG:
            store = store_of(lakehouse, table.name)
            result = store.refresh(days_of(table), "build")
            quarantine = sorted(tuple(r) for r in store.read_quarantine().drop(RUN_ID).collect())
            built[how, table.name] = (snapshot(store), quarantine, result.failures)
    for table in CATALOG:
        assert built["held", table.name] == built["read again", table.name], table.name
