"""Silver transforms (README: Silver): pure PySpark, DataFrame in, DataFrame out.

The same functions run on Sail (local), on JVM Spark (tests) and on Databricks. Each step reads
its rules from the table's catalog entry:

    conform  -> declared schema with explicit casts; drift per policy, or a clear error
    clean    -> trim, canonical case, ISO countries, dashes, ...
    derive   -> computed columns (duration_flag)
    version  -> `_version_at` (business time of the version) and `_change_date` (the partition)
    dedup    -> one row per change record, and per image no change record describes:
                re-deliveries collapse, versions never drop (the sort runs only where a
                (key, version time) repeats)
    check    -> `_failed_rules`; `split` sends failing rows to quarantine with their raw values
    effective_times -> a dimension version's `_effective_at`, when it takes effect
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from pyspark.sql import Column, DataFrame, Window, WindowSpec
from pyspark.sql import functions as F

from spotify_assets.bronze.windows import Window as TimeWindow
from spotify_assets.catalog.reference import COUNTRY_NAMES
from spotify_assets.catalog.rules import Clean, DriftPolicy, Rule
from spotify_assets.catalog.tables import (
    CHANGE_AT,
    CHANGE_DATE,
    CHANGE_OP,
    CHANGE_SEQ,
    EFFECTIVE_AT,
    EXTRACTED_AT,
    KEY_RANK,
    RUN_ID,
    UNTYPED,
    VERSION_AT,
    WINDOW_END,
    WINDOW_START,
    CaptureMode,
    ColumnType,
    Table,
    TableRole,
)
from spotify_assets.catalog.tables import (
    Column as CatalogColumn,
)

FAILED_RULES = "_failed_rules"
RULE = "_rule"
RAW = "_raw"

SPARK_TYPES = {
    ColumnType.INT: "int",
    ColumnType.BIGINT: "bigint",
    ColumnType.STRING: "string",
    ColumnType.DATE: "date",
    ColumnType.TIMESTAMP: "timestamp_ntz",
}
# Widening casts that lose nothing; anything else is an incompatible type change.
_SAFE_CASTS = {("int", "bigint"), ("smallint", "int"), ("smallint", "bigint"), ("void", "*")}
# Bronze's own columns: not source columns, so never schema drift.
_BRONZE_AUDIT = {
    CHANGE_OP, CHANGE_SEQ, CHANGE_AT, EXTRACTED_AT, WINDOW_START, WINDOW_END, RUN_ID, UNTYPED,
}  # fmt: skip


class SchemaDriftError(ValueError):
    """Bronze no longer matches the catalog in a way the drift policy does not allow."""


@dataclass(frozen=True)
class SilverFrames:
    valid: DataFrame  # the silver rows: cleaned versions
    quarantine: DataFrame  # rows failing a rule, with the rule names and their raw values
    # Whether some (key, version) repeats, so that rows may collapse: if not, every input row
    # is either valid or quarantined, and counting the valid ones tells the quarantine's size.
    repeats: bool = True
    # Where rows may collapse (a dimension's versions), the input rows failing some rule: the
    # quarantine holds none unless there is one. None: not known apart from the quarantine.
    failing: DataFrame | None = None


def transform(
    table: Table, bronze: DataFrame, run_id: str, accepted: DataFrame | None = None
) -> SilverFrames:
    """Bronze rows of some partitions -> the silver rows of the same partitions.

    Equal to `split(check(dedup(prepared)))`, but the dedup sort (most of the cost) only runs
    where it can change something: over all rows when some (key, version) repeats, which one
    small query tells; and for the quarantine, over the groups that hold a failing row.

    `accepted`: the rows silver holds in other partitions. A fact has one row per key and no
    versions: only exact re-deliveries collapse, any other repeat of a key is quarantined
    (`rank_keys`), a key `accepted` holds included. A dimension's versions take effect after
    the change records preceding them, `accepted`'s included (`effective_times`)."""
    prepared = version(table, derive(table, clean(table, conform(table, bronze))))
    if table.role is TableRole.FACT:
        keys = key_summary(table, prepared)
        # A (key, version) repeats only where its key does: the common case asks one query.
        repeats = keys.repeated and has_repeats(table, prepared)
        # Exact re-deliveries collapse (and their keys are summarised again); any other repeat
        # of a key is a defect (`rank_keys`).
        if repeats:
            prepared = prepared.dropDuplicates(list(table.column_names))
        known = None if repeats else keys
        frames = split(table, check(table, prepared, accepted, known), run_id)
        return replace(frames, repeats=repeats)
    repeats = has_repeats(table, prepared)
    deduped = dedup(table, prepared) if repeats else prepared
    valid = split(table, check(table, deduped), run_id).valid
    if table.role is TableRole.DIMENSION:
        timed = effective_times(table, valid, accepted)
        valid = timed.select(*silver_columns(table, timed))
    suspects = dedup(table, failing_groups(table, prepared))
    return SilverFrames(
        valid=valid,
        quarantine=split(table, check(table, suspects), run_id).quarantine,
        repeats=repeats,
        failing=failing_rows(table, prepared),
    )


