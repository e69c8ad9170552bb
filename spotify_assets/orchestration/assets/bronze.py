"""Bronze assets: one per catalog table, the raw copy of the source with audit columns.

Partitioned tables have daily UTC partitions over their change time and a single-run backfill
policy: an initial load is one run over every partition, read as one window. Re-materializing a
past partition re-extracts it from the source and supersedes it (a backdated refresh).
"""

from datetime import date

from dagster import (
    AssetExecutionContext,
    AssetKey,
    AssetsDefinition,
    BackfillPolicy,
    Config,
    MaterializeResult,
    MetadataValue,
    ResourceParam,
    asset,
)
from pydantic import Field

from resources.copy_runner import (
    NOT_LOADED_YET_OLDEST,
    NOT_LOADED_YET_ROWS,
    CopyResult,
    CopyRunner,
    Waiting,
    moment_text,
)
from resources.dagster_resources import LakeWriter
from spotify_assets.bronze.schema import bronze_columns
from spotify_assets.catalog.lake_paths import BRONZE, bronze_path
from spotify_assets.catalog.tables import Catalog, Table
from spotify_assets.consistency.reconcile import day_ranges
from spotify_assets.orchestration.assets.columns import COLUMN_SCHEMA, column_schema
from spotify_assets.orchestration.assets.order import step_tags
from spotify_assets.orchestration.assets.source import source_key
from spotify_assets.orchestration.partitions import (
    ROW_COUNT,
    daily_partitions,
    partition_window,
    result_metadata,
)


class BronzeConfig(Config):
    from_watermark: bool = Field(
        default=False,
        description="Incremental: copy from the stored watermark instead of the start of the "
        "selected partitions. Off, the selected partitions are re-extracted whole.",
    )
    reextract_from: str | None = Field(
        default=None,
        description="Incremental only: also re-extract whole the loaded days from this one "
        "(YYYY-MM-DD) up to the watermark, where reconciliation found late rows.",
    )


def bronze_key(table: Table) -> AssetKey:
    return AssetKey([BRONZE, table.name])


def build_bronze_asset(catalog: Catalog, table: Table) -> AssetsDefinition:
    partitioned = table.change_time_column is not None

    @asset(
        key=bronze_key(table),
        deps=[source_key(table)],
        group_name=BRONZE,
        op_tags=step_tags(catalog, table),
        kinds={"parquet"},
        description=f"Raw copy of `{table.name}` ({table.mode.value}), with audit columns.",
        partitions_def=daily_partitions(table.first_partition) if partitioned else None,
        backfill_policy=BackfillPolicy.single_run() if partitioned else None,
        metadata={
            COLUMN_SCHEMA: column_schema(bronze_columns(table)),
            "capture_mode": table.mode.value,
            "change_time": table.change_time_column or "",
        },
    )
    def bronze(
        context: AssetExecutionContext,
        config: BronzeConfig,
        copy_runner: ResourceParam[CopyRunner],
        lake_writer: LakeWriter,
    ) -> MaterializeResult:
        lake_writer.check()
        requested = partition_window(context) if partitioned else None
        late = date.fromisoformat(config.reextract_from) if config.reextract_from else None
        result = copy_runner.copy(
            table, requested, context.run.run_id, config.from_watermark, context.log.info, late
        )
        details = copy_metadata(result, copy_runner)
        if config.from_watermark and result.window is not None:
            waiting = copy_runner.not_loaded_yet(table, result.window.end)
            details |= waiting_metadata(waiting)
            if waiting.rows:
                context.log.warning(f"{table.name}: {waiting.describe()}")
        live = copy_runner.store(table).partition_stats() if partitioned else {}
        rows = {day: stats.rows for day, stats in live.items() if day is not None}
        return MaterializeResult(
            metadata=result_metadata(
                context, details, {ROW_COUNT: result.rows_written}, {ROW_COUNT: rows}
            )
        )

    return bronze


def build_bronze_assets(catalog: Catalog) -> list[AssetsDefinition]:
    return [build_bronze_asset(catalog, t) for t in catalog]


def copy_metadata(result: CopyResult, runner: CopyRunner) -> dict[str, MetadataValue]:
    """What the copy did (its rows written are counted by `result_metadata`)."""
    rate = result.rows_read / result.seconds if result.seconds else 0.0
    # As ranges: a first load of years is one line, not a list of its days.
    written = ", ".join(
        f"{first}..{last}" if first != last else str(first)
        for first, last in day_ranges(result.partitions)
    )
    return {
        RUN_ROWS_READ: MetadataValue.int(result.rows_read),
        "run_files": MetadataValue.int(len(result.files)),
        "run_partitions_written": MetadataValue.text(written or "none"),
        "window": MetadataValue.text(str(result.window) if result.window else "whole table"),
        "high": MetadataValue.text(result.high.isoformat(sep=" ")),
        "watermark_before": MetadataValue.text(moment_text(result.watermark_before)),
        "watermark_after": MetadataValue.text(moment_text(result.watermark_after)),
        "manifest_version": MetadataValue.int(result.manifest_version),
        "seconds": MetadataValue.float(round(result.seconds, 3)),
        "rows_per_second": MetadataValue.int(round(rate)),
        "source_query": MetadataValue.md(f"```sql\n{result.query}\n```"),
        "path": MetadataValue.path(runner.lake.uri(bronze_path(result.table))),
    }


RUN_ROWS_READ = "run_rows_read"


def waiting_metadata(waiting: Waiting) -> dict[str, MetadataValue]:
    """Metadata of an incremental load: source rows past what it could load (the source's
    clock or the last partition, today UTC)."""
    return {
        NOT_LOADED_YET_ROWS: MetadataValue.int(waiting.rows),
        NOT_LOADED_YET_OLDEST: MetadataValue.text(waiting.oldest_text),
    }
