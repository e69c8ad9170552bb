"""Gold transforms (README: Gold): pure PySpark, DataFrame in, DataFrame out.

    expect         -> rows failing an expectation are dropped (DLT `expect_all_or_drop`), counted
    calendar       -> the calendar's rows without silver's version bookkeeping
    scd2           -> the SCD type 2 rows of the keys present in some silver versions
    lookup_periods -> per dimension the fact looks up, when each version is in force
    point_in_time  -> fact rows with dimension columns as they were at the fact's time
    unmatched      -> per day, the dimension keys of fact rows that no dimension row has yet
    aggregate      -> a daily aggregate of fact rows
    scd2_problems  -> invariants of an SCD2 table, counted for asset checks

The local runner (`resources/gold_runner.py`) applies them to Delta tables on Sail; the Databricks
pipeline (`dlt/`) declares the same specs and lets DLT apply them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import reduce

from pyspark.sql import Column, DataFrame, Window, WindowSpec
from pyspark.sql import functions as F

from spotify_assets.catalog.gold_spec import (
    END_AT,
    START_AT,
    UNMATCHED_DIMENSION,
    UNMATCHED_FACTS,
    UNMATCHED_KEY,
    Aggregate,
    PointInTimeFact,
    Scd2Dimension,
)
from spotify_assets.catalog.rules import Rule
from spotify_assets.catalog.tables import (
    CHANGE_DATE,
    CHANGE_OP,
    CHANGE_SEQ,
    EFFECTIVE_AT,
    VERSION_AT,
    Catalog,
    Table,
)
from spotify_assets.silver.transform import (
    FAILED_RULES,
    any_of,
    effective_times,
    flag_failures,
    key_ordered,
)

# Silver's version bookkeeping: not carried into gold (DLT's `except_column_list`).
SILVER_VERSION_COLUMNS = (CHANGE_OP, CHANGE_SEQ, VERSION_AT, EFFECTIVE_AT, CHANGE_DATE)


@dataclass(frozen=True)
class Expected:
    kept: DataFrame
    # One row: failed rows per rule that can fail (None: no such rule, nothing to count).
    failures: DataFrame | None


def expect(rules: tuple[Rule, ...], df: DataFrame) -> Expected:
    """Keep the rows passing every rule; count the others per rule (a row may fail several),
    but not under a rule `guaranteed_by` construction: a query would count zero."""
    if not rules:
        return Expected(kept=df, failures=None)
    # The predicates themselves, not the failures' names: building that text for every row
    # cost more than testing it. A NULL predicate drops the row, as it fails the rule.
    kept = df.where(reduce(Column.__and__, [F.expr(r.predicate) for r in rules]))
    flagged = flag_failures(rules, df)
    counted = [r for r in rules if not r.guaranteed_by]
    if not counted:
        return Expected(kept=kept, failures=None)
    names = F.split(F.col(FAILED_RULES), ",")
    failures = flagged.agg(
        *[F.sum(F.array_contains(names, r.name).cast("int")).alias(r.name) for r in counted]
    )
    return Expected(kept=kept, failures=failures)


def calendar(silver: DataFrame) -> DataFrame:
    """Dropped by name: a declarative pipeline cannot read a plan's columns while it registers
    its datasets."""
    return silver.drop(*SILVER_VERSION_COLUMNS)


def scd2_spec(table: Table) -> Scd2Dimension:
    if not isinstance(table.gold, Scd2Dimension):
        raise TypeError(f"{table.name} is not an SCD2 dimension")
    return table.gold


def dimension_columns(versions: DataFrame) -> list[str]:
    return [c for c in versions.columns if c not in SILVER_VERSION_COLUMNS]


def scd2(table: Table, versions: DataFrame) -> DataFrame:
    """The SCD2 rows of every key in `versions`, which must hold all silver versions of them.

    AUTO CDC semantics, as a fold over each key's changes in the order of `_in_sequence`,
    whatever order they arrived in:
    - an upsert after a delete, or with a tracked column changed, starts a version;
    - an upsert changing only untracked columns updates the open version in place;
    - a delete closes the open version (`__END_AT` = its time); one with none open is ignored;
    - a version that lasts no time (superseded at the instant it starts) is not kept.
    Identical input gives identical rows, so re-applying changes is a no-op."""
    spec = scd2_spec(table)
    keys = list(table.key)
    events, in_order = _in_sequence(table, versions)
    at = F.col(spec.effective_time)
    so_far = in_order.rowsBetween(Window.unboundedPreceding, Window.currentRow)
    first_of_key = ~_same_key(keys, F.lag, in_order)
    previous_deleted = F.lag("_delete").over(in_order)
    changed = [~F.col(c).eqNullSafe(F.lag(c).over(in_order)) for c in spec.tracked]
    starts = ~F.col("_delete") & (first_of_key | previous_deleted | any_of(changed))
    next_at = F.when(_same_key(keys, F.lead, in_order), F.lead(at).over(in_order))
    # A running count of starts numbers the versions: every version begins with a start.
    events = (
        events.withColumn("_starts", starts.cast("int"))
        .withColumn("_next_at", next_at)
        .withColumn("_version", F.sum(starts.cast("int")).over(so_far))
    )
    upserts = events.where(~F.col("_delete"))
    started_at = F.last(F.when(F.col("_starts") == 1, at), ignorenulls=True)
    last_of_version = F.coalesce(
        F.lead("_version").over(in_order) != F.col("_version"), F.lit(True)
    )
    rows = upserts.withColumn(START_AT, started_at.over(so_far)).withColumn(
        "_last", last_of_version
    )
    lasts = F.col("_next_at").isNull() | (F.col("_next_at") > F.col(START_AT))
    return rows.where(F.col("_last") & lasts).select(
        *dimension_columns(versions),
        F.col(START_AT),
        F.col("_next_at").alias(END_AT),
    )


def _in_sequence(table: Table, versions: DataFrame) -> tuple[DataFrame, WindowSpec]:
    """`versions` with their effective time, recomputed over all of them (`effective_times`,
    the rule silver stores it by), and `_delete`; and the window ordering each key's changes as
    AUTO CDC applies them: by effective time, then change sequence (an image, which has none,
    first), then an upsert before a delete."""
    spec = scd2_spec(table)
    sequence = F.col(spec.change_sequence)
    events = effective_times(table, versions).withColumn(
        "_delete", F.coalesce(F.expr(spec.delete_when), F.lit(False))
    )
    order = key_ordered(
        list(table.key), F.col(spec.effective_time), sequence.asc_nulls_first(), "_delete"
    )
    return events, order


def _same_key(keys: list[str], neighbour: Callable[..., Column], window: WindowSpec) -> Column:
    """Whether the previous (`F.lag`) or next (`F.lead`) row in `window` has the same key."""
    same = [neighbour(k).over(window) == F.col(k) for k in keys]
    result = same[0]
    for condition in same[1:]:
        result = result & condition
    return F.coalesce(result, F.lit(False))


def lookup_periods(catalog: Catalog, dimensions: Mapping[str, DataFrame]) -> dict[str, DataFrame]:
    """Per dimension the fact looks up, the periods `point_in_time` and `unmatched` join facts
    with (`_periods`). `dimensions`: gold SCD2 rows by table name. A build of the fact in
    chunks computes them once for all its chunks: the window over every dimension version would
    otherwise be most of each chunk's cost."""
    spec = catalog.fact.gold
    assert isinstance(spec, PointInTimeFact)
    periods = {}
    for lookup in spec.lookups:
        (key,) = catalog[lookup.dimension].key
        periods[lookup.dimension] = _periods(dimensions[lookup.dimension], key, lookup.columns)
    return periods


