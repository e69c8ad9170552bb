"""The gold layer as a Databricks Lakeflow (DLT) declarative pipeline, declared from the catalog.

Every dataset comes from a gold spec of `spotify_assets.catalog.tables.CATALOG` (README: Gold);
the local runner (`resources/gold_runner.py`) applies the same specs on Sail, and both run the
queries of `spotify_assets.gold.transform`:

    silver_<dim>    temporary view     silver's change data feed; rows failing the spec's
                                       expectations dropped (`expect_all_or_drop`)
    <dim>           streaming table    AUTO CDC from silver_<dim>: SCD type 2, keys, sequence,
                                       deletes and tracked columns from the spec; the sequence
                                       is a struct (effective time, change sequence), and so are
                                       `__START_AT`/`__END_AT`
    <calendar>      materialized view  silver's rows passing the expectations
    silver_<fact>   temporary view     silver's fact rows passing the fact's expectations
    <fact>          materialized view  `point_in_time` over silver_<fact> and the gold dimensions
                                       (their versions by effective time, as the local runner
                                       keeps them), partitioned by the spec's date column
    <aggregate>     materialized view  `aggregate` of the gold fact, with its expectations,
                                       partitioned like the fact

Pipeline configuration: `spotify.lake_url`, the lake root; silver is `<lake_url>/silver/<table>`.
Silver partitions are replaced (replaceWhere) on refresh, so the dimensions stream silver's change
data feed, keeping inserts and update post-images (a removed silver row is a replaced partition,
not a source delete: those arrive as versions matching the spec's `delete_when`). Silver tables
therefore need `delta.enableChangeDataFeed = true` on Databricks.

`sequence_by` is a value of each row, so silver stores each version's effective time: its business
time, but never before a change preceding it in the source's sequence (a row restored with its
original `updated_at` takes effect after its delete), computed by the same rule the local runner
orders by (`spotify_assets.silver.transform.effective_times`).

`spotify_assets` must be importable: the asset bundle ships the whole repository and the bundle
root goes on `sys.path`; when this file knows its path (not in a notebook) it adds the repository
root itself.

Open-source fallback: pyspark 4.2's `pyspark.pipelines` has no `expect*` decorators and its
`create_auto_cdc_flow` stores SCD type 1 only, without `track_history_*`. Where the API lacks them
(detected from the API itself), expectations are not applied and the dimensions are registered as
SCD type 1, with a logged warning; the graph still registers, but gold dimensions then have no
`__START_AT`/`__END_AT` for the fact's point-in-time lookups. On Databricks the full SCD type 2
declaration with expectations is what runs.
"""

from __future__ import annotations

import inspect
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

try:
    from pyspark import pipelines as dp
except ImportError:  # older Databricks runtimes: `dlt`, if it has the same names (not `view`)
    import dlt as dp

# Notebooks have no __file__; there the bundle root on sys.path must do.
if "__file__" in globals():
    _REPO_ROOT = str(Path(__file__).resolve().parent.parent)
    if _REPO_ROOT not in sys.path:
        sys.path.append(_REPO_ROOT)

from spotify_assets.catalog.gold_spec import (
    END_AT,
    START_AT,
    Aggregate,
    Calendar,
    PointInTimeFact,
    Scd2Dimension,
)
from spotify_assets.catalog.lake_paths import silver_path
from spotify_assets.catalog.rules import Rule
from spotify_assets.catalog.tables import CATALOG, Catalog, Table
from spotify_assets.gold.transform import (
    SILVER_VERSION_COLUMNS,
    aggregate,
    calendar,
    lookup_periods,
    point_in_time,
)

LAKE_URL_CONF = "spotify.lake_url"
# Delta change data feed: its metadata columns, and the change types that carry a row as it now is.
CDF_CHANGE_TYPE = "_change_type"
CDF_COLUMNS = (CDF_CHANGE_TYPE, "_commit_version", "_commit_timestamp")
CDF_KEPT = ("insert", "update_postimage")

QueryFunction = Callable[[], DataFrame]
log = logging.getLogger("spotify.gold_pipeline")


def _accepts(function: Callable[..., object], parameter: str) -> bool:
    parameters = inspect.signature(function).parameters.values()
    return any(p.name == parameter or p.kind is p.VAR_KEYWORD for p in parameters)


SCD2_SUPPORTED = _accepts(dp.create_auto_cdc_flow, "track_history_column_list")
EXPECTATIONS_SUPPORTED = hasattr(dp, "expect_all_or_drop")
if not SCD2_SUPPORTED:
    log.warning(
        "%s.create_auto_cdc_flow has no track_history_column_list: gold dimensions are "
        "registered as SCD type 1, without history (run this pipeline on Databricks for SCD2)",
        dp.__name__,
    )
if not EXPECTATIONS_SUPPORTED:
    log.warning(
        "%s has no expect_all_or_drop: gold expectations are not applied in this graph",
        dp.__name__,
    )


def _spark() -> SparkSession:
    spark = SparkSession.getActiveSession()
    if spark is None:
        raise RuntimeError(
            "no active Spark session: gold queries run inside a pipeline update, which provides one"
        )
    return spark