def conform(table: Table, bronze: DataFrame) -> DataFrame:
    """The declared columns with explicit casts, bronze's audit columns, and any new column
    handled by the table's drift policy. An incompatible type change fails, naming it."""
    actual = dict(bronze.dtypes)
    missing = [c.name for c in table.columns if c.name not in actual]
    if missing:
        raise SchemaDriftError(f"{table.name}: bronze has no column(s) {', '.join(missing)}")
    columns = []
    for column in table.columns:
        declared, found = SPARK_TYPES[column.type], actual[column.name]
        if found != declared and (found, declared) not in _SAFE_CASTS and found != "void":
            raise SchemaDriftError(
                f"{table.name}.{column.name}: type changed from {declared} to {found} in bronze; "
                "this is not a safe cast: update the catalog (and migrate silver) to accept it"
            )
        columns.append(F.col(column.name).cast(declared).alias(column.name))
    audit = [F.col(name) for name in actual if name in _BRONZE_AUDIT]
    if UNTYPED not in actual:  # bronze extracted before values were checked
        audit.append(F.lit(None).cast("string").alias(UNTYPED))
    new = [n for n in actual if n not in table.column_names and n not in _BRONZE_AUDIT]
    if new and table.silver.new_columns is DriftPolicy.FAIL:
        raise SchemaDriftError(f"{table.name}: new column(s) {', '.join(new)} in bronze")
    carried = [F.col(n) for n in new] if table.silver.new_columns is DriftPolicy.CARRY else []
    return bronze.select(*columns, *audit, *carried)


def clean(table: Table, df: DataFrame) -> DataFrame:
    """Apply the cleaning steps; the raw value of each cleaned column is kept aside for the
    quarantine (a column reference, no copy)."""
    for name, steps in table.silver.clean:
        value = F.col(name)
        for step in steps:
            value = _CLEANERS[step](value)
        df = df.withColumn(_raw(name), F.col(name)).withColumn(name, value)
    return df


def _raw(name: str) -> str:
    return f"_raw__{name}"


def _collapse_spaces(value: Column) -> Column:
    return F.trim(F.regexp_replace(value, " +", " "))


def _country_code(value: Column) -> Column:
    """One flat CASE with a branch per name, never a CASE nested in the ELSE of another: Sail
    (DataFusion 54) copies a CASE's whole body each time it rebuilds it, so a chain of n nested
    CASEs costs 2^n when a filter over it, pushed into the parquet scan, is rewritten there (a
    column constant in a file's statistics becomes a literal): 24 names passed 23 GiB on 6 rows."""
    key = F.upper(F.trim(value))
    branches = [(key == name.upper(), F.lit(code)) for code, name in COUNTRY_NAMES.items()]
    result = F.when(*branches[0])
    for condition, code in branches[1:]:
        result = result.when(condition, code)
    return result.otherwise(key)


_CLEANERS = {
    Clean.TRIM: _collapse_spaces,
    Clean.UPPER: F.upper,
    Clean.LOWER: F.lower,
    Clean.INITCAP: F.initcap,
    Clean.COUNTRY_CODE: _country_code,
    Clean.DASHES_TO_SPACES: lambda value: F.regexp_replace(value, "-", " "),
}


def derive(table: Table, df: DataFrame) -> DataFrame:
    for derived in table.silver.derived:
        df = df.withColumn(derived.name, F.expr(derived.expression).cast(derived.type))
    return df


def change_time(table: Table) -> Column | None:
    """The time bronze partitions a row by."""
    return F.col(table.change_time_column) if table.change_time_column else None


