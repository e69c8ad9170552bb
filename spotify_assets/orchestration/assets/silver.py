"""Silver assets: cleaned, deduplicated, validated versions of each table, as Delta.

Same partitions as bronze; a run over partitions P replaces exactly those silver partitions from
the bronze partitions P, so refreshes cascade and reruns change nothing. Every validation rule of
the catalog is an asset check (blocking where the rule is critical).
"""

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    AssetsDefinition,
    BackfillPolicy,
    MaterializeResult,
    MetadataValue,
    asset,
)

from resources.engines import SilverEngine
from resources.lake import LakeStorage
from resources.lease import LakeWriter
from resources.silver_store import SilverResult
from spotify_assets.catalog.lake_paths import SILVER, quarantine_path, silver_path
from spotify_assets.catalog.tables import Catalog, Table
from spotify_assets.orchestration.assets.bronze import bronze_key
from spotify_assets.orchestration.partitions import daily_partitions, partition_days

# Said on every rule's check: a fresh demo shows some of them red, which is the point of its data.
DIRTY_ON_PURPOSE = "The demo's source holds such rows on purpose: there, a failure is expected."


def silver_key(table: Table) -> AssetKey:
    return AssetKey([SILVER, table.lake_name])


def build_silver_asset(table: Table) -> AssetsDefinition:
    partitioned = table.change_time_column is not None
    key = silver_key(table)
    checks = [
        AssetCheckSpec(
            rule.name,
            asset=key,
            description=f"Rows failing `{rule.predicate}` (quarantined). {DIRTY_ON_PURPOSE}",
            blocking=rule.critical,
        )
        for rule in table.silver.rules
    ]

    @asset(
        key=key,
        deps=[bronze_key(table)],
        group_name=SILVER,
        kinds={"spark", "delta"},
        description=f"Cleaned versions of `{table.name}`; failing rows in "
        f"{quarantine_path(table)}.",
        partitions_def=daily_partitions(table.first_partition) if partitioned else None,
        backfill_policy=BackfillPolicy.single_run() if partitioned else None,
        check_specs=checks,
    )
    def silver(
        context: AssetExecutionContext, silver_engine: SilverEngine, lake_writer: LakeWriter
    ) -> MaterializeResult:
        lake_writer.check()
        days = partition_days(context) if partitioned else None
        result = silver_engine.refresh(context, table, days)
        context.log.info(
            f"{table.lake_name}: {result.bronze_rows:,} bronze rows -> {result.silver_rows:,} "
            f"silver, {result.quarantined:,} quarantined"
        )
        return MaterializeResult(
            metadata=silver_metadata(result, silver_engine.lake, table),
            check_results=[
                AssetCheckResult(
                    check_name=rule.name,
                    passed=result.failures[rule.name] == 0,
                    severity=AssetCheckSeverity.ERROR if rule.critical else AssetCheckSeverity.WARN,
                    metadata={"failed_rows": result.failures[rule.name]},
                )
                for rule in table.silver.rules
            ],
        )

    return silver


def build_silver_assets(catalog: Catalog) -> list[AssetsDefinition]:
    return [build_silver_asset(t) for t in catalog]


def silver_metadata(
    result: SilverResult, lake: LakeStorage, table: Table
) -> dict[str, MetadataValue]:
    days = f"{result.days[0]} .. {result.days[1]}" if result.days else "whole table"
    return {
        "dagster/row_count": MetadataValue.int(result.silver_rows),
        "bronze_rows": MetadataValue.int(result.bronze_rows),
        "quarantined": MetadataValue.int(result.quarantined),
        "partitions": MetadataValue.text(days),
        "failures_by_rule": MetadataValue.json(result.failures),
        "path": MetadataValue.path(lake.uri(silver_path(table))),
    }