def point_in_time(
    catalog: Catalog, facts: DataFrame, periods: Mapping[str, DataFrame]
) -> DataFrame:
    """Silver fact rows -> gold fact rows: each lookup's columns from the version of the
    dimension row valid at the fact's time; before its first version, from the first; after a
    delete, from the last; no dimension row, NULLs. `periods`: `lookup_periods` of the gold
    SCD2 rows."""
    fact = catalog.fact
    spec = fact.gold
    assert isinstance(spec, PointInTimeFact)
    at = F.col(spec.time_column)
    result = facts.withColumn(spec.date_column, F.col(CHANGE_DATE))
    # Columns are selected by name, never read off a plan: Spark Connect would analyse it eagerly,
    # which a declarative pipeline cannot do while it registers its datasets.
    columns = [*fact.column_names, spec.date_column]
    for lookup in spec.lookups:
        in_force = periods[lookup.dimension]
        joined = result.join(
            in_force,
            (result[lookup.on] == in_force["_lookup_key"])
            & (in_force["_from"].isNull() | (at >= in_force["_from"]))
            & (in_force["_to"].isNull() | (at < in_force["_to"])),
            "left",
        )
        columns[-1:-1] = lookup.columns
        result = joined.select(*columns)
    return result


def unmatched(
    catalog: Catalog,
    facts: DataFrame,
    periods: Mapping[str, DataFrame],
    references: Mapping[str, DataFrame],
) -> DataFrame:
    """Per day and dimension, the keys of fact rows that it lacks, with how many fact rows hold
    each: for a lookup, the keys `point_in_time` finds in no dimension row (a member the source
    has not got yet: those facts carry NULLs until it arrives); for a reference, the keys its
    gold rows lack (a day missing from the calendar). Columns: the fact's date column,
    `dimension` (its source table name), `key` (as text) and `facts`. Usually empty.
    `periods`: `lookup_periods` of the gold SCD2 rows; `references`: each reference's gold rows."""
    spec = catalog.fact.gold
    assert isinstance(spec, PointInTimeFact)
    known = {
        # A key's first period is the only one open before: one row per known key.
        (lookup.dimension, lookup.on): periods[lookup.dimension]
        .where(F.col("_from").isNull())
        .select(F.col("_lookup_key").alias("_known"))
        for lookup in spec.lookups
    }
    for reference in spec.references:
        (key,) = catalog[reference.dimension].key
        rows = references[reference.dimension]
        known[reference.dimension, reference.on] = rows.select(F.col(key).alias("_known"))
    parts = []
    for (dimension, on), keys in known.items():
        missing = facts.join(keys, facts[on] == keys["_known"], "left_anti")
        parts.append(
            missing.where(F.col(on).isNotNull())
            .groupBy(
                F.col(CHANGE_DATE).alias(spec.date_column),
                F.lit(dimension).alias(UNMATCHED_DIMENSION),
                F.col(on).cast("string").alias(UNMATCHED_KEY),
            )
            .agg(F.count(F.lit(1)).alias(UNMATCHED_FACTS))
        )
    return reduce(DataFrame.unionByName, parts)


