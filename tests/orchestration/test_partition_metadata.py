"""What each partition of a range run records in Dagster: its own rows, as the lake holds them
for that day, the run's totals under names that say so, and the run's details only on its last
partition (a first load of years stored them once per day); and what it plans: each asset once,
a partitioned one naming the run's days."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping
from datetime import date, timedelta
from unittest.mock import patch

from dagster import (
    AssetKey,
    BackfillPolicy,
    DagsterEventType,
    DagsterInstance,
    EventLogRecord,
    MaterializeResult,
    PartitionKeyRange,
    asset,
    materialize,
)

from resources.delta_tables import partition_stats
from resources.lake import LakeStorage
from spotify_assets.catalog.gold_spec import PointInTimeFact
from spotify_assets.catalog.lake_paths import gold_path, quarantine_path, silver_path
from spotify_assets.catalog.tables import CHANGE_DATE
from spotify_assets.orchestration.assets.bronze import bronze_key
from spotify_assets.orchestration.assets.gold import gold_key
from spotify_assets.orchestration.assets.silver import silver_key
from spotify_assets.orchestration.definitions import build_definitions
from spotify_assets.orchestration.partitions import (
    PARTITION_RANGE_END_TAG,
    PARTITION_RANGE_START_TAG,
    daily_partitions,
    partition_range_tags,
    result_metadata,
)
from spotify_assets.orchestration.resources import copy_runner
from spotify_assets.orchestration.settings import Settings

ROWS = "dagster/row_count"


def lake_rows(lake: LakeStorage, relative: str, column: str) -> dict[date, int]:
    return {day: stats.rows for day, stats in partition_stats(lake, relative, column).items()}


def assert_own_counts(
    instance: DagsterInstance, key: AssetKey, expected: Mapping[str, Mapping[date, int]]
) -> None:
    """Each partition's latest materialization counts that day's rows of the lake (0 where it
    holds none); a run whose partitions are all still the latest names its total `run_rows`,
    the sum of theirs."""
    records = instance.fetch_materializations(key, limit=10_000).records  # newest first
    latest: dict[str, EventLogRecord] = {}
    by_run: dict[str, list[EventLogRecord]] = defaultdict(list)
    for record in records:
        assert record.partition_key is not None, key
        latest.setdefault(record.partition_key, record)
        by_run[record.run_id].append(record)
    assert len(latest) > 2, key
    for partition, record in latest.items():
        metadata = record.asset_materialization.metadata  # ty: ignore[possibly-missing-attribute]
        for name, per_day in expected.items():
            day = date.fromisoformat(partition)
            assert metadata[name].value == per_day.get(day, 0), (key, partition, name)
    assert len(set(expected[ROWS].values())) > 1, "days of equal rows would prove nothing"
    whole = [run for run in by_run.values() if all(latest[r.partition_key] is r for r in run)]  # ty: ignore[invalid-argument-type]
    assert whole, key
    for run in whole:
        run.sort(key=lambda r: r.partition_key)  # ty: ignore[invalid-argument-type]
        metadata = [r.asset_materialization.metadata for r in run]  # ty: ignore[possibly-missing-attribute]
        assert all(m["run_rows"].value == sum(m[ROWS].value for m in metadata) for m in metadata)
        assert all("run_partitions" in m for m in metadata), key
        # The run's details once, on its last partition: Dagster shows it as the latest.
        assert "path" in metadata[-1] and not any("path" in m for m in metadata[:-1]), key
    newest = instance.get_latest_materialization_event(key)
    assert "path" in newest.asset_materialization.metadata, key  # ty: ignore[possibly-missing-attribute]


def test_each_partition_of_the_first_load_carries_its_own_rows(
    loaded_lakehouse: Settings,
) -> None:
    settings = loaded_lakehouse
    lake = LakeStorage(url=settings.lake_url)
    runner = copy_runner(settings)
    catalog = settings.catalog
    with DagsterInstance.get() as instance:
        for table in catalog:
            if table.change_time_column is None:
                continue
            manifest = runner.store(table).partition_stats()
            bronze = {day: s.rows for day, s in manifest.items() if day is not None}
            assert_own_counts(instance, bronze_key(table), {ROWS: bronze})
            silver = {
                ROWS: lake_rows(lake, silver_path(table), CHANGE_DATE),
                "quarantined": lake_rows(lake, quarantine_path(table), CHANGE_DATE),
            }
            assert_own_counts(instance, silver_key(table), silver)
        spec = catalog.fact.gold
        assert isinstance(spec, PointInTimeFact)
        for name in [catalog.fact.lake_name, *(a.name for a in catalog.aggregates)]:
            gold = lake_rows(lake, gold_path(name), spec.date_column)
            assert_own_counts(instance, gold_key(name), {ROWS: gold})


def test_a_first_load_plans_each_asset_once_over_its_own_partitions_and_builds_every_day(
    loaded_lakehouse: Settings,
) -> None:
    """The UI reads a partition's status from the planned events and materializations: the first
    load plans each partitioned asset once, naming every day of the run in the event (not one
    event per day: 13 events a day), materializes every day, and plans each of the others (the
    source's observation, the calendar, gold's dimensions) once, without partitions."""
    graph = build_definitions(loaded_lakehouse).resolve_asset_graph()
    planned_type = DagsterEventType.ASSET_MATERIALIZATION_PLANNED
    with DagsterInstance.get() as instance:
        first_load = instance.get_runs()[-1]  # newest first
        tags = first_load.tags
        span = PartitionKeyRange(tags[PARTITION_RANGE_START_TAG], tags[PARTITION_RANGE_END_TAG])
        planned: Counter[tuple[AssetKey | None, tuple[str, ...] | None]] = Counter()
        for entry in instance.all_logs(first_load.run_id, of_type=planned_type):
            event = entry.dagster_event
            assert event is not None and event.partition is None
            subset = event.asset_materialization_planned_data.partitions_subset
            planned[event.asset_key, tuple(subset.get_partition_keys()) if subset else None] += 1
        expected: Counter[tuple[AssetKey | None, tuple[str, ...] | None]] = Counter()
        for key in graph.get_all_asset_keys():
            partitions = graph.get(key).partitions_def
            if partitions is None:
                expected[key, None] += 1
                continue
            days = partitions.get_partition_keys_in_range(span)
            assert len(days) > 2, "a run of one day would prove nothing"
            expected[key, tuple(days)] += 1
            assert set(instance.get_materialized_partitions(key)) == set(days), key
        assert planned == expected


def _range_run_listing_partitions(days: int) -> tuple[dict[str, int], int]:
    """A range run over `days` daily partitions of one asset whose result goes through
    `result_metadata`: each partition's recorded count, and how many times the run's
    partitions were listed while the asset ran."""
    start = date(2024, 1, 1)
    partitions = daily_partitions(start)
    last = (start + timedelta(days=days - 1)).isoformat()
    listed = 0

    @asset(partitions_def=partitions, backfill_policy=BackfillPolicy.single_run())
    def counted(context) -> MaterializeResult:  # annotated, Dagster cannot resolve it here
        nonlocal listed
        per_day = {date.fromisoformat(k): n for n, k in enumerate(context.partition_keys, 1)}
        listing = partitions.get_partition_keys_in_range
        with patch.object(type(partitions), "get_partition_keys_in_range", autospec=True) as spy:
            spy.side_effect = lambda _, *args, **kwargs: listing(*args, **kwargs)
            metadata = result_metadata(context, {}, {ROWS: sum(per_day.values())}, {ROWS: per_day})
        listed = spy.call_count
        return MaterializeResult(metadata=metadata)

    with DagsterInstance.ephemeral() as instance:
        tags = partition_range_tags(start, date.fromisoformat(last))
        assert materialize([counted], instance=instance, tags=tags).success
        records = instance.fetch_materializations(counted.key, limit=days + 1).records
        counts = {r.partition_key: r.asset_materialization.metadata[ROWS].value for r in records}  # ty: ignore[possibly-missing-attribute]
    return counts, listed  # ty: ignore[invalid-return-type]


def test_a_range_runs_partitions_each_get_their_own_metadata_at_a_cost_that_does_not_grow() -> None:
    """Dagster's `add_asset_metadata`, once per partition, lists the run's partitions at each
    call (and copies every partition's metadata so far): the square of the days."""
    few, listed_few = _range_run_listing_partitions(3)
    many, listed_many = _range_run_listing_partitions(40)
    assert few == {f"2024-01-0{n}": n for n in (1, 2, 3)}
    assert len(many) == 40 and many["2024-02-09"] == 40 and many["2024-01-01"] == 1
    assert listed_many == listed_few