def _silver_path(spark: SparkSession, table: Table) -> str:
    return f"{spark.conf.get(LAKE_URL_CONF).rstrip('/')}/silver/{table.lake_name}"


def _silver_view(table: Table) -> str:
    return f"silver_{table.lake_name}"


def _expect(rules: tuple[Rule, ...]) -> Callable[[QueryFunction], QueryFunction]:
    """Rows failing any rule are dropped and counted per rule, like
    `spotify_assets.gold.transform.expect`."""
    if not rules or not EXPECTATIONS_SUPPORTED:
        return lambda query: query
    return dp.expect_all_or_drop({rule.name: rule.predicate for rule in rules})


def _dimension(table: Table, spec: Scd2Dimension) -> None:
    def changes() -> DataFrame:
        spark = _spark()
        feed = (
            spark.readStream.format("delta")
            .option("readChangeFeed", "true")
            .load(_silver_path(spark, table))
        )
        return feed.where(F.col(CDF_CHANGE_TYPE).isin(*CDF_KEPT)).drop(*CDF_COLUMNS)

    view = _silver_view(table)
    dp.temporary_view(name=view, comment=f"Change feed of silver/{table.lake_name}.")(
        _expect(spec.expectations)(changes)
    )
    dp.create_streaming_table(table.lake_name, comment=table.description)
    if SCD2_SUPPORTED:
        history = {
            "stored_as_scd_type": spec.scd_type,
            "track_history_column_list": list(spec.tracked),
        }
    else:
        history = {"stored_as_scd_type": 1}
    dp.create_auto_cdc_flow(
        target=table.lake_name,
        source=view,
        keys=list(table.key),
        # Strings, not col()/expr(): both APIs take SQL text here, and it needs no session.
        sequence_by=spec.sequence_by,
        apply_as_deletes=spec.delete_when,
        except_column_list=list(SILVER_VERSION_COLUMNS),
        **history,
    )


def _calendar(table: Table, spec: Calendar) -> None:
    def rows() -> DataFrame:
        spark = _spark()
        return calendar(spark.read.format("delta").load(_silver_path(spark, table)))

    dp.materialized_view(name=table.lake_name, comment=table.description)(
        _expect(spec.expectations)(rows)
    )


def _by_effective_time(catalog: Catalog, name: str, versions: DataFrame) -> DataFrame:
    """A dimension's versions with `__START_AT`/`__END_AT` as effective time, as the local runner
    stores them: versions superseded within their instant (at the same effective time, by a
    later change sequence) last no time, and are left out."""
    spec = catalog[name].gold
    assert isinstance(spec, Scd2Dimension)
    # The field of a NULL struct is read as NULL explicitly: Sail reads it as the epoch.
    end = F.when(F.col(END_AT).isNotNull(), F.col(END_AT)[spec.effective_time])
    timed = versions.withColumn(START_AT, F.col(START_AT)[spec.effective_time]).withColumn(
        END_AT, end
    )
    return timed.where(F.col(END_AT).isNull() | (F.col(END_AT) > F.col(START_AT)))


def _fact(catalog: Catalog, table: Table, spec: PointInTimeFact) -> None:
    # The rules are about silver's fact rows, so they filter before the lookups (as the local
    # runner does), not after them, when dimension columns have joined the row.
    def silver() -> DataFrame:
        spark = _spark()
        return spark.read.format("delta").load(_silver_path(spark, table))

    def rows() -> DataFrame:
        spark = _spark()
        dimensions = {
            lookup.dimension: _by_effective_time(
                catalog, lookup.dimension, spark.read.table(catalog[lookup.dimension].lake_name)
            )
            for lookup in spec.lookups
        }
        periods = lookup_periods(catalog, dimensions)
        return point_in_time(catalog, spark.read.table(_silver_view(table)), periods)

    comment = f"{silver_path(table)} rows passing the fact's expectations."
    dp.temporary_view(name=_silver_view(table), comment=comment)(_expect(spec.expectations)(silver))
    dp.materialized_view(
        name=table.lake_name, comment=table.description, partition_cols=[spec.date_column]
    )(rows)


def _aggregate(catalog: Catalog, spec: Aggregate) -> None:
    fact = catalog.fact
    assert isinstance(fact.gold, PointInTimeFact)

    def rows() -> DataFrame:
        return aggregate(spec, _spark().read.table(fact.lake_name))

    dp.materialized_view(
        name=spec.name, comment=spec.description, partition_cols=[fact.gold.date_column]
    )(_expect(spec.expectations)(rows))


def declare(catalog: Catalog) -> None:
    """Register every gold dataset of `catalog` with the active pipeline."""
    for table in catalog:
        match table.gold:
            case Scd2Dimension() as spec:
                _dimension(table, spec)
            case Calendar() as spec:
                _calendar(table, spec)
            case PointInTimeFact() as spec:
                _fact(catalog, table, spec)
    for aggregate_spec in catalog.aggregates:
        _aggregate(catalog, aggregate_spec)


declare(CATALOG)
