"""Gold assets: the star schema of README: Gold as Delta, built by the gold engine (the local
runner on Sail, or the Databricks pipeline: `resources/engines.py`).

SCD2 dimensions and the calendar are unpartitioned (a dimension applies whatever silver versions
are new); the fact and the daily aggregates share the fact path's daily partitions. Every
expectation is an asset check; so are the SCD2 invariants (blocking: a broken dimension must not
feed the fact). The local runner checks them before it writes, so a broken table is never
committed: the asset fails instead, and the dimension keeps its last correct state.
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
    asset,
)
from pydantic import Field

from resources.dagster_resources import LakeWriter
from resources.engines import GoldEngine, GoldOutcome
from spotify_assets.catalog.columns import gold_columns
from spotify_assets.catalog.counts import counted
from spotify_assets.catalog.gold_spec import (
    Aggregate,
    Calendar,
    PointInTimeFact,
    Reference,
    Scd2Dimension,
)
from spotify_assets.catalog.lake_paths import GOLD
from spotify_assets.catalog.rules import Rule
from spotify_assets.catalog.tables import Catalog, Table
from spotify_assets.gold.transform import SCD2_INVARIANTS
from spotify_assets.orchestration.assets.columns import COLUMN_SCHEMA, column_schema
from spotify_assets.orchestration.assets.order import step_tags
from spotify_assets.orchestration.assets.silver import DIRTY_ON_PURPOSE, silver_key
from spotify_assets.orchestration.partitions import (
    ROW_COUNT,
    daily_partitions,
    partition_days,
    result_metadata,
)


class DimensionConfig(Config):
    full_refresh: bool = Field(
        default=False,
        description="Rebuild the dimension from every silver version instead of applying the "
        "versions that are new since the last apply.",
    )


def gold_key(name: str) -> AssetKey:
    return AssetKey([GOLD, name])


def _expectation_checks(key: AssetKey, rules: tuple[Rule, ...]) -> list[AssetCheckSpec]:
    return [
        AssetCheckSpec(
            r.name,
            asset=key,
            description=f"Rows failing `{r.predicate}` (dropped). {DIRTY_ON_PURPOSE}",
        )
        for r in rules
    ]


def _expectation_results(rules: tuple[Rule, ...], outcome: GoldOutcome) -> list:
    failures = outcome.failures
    if failures is None:
        return [_not_evaluated(r.name, outcome) for r in rules]
    return [
        AssetCheckResult(
            check_name=r.name,
            passed=failures.get(r.name, 0) == 0,
            severity=AssetCheckSeverity.WARN,
            description=f"Cannot fail: {r.guaranteed_by}." if r.guaranteed_by else None,
            metadata={"dropped_rows": failures.get(r.name, 0)},
        )
        for r in rules
    ]


def _not_evaluated(name: str, outcome: GoldOutcome) -> AssetCheckResult:
    """A check the engine cannot evaluate: a warning that says so, never a silent pass, and
    never blocking, since nothing was found wrong."""
    return AssetCheckResult(
        check_name=name,
        passed=False,
        severity=AssetCheckSeverity.WARN,
        description=f"Not evaluated: {outcome.not_evaluated}",
        metadata={"evaluated": False},
    )


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
        group_name=GOLD,
        op_tags=step_tags(catalog, table),
        metadata={COLUMN_SCHEMA: column_schema(gold_columns(catalog, table.lake_name))},
        kinds={"spark", "delta"},
        description=f"{table.description} SCD type 2 over `{spec.effective_time}`, then "
        f"`{spec.change_sequence}`: one row per version, tracked columns "
        f"{', '.join(spec.tracked)}.",
        check_specs=[*_expectation_checks(key, spec.expectations), *invariants],
    )
    def dimension(
        context: AssetExecutionContext,
        config: DimensionConfig,
        gold_engine: GoldEngine,
        lake_writer: LakeWriter,
    ) -> MaterializeResult:
        lake_writer.check()
        outcome = gold_engine.apply_dimension(catalog, table, full=config.full_refresh)
        context.log.info(outcome.summary)
        if outcome.problems is None:
            invariant_results = [_not_evaluated(name, outcome) for name in SCD2_INVARIANTS]
        else:
            invariant_results = [
                AssetCheckResult(
                    check_name=name,
                    passed=count == 0,
                    severity=AssetCheckSeverity.ERROR,
                    metadata={"violations": count},
                )
                for name, count in outcome.problems.items()
            ]
        return MaterializeResult(
            metadata=outcome.metadata,
            check_results=[*_expectation_results(spec.expectations, outcome), *invariant_results],
        )

    return dimension


def build_calendar_asset(catalog: Catalog, table: Table) -> AssetsDefinition:
    spec = table.gold
    assert isinstance(spec, Calendar)
    key = gold_key(table.lake_name)

    @asset(
        key=key,
        deps=[silver_key(table)],
        group_name=GOLD,
        op_tags=step_tags(catalog, table),
        metadata={COLUMN_SCHEMA: column_schema(gold_columns(catalog, table.lake_name))},
        kinds={"spark", "delta"},
        description=f"{table.description} Silver's current rows.",
        check_specs=_expectation_checks(key, spec.expectations),
    )
    def calendar(
        context: AssetExecutionContext, gold_engine: GoldEngine, lake_writer: LakeWriter
    ) -> MaterializeResult:
        lake_writer.check()
        return _result(context, gold_engine.build_calendar(catalog, table), spec.expectations)

    return calendar


MEMBERS_ARRIVED = "dimension_members_arrived"


def _members_arrived(outcome: GoldOutcome) -> AssetCheckResult:
    if outcome.unmatched is None:
        return _not_evaluated(MEMBERS_ARRIVED, outcome)
    return AssetCheckResult(
        check_name=MEMBERS_ARRIVED,
        passed=not any(outcome.unmatched.values()),
        severity=AssetCheckSeverity.WARN,
        metadata={f"rows_awaiting_{name}": n for name, n in outcome.unmatched.items()},
    )


def _reference_check(catalog: Catalog, reference: Reference) -> str:
    return f"{reference.on}_in_{catalog[reference.dimension].lake_name}"


def _references_found(
    catalog: Catalog, reference: Reference, outcome: GoldOutcome
) -> AssetCheckResult:
    """A failure that `run` reports (ERROR, not blocking: the rows are in gold, and counted)."""
    name = _reference_check(catalog, reference)
    if outcome.unreferenced is None:
        return _not_evaluated(name, outcome)
    lacked = outcome.unreferenced.get(reference.dimension, {})
    shown = ", ".join(list(lacked)[:5]) + (
        f" and {len(lacked) - 5} more" if len(lacked) > 5 else ""
    )
    return AssetCheckResult(
        check_name=name,
        passed=not lacked,
        severity=AssetCheckSeverity.ERROR,
        description=(
            f"{counted(sum(lacked.values()), 'row')} hold a {reference.on} that "
            f"{reference.dimension} lacks ({shown}); they are in gold: add those rows to "
            f"{reference.dimension} in the source, and the next run rebuilds their days"
        )
        if lacked
        else None,
        metadata={
            f"rows_without_{reference.dimension}": sum(lacked.values()),
            "missing_keys": list(lacked),
        },
    )


def build_fact_asset(catalog: Catalog) -> AssetsDefinition:
    fact = catalog.fact
    spec = fact.gold
    assert isinstance(spec, PointInTimeFact)
    key = gold_key(fact.lake_name)
    lookups = [gold_key(catalog[lookup.dimension].lake_name) for lookup in spec.lookups]
    references = [gold_key(catalog[x.dimension].lake_name) for x in spec.references]
    carried = ", ".join(c for lookup in spec.lookups for c in lookup.columns)
    members = " or ".join(lookup.dimension for lookup in spec.lookups)

    @asset(
        key=key,
        deps=[silver_key(fact), *lookups, *references],
        group_name=GOLD,
        op_tags=step_tags(catalog, fact),
        metadata={COLUMN_SCHEMA: column_schema(gold_columns(catalog, fact.lake_name))},
        kinds={"spark", "delta"},
        description=f"{fact.description} With {carried} as they were at `{spec.time_column}`; "
        f"partitioned by `{spec.date_column}`.",
        partitions_def=daily_partitions(fact.first_partition),
        backfill_policy=BackfillPolicy.single_run(),
        check_specs=[
            *_expectation_checks(key, spec.expectations),
            AssetCheckSpec(
                MEMBERS_ARRIVED,
                asset=key,
                description=f"Rows whose key in {members} the source does not have yet (the "
                "fact came first): they carry NULL attributes until the member arrives, and "
                "the next run then rebuilds their days.",
            ),
            *(
                AssetCheckSpec(
                    _reference_check(catalog, reference),
                    asset=key,
                    description=f"Rows whose {reference.on} {reference.dimension} lacks: they "
                    "reach gold all the same (and reconciliation counts them); the next run "
                    f"after {reference.dimension} gains them rebuilds their days.",
                )
                for reference in spec.references
            ),
        ],
    )
    def fact_table(
        context: AssetExecutionContext, gold_engine: GoldEngine, lake_writer: LakeWriter
    ) -> MaterializeResult:
        lake_writer.check()
        outcome = gold_engine.build_fact(catalog, partition_days(context))
        found = [_references_found(catalog, x, outcome) for x in spec.references]
        return _result(context, outcome, spec.expectations, _members_arrived(outcome), *found)

    return fact_table


def build_aggregate_asset(catalog: Catalog, spec: Aggregate) -> AssetsDefinition:
    fact = catalog.fact
    key = gold_key(spec.name)

    @asset(
        key=key,
        deps=[gold_key(fact.lake_name)],
        group_name=GOLD,
        metadata={COLUMN_SCHEMA: column_schema(gold_columns(catalog, spec.name))},
        kinds={"spark", "delta"},
        description=f"{spec.description} Partitioned like the fact.",
        partitions_def=daily_partitions(fact.first_partition),
        backfill_policy=BackfillPolicy.single_run(),
        check_specs=_expectation_checks(key, spec.expectations),
    )
    def daily_aggregate(
        context: AssetExecutionContext, gold_engine: GoldEngine, lake_writer: LakeWriter
    ) -> MaterializeResult:
        lake_writer.check()
        outcome = gold_engine.build_aggregate(catalog, spec, partition_days(context))
        return _result(context, outcome, spec.expectations)

    return daily_aggregate


def _result(
    context: AssetExecutionContext,
    outcome: GoldOutcome,
    rules: tuple[Rule, ...],
    *checks: AssetCheckResult,
) -> MaterializeResult:
    context.log.info(outcome.summary)
    totals = {} if outcome.rows is None else {ROW_COUNT: outcome.rows}
    per_day = {name: outcome.rows_per_day for name in totals}
    return MaterializeResult(
        metadata=result_metadata(context, outcome.metadata, totals, per_day),
        check_results=[*_expectation_results(rules, outcome), *checks],
    )


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