def version(table: Table, df: DataFrame) -> DataFrame:
    """Business time of each version (a delete's is its change time, as is that of a change
    whose row has no business time: a source without the NOT NULL constraint) and its partition
    date: the UTC day of its change time, as bronze stores it."""
    if table.mode is CaptureMode.SNAPSHOT:
        return df.withColumn(VERSION_AT, F.lit(None).cast("timestamp_ntz"))
    assert table.cdc_column is not None
    business = F.col(table.cdc_column)
    if table.mode is CaptureMode.CDC:
        changed = F.col(CHANGE_AT)
        business = F.when(F.col(CHANGE_OP) == "D", changed).otherwise(F.coalesce(business, changed))
    return df.withColumn(VERSION_AT, business).withColumn(
        CHANGE_DATE, F.to_date(change_time(table))
    )


# Window functions run over hash buckets of the key, ordered by key then time: Sail evaluates a
# few large window partitions far faster than one small partition per key.
KEY_BUCKETS = 64


def key_ordered(keys: list[str], *order: Column | str) -> WindowSpec:
    bucket = F.pmod(F.hash(*[F.col(k) for k in keys]), F.lit(KEY_BUCKETS))
    return Window.partitionBy(bucket).orderBy(*[F.col(k) for k in keys], *order)


def effective_times(
    table: Table, versions: DataFrame, others: DataFrame | None = None
) -> DataFrame:
    """`versions` with `_effective_at`: when each takes effect. That is its
    business time, but a change record never takes effect before one preceding it in the
    source's sequence, so a row restored with its old `updated_at` is restored when it was, not
    before its delete; an image (no sequence) takes effect at its own time. An image was read
    after the change records of its day and before those of later days (the first load is a
    snapshot every later change record follows), so a change record of a later day, even one
    backdated before the image, never takes effect before it. `others`: versions of the same
    keys held elsewhere (silver's other partitions), whose change records and images may
    precede these. The same rows give the same times whichever partitions they come in.

    The running maxima run over the key-ordered bucket: the largest (key, ...) so far is the
    current key's, as every earlier row of the bucket has a smaller key."""
    keys = list(table.key)
    time, sequence = F.col(VERSION_AT), F.col(CHANGE_SEQ)
    rows = versions.withColumn("_own", F.lit(True))
    if others is not None:
        preceding = others.join(versions.select(*keys).distinct(), keys, "left_semi")
        # Context rows keep silver's own values: a column they left NULL (`_change_date`) made
        # Sail's Delta write fail its NOT NULL check, although they are filtered out below.
        shared = [c for c in versions.columns if c in others.columns]
        context = preceding.select(*shared, F.lit(False).alias("_own"))
        rows = rows.unionByName(context, allowMissingColumns=True)
    is_image, is_record = sequence.isNull(), sequence.isNotNull()
    # By change day, a day's change records before its images: a record's frame holds the
    # images of earlier days only. Images rank above records, so the maximum is an image's.
    by_day = key_ordered(keys, F.col(CHANGE_DATE), is_image).rowsBetween(
        Window.unboundedPreceding, Window.currentRow
    )
    key_columns = [F.col(k) for k in keys]
    image = F.max(F.struct(*key_columns, is_image.alias("_image"), time.alias("_t"))).over(by_day)
    rows = rows.withColumn("_floor", F.when(is_record & image["_image"], image["_t"]))
    floored = F.when(F.col("_floor") > time, F.col("_floor")).otherwise(time)
    by_sequence = key_ordered(keys, sequence.asc_nulls_first()).rangeBetween(
        Window.unboundedPreceding, Window.currentRow
    )
    # Images rank below change records, so a change record's maximum is over change records.
    latest = F.max(F.struct(*key_columns, is_record.alias("_record"), floored.alias("_t")))
    effective = F.when(is_image, time).otherwise(latest.over(by_sequence)["_t"])
    return rows.withColumn(EFFECTIVE_AT, effective).where(F.col("_own")).drop("_own", "_floor")


def any_of(conditions: Sequence[Column]) -> Column:
    """OR of `conditions`, as a balanced tree: a chain one level per condition nests deeper than
    Spark Connect's protobuf messages may (50 time windows already failed to encode)."""
    if not conditions:
        return F.lit(False)
    if len(conditions) == 1:
        return conditions[0]
    middle = len(conditions) // 2
    return any_of(conditions[:middle]) | any_of(conditions[middle:])