def _periods(versions: DataFrame, key: str, columns: tuple[str, ...]) -> DataFrame:
    """Per key, the version in force from `_from` (NULL: always before) to `_to` (NULL: ever
    after): consecutive versions tile the time line, gaps after deletes included."""
    order = key_ordered([key], F.col(START_AT))
    first = ~_same_key([key], F.lag, order)
    return versions.select(
        F.col(key).alias("_lookup_key"),
        *columns,
        F.when(first, F.lit(None)).otherwise(F.col(START_AT)).alias("_from"),
        F.when(_same_key([key], F.lead, order), F.lead(START_AT).over(order)).alias("_to"),
    )


def aggregate(spec: Aggregate, facts: DataFrame) -> DataFrame:
    return facts.groupBy(*spec.group_by).agg(
        *[F.expr(m.expression).alias(m.name) for m in spec.measures]
    )


def live_keys(table: Table, versions: DataFrame) -> DataFrame:
    """Keys whose latest change (in the order of `_in_sequence`) is not a delete."""
    keys = list(table.key)
    events, order = _in_sequence(table, versions)
    latest = events.withColumn("_last", ~_same_key(keys, F.lead, order)).where(F.col("_last"))
    return latest.where(~F.col("_delete")).select(*keys)


SCD2_INVARIANTS = {
    "one_row_per_version": "no two rows share a key and `__START_AT`",
    "one_current_version_per_live_key": "every key not deleted has exactly one row with "
    "`__END_AT` NULL, and deleted keys have none",
    "no_overlapping_versions": "each version ends after it starts and no later than the next "
    "version of its key starts",
}


def scd2_problems(table: Table, gold: DataFrame, live: DataFrame) -> dict[str, int]:
    """Rows (or keys) breaking each of `SCD2_INVARIANTS`; all zero in a correct table.

    One query over one pass of `gold`: each pass plans and runs `gold`'s lineage (the whole
    SCD2 fold) again. Each row is flagged in its key's order by start, then counted per key
    (current rows) and in all."""
    keys = list(table.key)
    order = key_ordered(keys, F.col(START_AT))
    start, end, following = F.col(START_AT), F.col(END_AT), F.col("_next")

    def same_start(back: int) -> Column:
        """Whether the row `back` rows before holds the same key and start."""
        same_key = _same_key(keys, lambda c: F.lag(c, back), order)
        return same_key & start.eqNullSafe(F.lag(START_AT, back).over(order))

    next_start = F.when(_same_key(keys, F.lead, order), F.lead(START_AT).over(order))
    overlapping = (end.isNotNull() & (end <= start)) | (
        following.isNotNull() & (end.isNull() | (end > following))
    )
    flagged = gold.withColumn("_next", next_start).select(
        *keys,
        end.isNull().cast("int").alias("_current"),
        # The second row of a run sharing key and start: one per repeated version.
        (same_start(1) & ~same_start(2)).cast("int").alias("_repeated"),
        overlapping.cast("int").alias("_overlapping"),
    )
    per_key = flagged.groupBy(*keys).agg(
        F.sum("_current").alias("_current"),
        F.sum("_repeated").alias("_repeated"),
        F.sum("_overlapping").alias("_overlapping"),
    )
    live_marked = live.select(*keys, F.lit(True).alias("_live"))
    current = F.coalesce(F.col("_current"), F.lit(0))
    wrong_current = (F.col("_live").isNull() & (current > 0)) | (F.col("_live") & (current != 1))
    counted = (
        per_key.join(live_marked, keys, "full")
        .agg(
            F.sum("_repeated").alias("one_row_per_version"),
            F.count(F.when(wrong_current, F.lit(1))).alias("one_current_version_per_live_key"),
            F.sum("_overlapping").alias("no_overlapping_versions"),
        )
        .collect()[0]
    )
    return {name: int(counted[name] or 0) for name in SCD2_INVARIANTS}
