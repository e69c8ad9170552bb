"""Gold end to end: what the pipeline builds equals plain SQL on the source (README: Gold).

The reference (tests/helpers/gold_reference.py) is written by hand in SQL that SQLite and
PostgreSQL both run, straight from the source through ODBC. The pipeline runs as a user runs
it: in-process Dagster runs from `ingest`, after the initial load (conftest.py's loaded
lakehouse), after incremental rounds of dirty changes, and after a backdated refresh that brings
late streams in.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest
from dagster import DagsterEventType, DagsterInstance
from deltalake import DeltaTable, write_deltalake
from pyspark.sql import SparkSession

from resources.gold_runner import GoldRunner
from resources.lake import LakeStorage
from spotify_assets.catalog.columns import gold_columns, silver_columns
from spotify_assets.catalog.lake_paths import gold_path, periods_path, silver_path
from spotify_assets.catalog.tables import CATALOG, CHANGE_OP, CHANGE_SEQ, VERSION_AT
from spotify_assets.cli.commands import source_simulate
from spotify_assets.orchestration import ingest
from spotify_assets.orchestration.assets.gold import gold_key
from spotify_assets.orchestration.settings import Settings
from tests.helpers.gold_reference import assert_gold_equals_source
from tests.helpers.source import DIRTY, LATE, SEED


@pytest.fixture
def pipeline(loaded_lakehouse: Settings) -> Iterator[tuple[Settings, DagsterInstance]]:
    """A copy of the small source loaded through gold, and its Dagster instance (which holds
    the initial load's runs)."""
    with DagsterInstance.get() as instance:
        yield loaded_lakehouse, instance


def check_results(instance: DagsterInstance) -> dict[tuple[str, str], bool]:
    """The latest evaluation of every gold asset check."""
    results = {}
    for run in reversed(instance.get_runs()):
        for entry in instance.all_logs(run.run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION):
            e = entry.dagster_event.event_specific_data
            if e.asset_key.path[0] == "gold":
                results[e.asset_key.path[-1], e.check_name] = e.passed
    return results


def test_gold_equals_plain_sql_on_the_source(pipeline) -> None:
    settings, instance = pipeline
    assert_gold_equals_source(settings)

    for round_ in range(3):
        source_simulate(settings, 1, SEED + round_, DIRTY)
        ingest.incremental(settings, instance)
        assert_gold_equals_source(settings)

    checks = check_results(instance)
    gold_tables = [t.lake_name for t in CATALOG if t.gold] + [a.name for a in CATALOG.aggregates]
    assert {name for name, _ in checks} == set(gold_tables)
    scd2 = {(n, c): ok for (n, c), ok in checks.items() if c.startswith(("one_", "no_"))}
    assert len(scd2) == 9 and all(scd2.values()), scd2


def test_late_streams_reach_gold_through_a_backdated_refresh(pipeline) -> None:
    settings, instance = pipeline
    source_simulate(settings, 2, SEED, LATE)
    ingest.incremental(settings, instance)
    with pytest.raises(AssertionError, match="fact_stream"):
        assert_gold_equals_source(settings)  # late streams fell in windows already loaded

    today = datetime.now(UTC).date()
    ingest.refresh(settings, instance, today - timedelta(days=8), today, ["FactStream"])
    assert_gold_equals_source(settings)
    # The UI's run list names each CLI run by its job and tags: what it was and which days.
    refresh_run, *_, first_run = instance.get_runs()
    assert first_run.job_name == "incremental_load"
    assert first_run.tags["spotify/run"] == "incremental"
    assert refresh_run.job_name == "backdated_refresh"
    assert refresh_run.tags["spotify/run"] == "refresh"
    assert refresh_run.tags["spotify/days"] == f"{today - timedelta(days=8)}..{today}"
    assert refresh_run.tags["spotify/tables"] == "FactStream"


def test_a_fact_built_in_chunks_equals_plain_sql_and_leaves_no_periods_behind(
    pipeline, sail_spark: SparkSession
) -> None:
    """Every chunk of a build joins the dimensions' periods written once under gold/_periods;
    a build killed before removing them left some behind, which the next build replaces."""
    settings, instance = pipeline
    source_simulate(settings, 1, SEED, DIRTY)  # new versions: keys with several periods
    ingest.incremental(settings, instance)
    lake = LakeStorage(url=settings.lake_url)
    users = DeltaTable(f"{settings.lake_url}/{gold_path('dim_user')}").to_pyarrow_table()
    stale = pa.table(
        {
            "_lookup_key": users["user_id"],
            "subscription_type": pa.array(["stale"] * users.num_rows),
            "country": pa.array(["stale"] * users.num_rows),
        }
    )
    write_deltalake(lake.path(periods_path(CATALOG["DimUser"])), stale)  # other columns
    fact = DeltaTable(f"{settings.lake_url}/{gold_path(CATALOG.fact.lake_name)}")
    rows, version = fact.to_pyarrow_table(columns=["stream_id"]).num_rows, fact.version()

    catalog = settings.catalog  # with the partition start the load set
    runner = GoldRunner(lake, sail_spark, catalog, chunk_rows=rows // 4)
    runner.build_fact((catalog.fact.first_partition, datetime.now(UTC).date()))

    fact.update_incremental()
    assert fact.version() - version >= 4  # a commit per chunk
    assert not lake.fs.exists(lake.path(periods_path(CATALOG["DimUser"])))
    assert_gold_equals_source(settings)


def test_a_fact_built_against_a_large_dimension_is_one_file_a_day(
    pipeline, sail_spark: SparkSession
) -> None:
    """Past ~45k periods (1 MB) Sail joins the facts with a dimension by hashing both sides
    into two streams, each holding some rows of every day: each stream wrote a file a day."""
    settings, _ = pipeline
    lake = LakeStorage(url=settings.lake_url)
    tracks = DeltaTable(lake.path(gold_path("dim_track"))).to_pyarrow_table()
    unused = pa.table(
        {
            name: pa.array(
                range(10_000_000, 10_060_000) if name == "track_id" else [tracks[name][0]] * 60_000,
                tracks.schema.field(name).type,
            )
            for name in tracks.column_names
        }
    )
    write_deltalake(lake.path(gold_path("dim_track")), unused, mode="append")
    fact = CATALOG.fact
    path = lake.path(gold_path(fact.lake_name))
    before = DeltaTable(path).to_pyarrow_table().sort_by("stream_id")

    catalog = settings.catalog
    GoldRunner(lake, sail_spark, catalog).build_fact(
        (catalog.fact.first_partition, datetime.now(UTC).date())
    )

    actions = pa.table(DeltaTable(path).get_add_actions(flatten=True))
    days = actions[f"partition.{fact.gold.date_column}"].to_pylist()  # type: ignore[union-attr]
    assert len(days) == len(set(days)) > 1
    assert DeltaTable(path).to_pyarrow_table().sort_by("stream_id").equals(before)


def test_a_run_with_nothing_new_changes_no_gold_table(pipeline) -> None:
    settings, instance = pipeline
    versions = {
        name: DeltaTable(f"{settings.lake_url}/gold/{name}").version()
        for name in ("dim_user", "dim_artist", "dim_track")
    }
    ingest.incremental(settings, instance)
    for name, version in versions.items():
        assert DeltaTable(f"{settings.lake_url}/gold/{name}").version() == version, name


def test_silver_and_gold_hold_the_columns_the_catalog_describes(loaded_home: Path) -> None:
    """What the UI shows of each table (its described columns, in order) is what was written;
    the calendar's gold carries none of silver's version bookkeeping; silver's and gold's keys
    are NOT NULL, as the catalog declares."""
    settings = Settings.from_env({"SPOTIFY_HOME": str(loaded_home)})
    lake = settings.lake_url

    def written(relative: str) -> list[str]:
        return [f.name for f in DeltaTable(f"{lake}/{relative}").schema().fields]

    def not_null(relative: str) -> set[str]:
        return {f.name for f in DeltaTable(f"{lake}/{relative}").schema().fields if not f.nullable}

    for table in CATALOG:
        assert written(silver_path(table)) == [c.name for c in silver_columns(table)], table.name
        # A valid row has its key, whatever bronze copied (its columns are all nullable).
        for relative in (silver_path(table), gold_path(table.lake_name)):
            assert set(table.key) <= not_null(relative), relative
        for name in CATALOG.gold_tables(table):
            assert written(gold_path(name)) == [c.name for c in gold_columns(CATALOG, name)], name
    calendar = written(gold_path(CATALOG["DimDate"].lake_name))
    assert not {CHANGE_OP, CHANGE_SEQ, VERSION_AT} & set(calendar), calendar

    # The schema each gold materialization records (the UI shows the latest) is described too.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DAGSTER_HOME", str(settings.dagster_home))
        with DagsterInstance.get() as instance:
            for table in CATALOG:
                for name in CATALOG.gold_tables(table):
                    event = instance.get_latest_materialization_event(gold_key(name))
                    assert event is not None and event.asset_materialization is not None
                    recorded = event.asset_materialization.metadata["dagster/column_schema"]
                    assert [(c.name, c.description) for c in recorded.value.columns] == [
                        (c.name, c.description) for c in gold_columns(CATALOG, name)
                    ], name


def test_each_daily_partition_of_the_fact_and_aggregates_is_one_file(loaded_home: Path) -> None:
    """A partition written in several files costs its writer and every later reader of the log
    (reconciliation, the chunks' row counts) per file: the aggregation's partitions each wrote
    one for every day."""
    lake = Settings.from_env({"SPOTIFY_HOME": str(loaded_home)}).lake_url
    fact = CATALOG.fact
    date_column = fact.gold.date_column  # type: ignore[union-attr]
    for name in [fact.lake_name, *(a.name for a in CATALOG.aggregates)]:
        actions = pa.table(DeltaTable(f"{lake}/{gold_path(name)}").get_add_actions(flatten=True))
        days = actions[f"partition.{date_column}"].to_pylist()
        assert len(days) == len(set(days)) > 1, name