def in_windows(time: Column, windows: Iterable[TimeWindow]) -> Column:
    """Whether `time` falls in one of the half-open `windows`."""
    return any_of([(time >= F.lit(w.start)) & (time < F.lit(w.end)) for w in windows])


def dedup(table: Table, df: DataFrame) -> DataFrame:
    """One row per change record and per image of a version no change record describes: exact
    re-deliveries (same key, version time and sequence) collapse, an image collapses into the
    change records of its version (key, version time, an upsert), and distinct change records
    all stay, even with equal times (updates that kept `updated_at`), whatever order they
    arrived in."""
    is_delete = (F.col(CHANGE_OP) == "D").alias("_is_delete")
    # Change records first, by sequence; an image (no sequence) last, kept only if alone.
    version = Window.partitionBy(*table.key, VERSION_AT, "_is_delete").orderBy(
        F.col(CHANGE_SEQ).desc_nulls_last()
    )
    first = F.row_number().over(version) == 1
    new_record = F.col(CHANGE_SEQ).isNotNull() & (
        F.col(CHANGE_SEQ) != F.lag(CHANGE_SEQ).over(version)
    )
    ranked = df.withColumn("_is_delete", is_delete).withColumn("_keep", first | new_record)
    return ranked.where(F.col("_keep")).drop("_keep", "_is_delete")


@dataclass(frozen=True)
class KeySummary:
    """Of a fact's rows: whether some key repeats, and the smallest and largest key."""

    repeated: bool
    low: tuple[object, ...]
    high: tuple[object, ...]


def key_summary(table: Table, df: DataFrame) -> KeySummary:
    """`df`'s `KeySummary`, in one query."""
    key = list(table.key)
    per_key = df.groupBy(*key).count()
    found = per_key.agg(
        F.max("count"), *(F.min(k) for k in key), *(F.max(k) for k in key)
    ).collect()[0]
    most, bounds = found[0], tuple(found[1:])
    return KeySummary((most or 0) > 1, bounds[: len(key)], bounds[len(key) :])


def rank_keys(
    table: Table,
    df: DataFrame,
    accepted: DataFrame | None = None,
    keys: KeySummary | None = None,
) -> DataFrame:
    """`_key_rank`: 1 for the row of each key silver keeps, 2, 3… for the repeats of the key (a
    source defect in a table of events, failing the key's uniqueness rule). A key silver already
    holds in other partitions (`accepted`) keeps that row; otherwise the earliest row wins,
    ties broken by value, so that every rebuild keeps the same one. The sort runs only where a
    key repeats or was accepted before, which small queries tell (`keys`: `df`'s summary, if
    known already)."""
    key = list(table.key)
    keys = keys or key_summary(table, df)
    seen = None
    if accepted is not None:
        # Only accepted rows within the range of `df`'s keys can match: a filter on literals,
        # which Delta's file statistics skip whole files by (a day's new facts against the
        # history of silver: most of its files hold older keys).
        candidates = accepted.select(*key)
        for k, low, high in zip(key, keys.low, keys.high, strict=True):
            candidates = candidates.where(F.col(k).between(F.lit(low), F.lit(high)))
        seen = candidates.join(df.select(*key), key, "left_semi")
    if not keys.repeated and (seen is None or seen.limit(1).count() == 0):
        return df.withColumn(KEY_RANK, F.lit(1))
    assert table.cdc_column is not None
    order = [F.col(table.cdc_column), *(F.col(c).asc_nulls_first() for c in table.column_names)]
    rank = F.row_number().over(Window.partitionBy(*key).orderBy(*order))
    if seen is None:
        return df.withColumn(KEY_RANK, rank)
    marks = seen.distinct().withColumn("_accepted", F.lit(1))
    ranked = df.join(marks, key, "left").withColumn(
        KEY_RANK, rank + F.coalesce(F.col("_accepted"), F.lit(0))
    )
    return ranked.drop("_accepted")


def _version_identity(table: Table) -> list[str]:
    return [*table.key, VERSION_AT]


def has_repeats(table: Table, df: DataFrame) -> bool:
    """Whether some (key, version) occurs twice, i.e. whether `dedup` can drop anything."""
    counts = df.groupBy(*_version_identity(table)).count()
    return counts.where(F.col("count") > 1).limit(1).count() > 0


