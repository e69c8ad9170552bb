"""Pipeline runs from the command line: in-process Dagster runs recorded in `$DAGSTER_HOME`.

`incremental` copies every table from its watermark up to the source's clock and rebuilds the
silver and gold partitions it touched (one single-run backfill over the open partitions), and
applies the new dimension versions to gold; `refresh` re-extracts a date range and rebuilds
everything downstream of it (a backdated refresh).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime

from dagster import AssetsDefinition, DagsterInstance, materialize

from resources import build_resources
from resources.copy_runner import LocalCopyRunner
from spotify_assets.assets.bronze import build_bronze_asset
from spotify_assets.assets.gold import build_gold_assets_of
from spotify_assets.assets.silver import build_silver_asset
from spotify_assets.catalog import Catalog, Table
from spotify_assets.partitions import partition_range_tags
from spotify_assets.settings import Settings


@dataclass(frozen=True)
class TableLoad:
    """What one run did to one table: rows copied into bronze, rows now in silver and gold
    (in the run's partitions; all of it for unpartitioned tables)."""

    table: str
    rows: int
    window: str
    watermark: str
    silver_rows: int
    quarantined: int
    gold_rows: dict[str, int]


def incremental(
    settings: Settings, instance: DagsterInstance, tables: Sequence[str] = ()
) -> list[TableLoad]:
    """Copy what the source has gained since each table's watermark."""
    resources = build_resources(settings)
    runner: LocalCopyRunner = resources["copy_runner"]  # type: ignore[assignment]
    selected = _select(runner.source.catalog, tables)
    partitioned = [t for t in selected if t.change_time_column]
    days = [d for d in (_resume_day(runner, t) for t in partitioned) if d is not None]
    catalog = runner.source.catalog
    return _run(catalog, selected, resources, instance, min(days, default=None), _today(), True)


def refresh(
    settings: Settings,
    instance: DagsterInstance,
    first: date,
    last: date,
    tables: Sequence[str] = (),
) -> list[TableLoad]:
    """Re-extract the days `first`..`last` of the selected tables (a backdated refresh)."""
    if last < first:
        raise ValueError(f"--to {last} is before --from {first}")
    if last > _today():
        raise ValueError(f"--to {last} is in the future (today is {_today()}, UTC)")
    resources = build_resources(settings)
    runner: LocalCopyRunner = resources["copy_runner"]  # type: ignore[assignment]
    selected = [t for t in _select(runner.source.catalog, tables) if t.change_time_column]
    start = max(first, min(t.partition_start for t in selected)) if selected else first
    catalog = runner.source.catalog
    return _run(catalog, selected, resources, instance, start, last, from_watermark=False)


def _run(
    catalog: Catalog,
    tables: list[Table],
    resources: dict[str, object],
    instance: DagsterInstance,
    first: date | None,
    last: date,
    from_watermark: bool,
) -> list[TableLoad]:
    loads: list[TableLoad] = []
    partitioned = [t for t in tables if t.change_time_column]
    snapshots = [t for t in tables if not t.change_time_column]
    if partitioned and first is not None:
        tags = partition_range_tags(first, last)
        loads += _materialize(catalog, partitioned, resources, instance, tags, from_watermark)
    if snapshots:
        loads += _materialize(catalog, snapshots, resources, instance, {}, from_watermark)
    return loads


def _materialize(
    catalog: Catalog,
    tables: list[Table],
    resources: dict[str, object],
    instance: DagsterInstance,
    tags: dict[str, str],
    from_watermark: bool,
) -> list[TableLoad]:
    """One run: bronze, silver and gold of `tables` (same partitions, one range)."""
    bronze = {t.name: build_bronze_asset(t) for t in tables}
    silver = {t.name: build_silver_asset(t) for t in tables}
    gold = {t.name: build_gold_assets_of(catalog, t) for t in tables}
    config = {
        "ops": {a.op.name: {"config": {"from_watermark": from_watermark}} for a in bronze.values()},
        # Progress and results at INFO; Dagster's per-event DEBUG lines stay in the run's log.
        "loggers": {"console": {"config": {"log_level": "INFO"}}},
    }
    assets = [*bronze.values(), *silver.values(), *(a for g in gold.values() for a in g)]
    result = materialize(assets, resources=resources, instance=instance, tags=tags,
                         run_config=config)  # fmt: skip

    def metadata(asset: AssetsDefinition) -> dict:
        # A range run records one materialization per partition, all with the same metadata.
        return result.asset_materializations_for_node(asset.op.name)[0].metadata

    loads = []
    for table in tables:
        copied, cleaned = metadata(bronze[table.name]), metadata(silver[table.name])
        loads.append(
            TableLoad(
                table=table.name,
                rows=copied["rows_read"].value,
                window=copied["window"].value,
                watermark=copied["watermark_after"].value,
                silver_rows=cleaned["dagster/row_count"].value,
                quarantined=cleaned["quarantined"].value,
                gold_rows={
                    a.key.path[-1]: metadata(a)["dagster/row_count"].value for a in gold[table.name]
                },
            )
        )
    return loads


def _select(catalog: Catalog, tables: Sequence[str]) -> list[Table]:
    return [catalog[name] for name in tables] if tables else list(catalog)


def _resume_day(runner: LocalCopyRunner, table: Table) -> date | None:
    """The first partition an incremental run touches; on a first load, the oldest data's day
    (the empty partitions before it need no run of their own)."""
    watermark = runner.store(table).current().watermark
    if watermark:
        return max(watermark.date(), table.partition_start)
    return runner.first_change_day(table)


def _today() -> date:
    return datetime.now(UTC).date()
