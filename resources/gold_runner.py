"""The local gold runner: the catalog's gold specs applied on Sail with Delta overwrites and
replaceWhere, as Databricks applies the same specs in the pipeline of `dlt/`.

    gold/dim_*         SCD2, unpartitioned. Each apply reads which silver files changed since the
                       silver version it last applied (delta-rs log), recomputes the versions of
                       just those keys, and commits the table with those keys' rows replaced:
                       the computing follows the changed keys (see `_replace_keys` for the write).
                       State: gold/_state/<table>/vNNNNNNNNNN.json, written after the commit.
    gold/dim_date      the calendar, replaced whole.
    gold/fact_stream   partition P from silver partition P and the SCD2 dimensions; before it,
                       gold/_unmatched/fact_stream partition P: the dimension keys of P's facts
                       that no dimension row has yet, for reconciliation to rebuild P when they
                       arrive (written first: if the fact's commit is lost, P stays stale).
                       The dimensions' periods are computed once per build into
                       gold/_periods/<dim> for its chunks to read, and removed after it.
    gold/agg_daily_*   partition P from gold/fact_stream partition P.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import date

import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from resources.delta_tables import (
    CHUNK_ROWS,
    Days,
    check_log,
    day_chunks,
    delta_table,
    exists,
    partition_rows,
    rows_and_nulls,
    rows_per_day,
)
from resources.delta_writes import replace_partitions
from resources.gold_state import applied_version, unmatched_records
from resources.held import FEW_ROWS, LOCAL_ROWS, held
from resources.lake import LakeStorage
from spotify_assets.catalog.gold_spec import (
    END_AT,
    UNMATCHED_DIMENSION,
    UNMATCHED_FACTS,
    UNMATCHED_KEY,
    Aggregate,
    Calendar,
    PointInTimeFact,
)
from spotify_assets.catalog.lake_paths import (
    gold_path,
    gold_state_path,
    periods_path,
    silver_path,
    unmatched_path,
)
from spotify_assets.catalog.tables import CHANGE_DATE, Catalog, Table
from spotify_assets.gold.transform import (
    SCD2_INVARIANTS,
    Expected,
    aggregate,
    calendar,
    expect,
    live_keys,
    lookup_periods,
    point_in_time,
    scd2,
    scd2_problems,
    unmatched,
)


@dataclass(frozen=True)
class DimensionApply:
    table: str
    silver_version: int  # the silver table version gold now reflects
    full: bool  # rebuilt from every silver version (first apply, or the log cannot tell)
    changed_keys: int  # keys whose versions were recomputed
    versions_read: int  # silver versions of those keys
    rows: int  # gold rows in all
    current: int  # rows with __END_AT NULL
    failures: dict[str, int]  # versions dropped per expectation
    problems: dict[str, int]  # SCD2 invariants broken by the rows written: all zero (rows
    # breaking one are never written: `Scd2InvariantError`)


class Scd2InvariantError(RuntimeError):
    """Computed SCD2 rows break an invariant: a defect, so they are not written."""


@dataclass(frozen=True)
class PartitionBuild:
    table: str
    days: Days | None  # None: the whole (unpartitioned) table
    rows: int  # rows in those partitions now
    failures: dict[str, int]  # rows dropped per expectation
    rows_per_day: dict[date, int] = field(default_factory=dict)  # of those partitions holding any
    # The fact: rows whose dimension member has not arrived yet, per dimension, in the table.
    unmatched: dict[str, int] | None = None
    # The fact: per reference (the calendar), the keys it lacks and the rows holding each.
    unreferenced: dict[str, dict[str, int]] | None = None


class GoldRunner:
    def __init__(
        self,
        lake: LakeStorage,
        spark: SparkSession,
        catalog: Catalog,
        chunk_rows: int = CHUNK_ROWS,
    ) -> None:
        self.lake, self.spark, self.catalog = lake, spark, catalog
        self.chunk_rows = chunk_rows

    # --- SCD2 dimensions ---

    def apply_dimension(self, table: Table, full: bool = False) -> DimensionApply:
        """Bring gold/<dim> up to the current silver version of the table."""
        silver = silver_path(table)
        version = delta_table(self.lake, silver).version()
        applied = self.applied_version(table)
        target = self._path(table.lake_name)
        all_versions = self._read(silver, version)
        keys = list(table.key)
        changed_keys = versions_read = 0
        failures: dict[str, int] = {}
        problems = dict.fromkeys(SCD2_INVARIANTS, 0)
        if full or applied != version or not exists(self.lake, target):
            changed = (
                None if full or applied is None else self._changed_keys(table, applied, version)
            )
            full = changed is None or not exists(self.lake, target)
            if full:
                versions = all_versions
                if partition_rows(self.lake, silver, None, None) <= FEW_ROWS:
                    # Read once: silver's daily files would be opened again by each query below.
                    versions = held(versions, FEW_ROWS)
            else:
                assert changed is not None
                # Checked, written and counted below, the changed keys' versions and their SCD2
                # rows would each time be computed again, from every silver version: computed
                # once, held.
                changed = held(changed, LOCAL_ROWS)
                # Silver's history (a file per day) read through one stream: Sail's semi-join
                # with the few changed keys then costs ~20% less CPU (measured, scale 1).
                history = all_versions.coalesce(1)
                versions = held(history.join(changed, keys, "left_semi"), LOCAL_ROWS)
            expected = expect(table.gold.expectations, versions)  # type: ignore[union-attr]
            rows = scd2(table, expected.kept)
            if versions is not all_versions:  # held, or a few keys': so are their rows
                rows = held(rows, LOCAL_ROWS)
            # The rows of the keys this apply writes are checked before they are written: a
            # table breaking an invariant is never committed (the others' rows passed before).
            problems = scd2_problems(table, rows, live_keys(table, expected.kept))
            if any(problems.values()):
                broken = ", ".join(f"{name}: {n}" for name, n in problems.items() if n)
                raise Scd2InvariantError(
                    f"{gold_path(table.lake_name)}: the new versions break SCD2 invariants "
                    f"({broken}); nothing was written: report this with the source's change "
                    "records of the keys changed since the last run"
                )
            if full:
                replace_partitions(self.lake, rows, target, None, None)
            else:
                self._replace_keys(table, rows, changed)  # type: ignore[arg-type]
            self._commit(table, version)
            # What was read and what the expectations dropped in one query, not two: each
            # query has its fixed cost (planning, a round trip).
            read = versions.agg(
                F.count(F.lit(1)).alias("_versions"), F.count_distinct(*keys).alias("_keys")
            )
            failed = expected.failures
            counted = _counts(read if failed is None else read.crossJoin(failed))
            changed_keys, versions_read = counted.pop("_keys"), counted.pop("_versions")
            failures = counted

        gold = self._read(gold_path(table.lake_name))
        counted = rows_and_nulls(self.lake, gold_path(table.lake_name), END_AT)
        rows, current = counted or (gold.count(), gold.where(F.col(END_AT).isNull()).count())
        return DimensionApply(
            table=table.lake_name,
            silver_version=version,
            full=full,
            changed_keys=changed_keys,
            versions_read=versions_read,
            rows=rows,
            current=current,
            failures=failures,
            problems=problems,
        )

    def _changed_keys(self, table: Table, applied: int, version: int) -> DataFrame | None:
        """Keys of the silver rows added or removed since version `applied`; None if the log
        cannot tell (the old files were vacuumed)."""
        silver = silver_path(table)
        before = set(delta_table(self.lake, silver, applied).file_uris())
        now = set(delta_table(self.lake, silver, version).file_uris())
        touched = sorted(before ^ now)
        if not all(self.lake.fs.exists(p) for p in before - now):
            return None
        keys = list(table.key)
        if not touched:
            return self.spark.createDataFrame([], self._read(silver, version).select(*keys).schema)
        return self.spark.read.parquet(*touched).select(*keys).distinct()

    def _replace_keys(self, table: Table, rows: DataFrame, changed: DataFrame) -> None:
        """Make gold's rows of the `changed` keys exactly `rows`, in one atomic commit.

        Delta rewrites every file holding a changed key whatever the statement (copy-on-write),
        and changes spread over the keys touch nearly every file; Sail's MERGE INTO does that
        work several times slower than writing the table's other keys back with `rows`. One
        writer per dimension at a time is what makes the overwrite safe: runs that write the
        lake are queued one at a time (`ingest.WRITER_TAG`)."""
        keys = list(table.key)
        target = self._path(table.lake_name)
        unchanged = self.spark.read.format("delta").load(target).join(changed, keys, "left_anti")
        replace_partitions(self.lake, unchanged.unionByName(rows), target, None, None)

    def applied_version(self, table: Table) -> int | None:
        return applied_version(self.lake, table)

    def _commit(self, table: Table, version: int) -> None:
        names = [n for n in self.lake.list_names(gold_state_path(table)) if n.endswith(".json")]
        number = len(names) + 1
        self.lake.create_json(
            f"{gold_state_path(table)}/v{number:010d}.json", {"silver_version": version}
        )

    # --- calendar, fact, aggregates ---

    def build_calendar(self, table: Table) -> PartitionBuild:
        assert isinstance(table.gold, Calendar)
        expected = expect(table.gold.expectations, calendar(self._read(silver_path(table))))
        replace_partitions(self.lake, expected.kept, self._path(table.lake_name), None, None)
        return PartitionBuild(
            table=table.lake_name,
            days=None,
            rows=partition_rows(self.lake, gold_path(table.lake_name), None, None),
            failures=_counts(expected.failures),
        )

    def build_fact(self, days: Days) -> PartitionBuild:
        fact = self.catalog.fact
        spec = fact.gold
        assert isinstance(spec, PointInTimeFact)
        dimensions = {}
        for dimension in [x.dimension for x in (*spec.lookups, *spec.references)]:
            name = self.catalog[dimension].lake_name
            if not exists(self.lake, self._path(name)):
                raise RuntimeError(f"{gold_path(name)} does not exist yet: materialize it first")
            dimensions[dimension] = self._read(gold_path(name))
        looked_up = {x.dimension: dimensions[x.dimension] for x in spec.lookups}

        unmatched_table = self.lake.path(unmatched_path(fact))
        source = silver_path(fact)
        with self._prepared(lookup_periods(self.catalog, looked_up)) as periods:

            def build(silver: DataFrame, chunk: Days) -> tuple[DataFrame, Expected]:
                expected = expect(spec.expectations, silver)
                missing = unmatched(self.catalog, expected.kept, periods, dimensions)
                replace_partitions(self.lake, missing, unmatched_table, spec.date_column, chunk)
                return point_in_time(self.catalog, expected.kept, periods), expected

            built = self._replace(
                fact.lake_name, spec.date_column, days, source, CHANGE_DATE, build
            )
        records = unmatched_records(self.lake, self.catalog)
        assert records is not None  # written with the fact
        counts = {
            lookup.dimension: _sum(records, UNMATCHED_DIMENSION, lookup.dimension, UNMATCHED_FACTS)
            for lookup in spec.lookups
        }
        lacked = {
            reference.dimension: _rows_per_key(records, reference.dimension)
            for reference in spec.references
        }
        return replace(built, unmatched=counts, unreferenced=lacked)

    @contextmanager
    def _prepared(self, periods: Mapping[str, DataFrame]) -> Iterator[dict[str, DataFrame]]:
        """`periods` (by dimension) computed once into Delta tables under gold/_periods, read by
        every chunk of a build, then removed: a chunk's query would compute them again, a window
        over every version of the dimension (~0.5 µs a version per chunk, most of a chunk's
        cost at scale 10). Delta, not bare parquet: an empty dimension (emptied outside any run)
        writes no file, and its table still has the columns. The folders are fixed, as one
        writer at a time holds the lake (`resources/lease.py`); what a killed build left there
        is removed first."""
        relatives = {name: periods_path(self.catalog[name]) for name in periods}
        try:
            for name, rows in periods.items():
                self.lake.remove_tree(relatives[name])
                rows.write.format("delta").save(self.lake.path(relatives[name]))
            yield {name: self._read(relative) for name, relative in relatives.items()}
        finally:
            for relative in relatives.values():
                self.lake.remove_tree(relative)

    def build_aggregate(self, spec: Aggregate, days: Days) -> PartitionBuild:
        fact = self.catalog.fact
        date_column = fact.gold.date_column  # type: ignore[union-attr]

        def build(facts: DataFrame, chunk: Days) -> tuple[DataFrame, Expected]:
            expected = expect(spec.expectations, aggregate(spec, facts))
            return expected.kept, expected

        source = gold_path(fact.lake_name)
        return self._replace(spec.name, date_column, days, source, date_column, build)

    def _replace(
        self,
        name: str,
        partition: str,
        days: Days,
        source: str,
        source_partition: str,
        build: Callable[[DataFrame, Days], tuple[DataFrame, Expected]],
    ) -> PartitionBuild:
        """Replace the partitions `days` of gold/<name> with `build` of the same partitions of
        `source` (and the chunk of days they are), a chunk of days at a time: partition P
        depends only on partition P, and one query's memory follows its chunk. Written as one
        stream: Sail writes a file per day from each of a query's streams, and an aggregation
        or a join hashed on a key (a dimension past ~45k periods) spreads every day over all
        of them: a file per day per core, which the write and every later reader pay for."""
        failures: Counter[str] = Counter()
        for chunk in day_chunks(self.lake, source, source_partition, days, self.chunk_rows):
            inside = F.col(source_partition).between(F.lit(chunk[0]), F.lit(chunk[1]))
            rows, expected = build(self._read(source).where(inside), chunk)
            replace_partitions(self.lake, rows.coalesce(1), self._path(name), partition, chunk)
            failures.update(_counts(expected.failures))
        per_day = rows_per_day(self.lake, gold_path(name), partition, days)
        return PartitionBuild(
            table=name,
            days=days,
            rows=sum(per_day.values()),
            failures=dict(failures),
            rows_per_day=per_day,
        )

    # --- reading ---

    def _path(self, name: str) -> str:
        return self.lake.path(gold_path(name))

    def _read(self, relative: str, version: int | None = None) -> DataFrame:
        check_log(self.lake, self.lake.path(relative))  # a damaged log, in one line
        reader = self.spark.read.format("delta")
        if version is not None:
            reader = reader.option("versionAsOf", version)
        return reader.load(self.lake.path(relative))

    def read(self, name: str) -> DataFrame:
        """A gold table by name (`dim_user`, `fact_stream`, `agg_daily_track`, ...)."""
        return self._read(gold_path(name))


def _sum(table: pa.Table, where: str, equals: str, column: str) -> int:
    """The sum of `column` over the rows of `table` whose `where` is `equals`."""
    rows = table.filter(pc.equal(table[where], equals))
    return int(pc.sum(rows[column]).as_py() or 0)


def _rows_per_key(records: pa.Table, dimension: str) -> dict[str, int]:
    """Of `unmatched_records`, the keys `dimension` lacks and the fact rows holding each."""
    rows = records.filter(pc.equal(records[UNMATCHED_DIMENSION], dimension))
    per_key = rows.group_by(UNMATCHED_KEY).aggregate([(UNMATCHED_FACTS, "sum")])
    keys, facts = per_key[UNMATCHED_KEY].to_pylist(), per_key[f"{UNMATCHED_FACTS}_sum"]
    return dict(sorted(zip(keys, facts.to_pylist(), strict=True)))


def _counts(counts: DataFrame | None) -> dict[str, int]:
    """The one row of a query of counts, by column (None: no counts)."""
    row = counts.collect()[0].asDict() if counts is not None else {}
    return {name: int(value or 0) for name, value in row.items()}