def failing_groups(table: Table, df: DataFrame) -> DataFrame:
    """The rows of every (key, version) group holding a row that fails a rule: what dedup keeps
    of such a group is decided inside it, so it is the quarantine's whole input."""
    identity = _version_identity(table)
    failing = failing_rows(table, df).select(*identity).distinct()
    marks = failing.select(*[F.col(c).alias(f"_m__{c}") for c in identity])
    same = [F.col(c).eqNullSafe(F.col(f"_m__{c}")) for c in identity]
    return marks.join(df, same, "inner").select(*df.columns)


def failing_rows(table: Table, df: DataFrame) -> DataFrame:
    """The rows of `df` failing some rule."""
    return check(table, df).where(F.col(FAILED_RULES) != "")


def check(
    table: Table,
    df: DataFrame,
    accepted: DataFrame | None = None,
    keys: KeySummary | None = None,
) -> DataFrame:
    """`_failed_rules` of each row; a fact's rows are first ranked within their key (`keys`:
    their `KeySummary`, if known already)."""
    if table.role is TableRole.FACT and KEY_RANK not in df.columns:
        df = rank_keys(table, df, accepted, keys)
    return flag_failures(table.silver.rules, df)


def flag_failures(rules: tuple[Rule, ...], df: DataFrame) -> DataFrame:
    """`_failed_rules`: the names of the rules a row fails, comma-separated ('' = valid). A rule
    whose predicate is NULL for a row fails it."""
    failures = [
        F.when(~F.coalesce(F.expr(rule.predicate), F.lit(False)), F.lit(rule.name))
        for rule in rules
    ]
    return df.withColumn(FAILED_RULES, F.concat_ws(",", *failures) if failures else F.lit(""))


def split(table: Table, checked: DataFrame, run_id: str) -> SilverFrames:
    valid = checked.where(F.col(FAILED_RULES) == "").drop(FAILED_RULES)
    failed = checked.where(F.col(FAILED_RULES) != "")
    cleaned = {name for name, _ in table.silver.clean}

    def raw_value(column: CatalogColumn) -> Column:
        value = F.col(_raw(column.name) if column.name in cleaned else column.name)
        # Engines render timestamps differently in JSON (Sail adds a zone); fix the text.
        if column.type is ColumnType.TIMESTAMP:
            return F.date_format(value, "yyyy-MM-dd HH:mm:ss.SSSSSS").alias(column.name)
        return value.alias(column.name)

    # The raw text of values that fitted no type rides along ({column: text}; absent if none).
    untyped = F.from_json(F.col(UNTYPED), "map<string,string>").alias(UNTYPED)
    raw = F.to_json(F.struct(*[raw_value(c) for c in table.columns], untyped))
    quarantine = failed.select(
        *[F.col(k) for k in table.key],
        F.split(F.col(FAILED_RULES), ",").getItem(0).alias(RULE),
        F.col(FAILED_RULES),
        raw.alias(RAW),
        F.lit(run_id).alias(RUN_ID),
        *([F.col(CHANGE_DATE)] if table.change_time_column else []),
    )
    return SilverFrames(valid=valid.select(*silver_columns(table, valid)), quarantine=quarantine)


def silver_columns(table: Table, df: DataFrame) -> list[str]:
    """Declared, carried and derived columns, then the version columns, partition last."""
    audit = [CHANGE_OP, CHANGE_SEQ, VERSION_AT]
    if EFFECTIVE_AT in df.columns:  # a dimension's (`effective_times`)
        audit.append(EFFECTIVE_AT)
    bronze_only = _BRONZE_AUDIT | {CHANGE_DATE, KEY_RANK}
    data = [
        c
        for c in df.columns
        if c not in audit and c not in bronze_only and not c.startswith("_raw__")
    ]
    return [*data, *audit, *([CHANGE_DATE] if table.change_time_column else [])]


def rule_counts(table: Table, quarantine: DataFrame) -> dict[str, int]:
    """Failures per rule (a row failing two rules counts for both)."""
    rules = F.split(F.col(FAILED_RULES), ",")
    row = quarantine.agg(
        *[
            F.sum(F.array_contains(rules, r.name).cast("int")).alias(r.name)
            for r in table.silver.rules
        ]
    ).collect()[0]
    return {r.name: int(row[r.name] or 0) for r in table.silver.rules}
