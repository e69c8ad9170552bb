"""Silver assets: cleaned, deduplicated, validated versions of each table, as Delta.

Same partitions as bronze; a run over partitions P replaces exactly those silver partitions from
the bronze partitions P, so refreshes cascade and reruns change nothing. Every validation rule of
the catalog is an asset check (of ERROR severity where the rule is critical). None blocks: a
failing row is quarantined whatever its rule, so the rows that pass go on to gold.
"""

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    AssetsDefinition,
    BackfillPolicy,
    Config,
    MaterializeResult,
    MetadataValue,
    asset,
)
from pydantic import Field

from resources.dagster_resources import LakeWriter
from resources.delta_tables import rows_per_day
from resources.engines import SilverEngine
from resources.lake import LakeStorage
from resources.reconciler import silver_behind
from resources.silver_store import SilverResult
from spotify_assets.bronze.windows import DAY
from spotify_assets.catalog.columns import silver_columns
from spotify_assets.catalog.counts import counted
from spotify_assets.catalog.lake_paths import SILVER, quarantine_path, silver_path
from spotify_assets.catalog.rules import Rule
from spotify_assets.catalog.tables import CHANGE_DATE, Catalog, Table
from spotify_assets.orchestration.assets.bronze import bronze_key
from spotify_assets.orchestration.assets.columns import COLUMN_SCHEMA, column_schema
from spotify_assets.orchestration.assets.order import step_tags
from spotify_assets.orchestration.partitions import (
    ROW_COUNT,
    daily_partitions,
    partition_days,
    result_metadata,
)

QUARANTINED = "quarantined"

# Said on every rule's check: a fresh demo shows some of them red, which is the point of its data.
DIRTY_ON_PURPOSE = "The demo's source holds such rows on purpose: there, a failure is expected."


class SilverConfig(Config):
    behind_only: bool = Field(
        default=False,
        description="Rebuild from the first selected partition whose silver is behind its "
        "bronze partition (the last one at least): the days an incremental run's bronze did "
        "not change stay as they are. Off, every selected partition is rebuilt.",
    )


def silver_key(table: Table) -> AssetKey:
    return AssetKey([SILVER, table.lake_name])


def build_silver_asset(catalog: Catalog, table: Table) -> AssetsDefinition:
    partitioned = table.change_time_column is not None
    key = silver_key(table)
    checks = [
        AssetCheckSpec(
            rule.name,
            asset=key,
            description=f"Rows failing `{rule.predicate}` (quarantined). {DIRTY_ON_PURPOSE}",
        )
        for rule in table.silver.rules
    ]

    @asset(
        key=key,
        deps=[bronze_key(table)],
        group_name=SILVER,
        op_tags=step_tags(catalog, table),
        kinds={"spark", "delta"},
        description=f"Cleaned versions of `{table.name}`; failing rows in "
        f"{quarantine_path(table)}.",
        metadata={COLUMN_SCHEMA: column_schema(silver_columns(table))},
        partitions_def=daily_partitions(table.first_partition) if partitioned else None,
        backfill_policy=BackfillPolicy.single_run() if partitioned else None,
        check_specs=checks,
    )
    def silver(
        context: AssetExecutionContext,
        config: SilverConfig,
        silver_engine: SilverEngine,
        lake_writer: LakeWriter,
    ) -> MaterializeResult:
        lake_writer.check()
        lake = silver_engine.lake
        selected = days = partition_days(context) if partitioned else None
        if selected and config.behind_only:
            behind = silver_behind(lake, table, selected)
            days = (min(behind, default=selected[1]), selected[1])
        result = silver_engine.refresh(context, table, days)
        context.log.info(
            f"{table.lake_name}: {counted(result.bronze_rows, 'bronze row')} -> "
            f"{result.silver_rows:,} "
            f"silver, {result.quarantined:,} quarantined"
            + (f" in {days[0]} .. {days[1]}" if days and days != selected else "")
        )
        per_day = {ROW_COUNT: result.rows_per_day, QUARANTINED: result.quarantined_per_day}
        if selected and days and days[0] > selected[0]:  # the days left as they were
            kept = (selected[0], days[0] - DAY)
            paths = {ROW_COUNT: silver_path(table), QUARANTINED: quarantine_path(table)}
            per_day = {
                name: rows_per_day(lake, paths[name], CHANGE_DATE, kept) | rebuilt
                for name, rebuilt in per_day.items()
            }
        metadata = result_metadata(
            context,
            silver_metadata(result, lake, table),
            {ROW_COUNT: result.silver_rows, QUARANTINED: result.quarantined},
            per_day,
        )
        return MaterializeResult(
            metadata=metadata,
            check_results=[
                AssetCheckResult(
                    check_name=rule.name,
                    passed=result.failures[rule.name] == 0,
                    severity=AssetCheckSeverity.ERROR if rule.critical else AssetCheckSeverity.WARN,
                    metadata={"failed_rows": result.failures[rule.name]},
                    description=_failed(rule, table, result.failures[rule.name]),
                )
                for rule in table.silver.rules
            ],
        )

    return silver


def _failed(rule: Rule, table: Table, rows: int) -> str | None:
    """What a failed critical rule means for the user, on the failed check (and `run`'s
    warning)."""
    if not (rule.critical and rows):
        return None
    return (
        f"{counted(rows, 'row')} failing `{rule.predicate}` quarantined in "
        f"{quarantine_path(table)}; "
        "the other rows went on to gold: correct or delete those rows in the source"
    )


def build_silver_assets(catalog: Catalog) -> list[AssetsDefinition]:
    return [build_silver_asset(catalog, t) for t in catalog]


def silver_metadata(
    result: SilverResult, lake: LakeStorage, table: Table
) -> dict[str, MetadataValue]:
    """What the run did (its rows and quarantined rows are counted by `result_metadata`)."""
    return {
        "run_bronze_rows": MetadataValue.int(result.bronze_rows),
        "run_failures_by_rule": MetadataValue.json(result.failures),
        "path": MetadataValue.path(lake.uri(silver_path(table))),
    }
