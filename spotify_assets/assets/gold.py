"""Gold assets: the star schema of DESIGN.md §6 as Delta, built by the local gold runner.

SCD2 dimensions and the calendar are unpartitioned (a dimension applies whatever silver versions
are new); the fact and the daily aggregates share the fact path's daily partitions. Every
expectation is an asset check; so are the SCD2 invariants (blocking: a broken dimension must not
feed the fact).
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
    TableColumn,
    TableSchema,
    asset,
)
from pyspark.sql import DataFrame

from resources.gold_runner import GoldRunner, PartitionBuild
from resources.lake import LakeStorage
from resources.spark import SparkResource
from spotify_assets.assets.silver import silver_key
from spotify_assets.catalog import Catalog, Table
from spotify_assets.gold import SCD2_INVARIANTS
from spotify_assets.gold_spec import Aggregate, Calendar, PointInTimeFact, Scd2Dimension
from spotify_assets.partitions import daily_partitions, partition_days
from spotify_assets.rules import Rule

GOLD_GROUP = "gold"
PREVIEW_ROWS = 5


def gold_key(name: str) -> AssetKey:
    return AssetKey(["gold", name])


def _expectation_checks(key: AssetKey, rules: tuple[Rule, ...]) -> list[AssetCheckSpec]:
    return [
        AssetCheckSpec(r.name, asset=key, description=f"Rows failing `{r.predicate}` (dropped).")
        for r in rules
    ]


def _expectation_results(rules: tuple[Rule, ...], failures: dict[str, int]) -> list:
    return [
        AssetCheckResult(
            check_name=r.name,
            passed=failures.get(r.name, 0) == 0,
            severity=AssetCheckSeverity.WARN,
            metadata={"dropped_rows": failures.get(r.name, 0)},
        )
        for r in rules
    ]


def build_dimension_asset(catalog: Catalog, table: Table) -> AssetsDefinition:
    spec = table.gold
    assert isinstance(spec, Scd2Dimension)
    key = gold_key(table.lake_name)
    invariants = [
        AssetCheckSpec(name, asset=key, description=text, blocking=True)
        for name, text in SCD2_INVARIANTS.items()
    ]

    @asset(
        key=key,
        deps=[silver_key(table)],
        group_name=GOLD_GROUP,
        kinds={"spark", "delta"},
        description=f"{table.description} SCD type 2 over `{spec.sequence_by}`: one row per "
        f"version, tracked columns {', '.join(spec.tracked)}.",
        check_specs=[*_expectation_checks(key, spec.expectations), *invariants],
    )
    def dimension(
        context: AssetExecutionContext, spark: SparkResource, lake: LakeStorage
    ) -> MaterializeResult:
        runner = GoldRunner(lake, spark.session(), catalog)
        result = runner.apply_dimension(table)
        how = "rebuilt from all" if result.full else "applied"
        context.log.info(
            f"{table.lake_name}: {how} {result.versions_read:,} silver versions of "
            f"{result.changed_keys:,} keys (silver v{result.silver_version}); "
            f"{result.rows:,} rows, {result.current:,} current"
        )
        return MaterializeResult(
            metadata={
                "dagster/row_count": MetadataValue.int(result.rows),
                "current_rows": MetadataValue.int(result.current),
                "changed_keys": MetadataValue.int(result.changed_keys),
                "versions_applied": MetadataValue.int(result.versions_read),
                "full_rebuild": MetadataValue.bool(result.full),
                "silver_version": MetadataValue.int(result.silver_version),
                **table_metadata(runner.read(table.lake_name), lake, table.lake_name),
            },
            check_results=[
                *_expectation_results(spec.expectations, result.failures),
                *[
                    AssetCheckResult(
                        check_name=name,
                        passed=count == 0,
                        severity=AssetCheckSeverity.ERROR,
                        metadata={"violations": count},
                    )
                    for name, count in result.problems.items()
                ],
            ],
        )

    return dimension


def build_calendar_asset(catalog: Catalog, table: Table) -> AssetsDefinition:
    spec = table.gold
    assert isinstance(spec, Calendar)
    key = gold_key(table.lake_name)

    @asset(
        key=key,
        deps=[silver_key(table)],
        group_name=GOLD_GROUP,
        kinds={"spark", "delta"},
        description=f"{table.description} Silver's current rows.",
        check_specs=_expectation_checks(key, spec.expectations),
    )
    def calendar(
        context: AssetExecutionContext, spark: SparkResource, lake: LakeStorage
    ) -> MaterializeResult:
        runner = GoldRunner(lake, spark.session(), catalog)
        return _result(context, runner, runner.build_calendar(table), spec.expectations, lake)

    return calendar


def build_fact_asset(catalog: Catalog) -> AssetsDefinition:
    fact = catalog.fact
    spec = fact.gold
    assert isinstance(spec, PointInTimeFact)
    key = gold_key(fact.lake_name)
    lookups = [gold_key(catalog[lookup.dimension].lake_name) for lookup in spec.lookups]
    carried = ", ".join(c for lookup in spec.lookups for c in lookup.columns)

    @asset(
        key=key,
        deps=[silver_key(fact), *lookups],
        group_name=GOLD_GROUP,
        kinds={"spark", "delta"},
        description=f"{fact.description} With {carried} as they were at `{spec.time_column}`; "
        f"partitioned by `{spec.date_column}`.",
        partitions_def=daily_partitions(fact.partition_start),
        backfill_policy=BackfillPolicy.single_run(),
        check_specs=_expectation_checks(key, spec.expectations),
    )
    def fact_table(
        context: AssetExecutionContext, spark: SparkResource, lake: LakeStorage
    ) -> MaterializeResult:
        runner = GoldRunner(lake, spark.session(), catalog)
        result = runner.build_fact(partition_days(context))
        return _result(context, runner, result, spec.expectations, lake)

    return fact_table


def build_aggregate_asset(catalog: Catalog, spec: Aggregate) -> AssetsDefinition:
    fact = catalog.fact
    key = gold_key(spec.name)

    @asset(
        key=key,
        deps=[gold_key(fact.lake_name)],
        group_name=GOLD_GROUP,
        kinds={"spark", "delta"},
        description=f"{spec.description} Partitioned like the fact.",
        partitions_def=daily_partitions(fact.partition_start),
        backfill_policy=BackfillPolicy.single_run(),
        check_specs=_expectation_checks(key, spec.expectations),
    )
    def daily_aggregate(
        context: AssetExecutionContext, spark: SparkResource, lake: LakeStorage
    ) -> MaterializeResult:
        runner = GoldRunner(lake, spark.session(), catalog)
        result = runner.build_aggregate(spec, partition_days(context))
        return _result(context, runner, result, spec.expectations, lake)

    return daily_aggregate


def _result(
    context: AssetExecutionContext,
    runner: GoldRunner,
    result: PartitionBuild,
    rules: tuple[Rule, ...],
    lake: LakeStorage,
) -> MaterializeResult:
    days = f"{result.days[0]} .. {result.days[1]}" if result.days else "whole table"
    context.log.info(f"{result.table}: {result.rows:,} rows in {days}")
    return MaterializeResult(
        metadata={
            "dagster/row_count": MetadataValue.int(result.rows),
            "partitions": MetadataValue.text(days),
            "dropped_by_expectation": MetadataValue.json(result.failures),
            **table_metadata(runner.read(result.table), lake, result.table),
        },
        check_results=_expectation_results(rules, result.failures),
    )


def table_metadata(table: DataFrame, lake: LakeStorage, name: str) -> dict[str, MetadataValue]:
    """Schema, a few rows and the path of a gold table, for the asset's page in the UI."""
    schema = TableSchema(
        columns=[TableColumn(f.name, f.dataType.simpleString()) for f in table.schema.fields]
    )
    rows = table.limit(PREVIEW_ROWS).collect()
    header = [f.name for f in table.schema.fields]
    preview = "\n".join(
        [
            "| " + " | ".join(header) + " |",
            "|" + " --- |" * len(header),
            *["| " + " | ".join("" if v is None else str(v) for v in row) + " |" for row in rows],
        ]
    )
    return {
        "dagster/column_schema": MetadataValue.table_schema(schema),
        "preview": MetadataValue.md(preview),
        "path": MetadataValue.path(lake.uri(f"gold/{name}")),
    }


def build_gold_assets(catalog: Catalog) -> list[AssetsDefinition]:
    return [a for table in catalog for a in build_gold_assets_of(catalog, table)]


def build_gold_assets_of(catalog: Catalog, table: Table) -> list[AssetsDefinition]:
    """The gold assets built from one source table (the fact brings the aggregates)."""
    if isinstance(table.gold, Scd2Dimension):
        return [build_dimension_asset(catalog, table)]
    if isinstance(table.gold, Calendar):
        return [build_calendar_asset(catalog, table)]
    if isinstance(table.gold, PointInTimeFact):
        aggregates = [build_aggregate_asset(catalog, a) for a in catalog.aggregates]
        return [build_fact_asset(catalog), *aggregates]
    return []
