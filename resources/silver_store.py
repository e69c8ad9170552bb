"""Silver on the lake: Delta tables `silver/<table>` and `silver/_quarantine/<table>`.

Silver partition P is a function of bronze partition P and replaces it (replaceWhere), so a
refresh cascades and a rerun changes nothing. What silver holds in the other partitions only
decides which row of a repeated fact key is kept, and after which change records a dimension's
version takes effect: records once captured, which a refresh of theirs gives back unchanged.

A fact's range of partitions is rebuilt a chunk of days at a time, in order, so one query's
memory follows its chunk: a key's earliest row wins whichever chunk holds it, since every chunk
sees the rows the chunks before it kept.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import date

import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from resources.bronze_store import BronzeStore
from resources.delta_tables import (
    CHUNK_ROWS,
    Days,
    exists,
    partition_rows,
    rows_per_day,
)
from resources.delta_writes import declare_not_null, replace_partitions
from resources.held import FEW_ROWS, held
from resources.lake import LakeStorage
from spotify_assets.bronze.manifest import BronzeFile
from spotify_assets.bronze.schema import bronze_schema
from spotify_assets.bronze.windows import split_days
from spotify_assets.catalog.lake_paths import quarantine_path, silver_path
from spotify_assets.catalog.tables import CaptureMode, Table, TableRole
from spotify_assets.silver.transform import (
    CHANGE_DATE,
    SilverFrames,
    in_windows,
    rule_counts,
    transform,
)

_SPARK_TYPES = {
    pa.int32(): "int",
    pa.int64(): "bigint",
    pa.string(): "string",
    pa.date32(): "date",
    pa.timestamp("us"): "timestamp_ntz",
}


@dataclass(frozen=True)
class SilverResult:
    table: str
    days: Days | None  # the partitions replaced; None: the whole (snapshot) table
    bronze_rows: int
    silver_rows: int
    quarantined: int
    failures: dict[str, int]  # per rule
    # Per partition replaced (a day missing holds none); empty for a snapshot table.
    rows_per_day: dict[date, int] = field(default_factory=dict)
    quarantined_per_day: dict[date, int] = field(default_factory=dict)


def spark_ddl(schema: pa.Schema) -> str:
    return ", ".join(f"`{f.name}` {_SPARK_TYPES[f.type]}" for f in schema)


class SilverStore:
    def __init__(
        self, lake: LakeStorage, spark: SparkSession, table: Table, chunk_rows: int = CHUNK_ROWS
    ) -> None:
        self.lake, self.spark, self.table = lake, spark, table
        self.chunk_rows = chunk_rows
        self.bronze = BronzeStore(lake, table)
        self.relative, self.quarantine_relative = silver_path(table), quarantine_path(table)
        self.path, self.quarantine_path = (
            lake.path(self.relative),
            lake.path(self.quarantine_relative),
        )

    def bronze_files(self, days: Days | None) -> list[BronzeFile]:
        """The bronze files of the partitions `days` (inclusive); None: all of them."""
        return [
            f
            for f in self.bronze.current().files
            if days is None or (f.partition is not None and days[0] <= f.partition <= days[1])
        ]

    def read_bronze(self, days: Days | None) -> DataFrame:
        """The live bronze rows of the partitions `days` (inclusive); None: all of them."""
        files = self.bronze_files(days)
        # Fully live files are read in one scan; superseded parts of the others are filtered out.
        whole = [self.lake.path(f.path) for f in files if f.fully_live]
        frames = [self.spark.read.parquet(*whole)] if whole else []
        frames += [self._live(f) for f in files if not f.fully_live]
        if not frames:
            return self.spark.createDataFrame([], spark_ddl(bronze_schema(self.table)))
        union = frames[0]
        for frame in frames[1:]:
            union = union.unionByName(frame, allowMissingColumns=True)
        return union

    def _live(self, file: BronzeFile) -> DataFrame:
        rows = self.spark.read.parquet(self.lake.path(file.path))
        return rows.where(in_windows(F.col(self.table.change_time_column), file.live))

    def refresh(self, days: Days | None, run_id: str) -> SilverResult:
        """Rebuild the silver partitions `days` (and their quarantine) from bronze."""
        for chunk in self.chunks(days):
            self._refresh(chunk, days, run_id)
        rows, per_day = self._counted(self.relative, days)
        quarantined, quarantined_per_day = self._counted(self.quarantine_relative, days)
        return SilverResult(
            table=self.table.lake_name,
            days=days,
            bronze_rows=self._bronze_rows(days),
            silver_rows=rows,
            quarantined=quarantined,
            failures=rule_counts(self.table, self._read(self.quarantine_path, days))
            if quarantined
            else {rule.name: 0 for rule in self.table.silver.rules},
            rows_per_day=per_day,
            quarantined_per_day=quarantined_per_day,
        )

    def _counted(self, relative: str, days: Days | None) -> tuple[int, dict[date, int]]:
        """Rows of the partitions `days` (None: all) of a table just written, in all and per
        day (none for a snapshot table), from its log (no scan)."""
        if self.table.change_time_column is None:
            return partition_rows(self.lake, relative, None, None), {}
        per_day = rows_per_day(self.lake, relative, CHANGE_DATE, days)
        return sum(per_day.values()), per_day

    def chunks(self, days: Days | None) -> list[Days | None]:
        """`days` cut into ranges of about `chunk_rows` bronze rows (counted from the manifest:
        no scan), for a fact; a dimension's versions take effect after change records in any
        of the partitions rebuilt (`effective_times`), so its range stays whole."""
        if days is None or self.table.role is not TableRole.FACT:
            return [days]
        per_day: Counter[date] = Counter()
        for file in self.bronze_files(days):
            per_day[file.partition] += file.rows  # type: ignore[index]
        return [*split_days(per_day, days, self.chunk_rows)]

    def _bronze_rows(self, days: Days | None) -> int:
        """The live bronze rows of the partitions `days` (None: all), as `read_bronze` reads
        them, counted from the manifest (no scan: a query re-reading every file of a chunk)."""
        return sum(
            stats.rows
            for day, stats in self.bronze.partition_stats().items()
            if days is None or (day is not None and days[0] <= day <= days[1])
        )

    def _refresh(self, chunk: Days | None, days: Days | None, run_id: str) -> None:
        """Replace the partitions `chunk` of `days`."""
        partition = CHANGE_DATE if self.table.change_time_column else None
        try:
            # Counted once for the choices below; it reads the partly superseded bronze files.
            bronze_rows = self._bronze_rows(chunk)
            bronze = self.read_bronze(chunk)
            if bronze_rows <= FEW_ROWS:
                # Read once: the analyses, repeat checks, the write and the quarantine's would
                # each open every file of the chunk again, one per day and table on a first load.
                bronze = held(bronze, FEW_ROWS)
            accepted = self._accepted(chunk, days)
            frames: SilverFrames = transform(self.table, bronze, run_id, accepted)
            # A valid row has its key (a rule); declared before the rows are gathered by day.
            valid = self._per_day(declare_not_null(frames.valid, self.path, self.table.key))
            replace_partitions(self.lake, valid, self.path, partition, chunk)
        except Exception as error:
            # A missing bronze file surfaces in Spark's words (when it plans or reads): name it.
            if damaged := self.bronze.damaged_files(self.bronze_files(chunk)):
                raise self.bronze.file_error(*damaged[0]) from error
            raise
        quarantine = frames.quarantine
        if self._all_valid(frames, chunk, bronze_rows):
            if (
                exists(self.lake, self.quarantine_path)
                and not self._counted(self.quarantine_relative, chunk)[0]
            ):
                return  # nothing held, nothing to add
            quarantine = quarantine.limit(0)  # creates the table, or empties the partitions
        # A quarantined row may lack its key (bronze copies any NULL the source holds).
        replace_partitions(
            self.lake, quarantine, self.quarantine_path, partition, chunk, self.table.key
        )

    def _per_day(self, valid: DataFrame) -> DataFrame:
        """A dimension's rows come out of its windows' hash buckets, each stream holding every
        day: gathered by day, they make one file per day instead of one per stream, and every
        later read of the whole dimension (the next rebuild's preceding versions, gold's
        versions of the changed keys, reconciliation) pays per file. A fact's rows come a
        bronze day at a time, already one file per day."""
        if self.table.role is TableRole.DIMENSION and self.table.change_time_column:
            return valid.repartition(F.col(CHANGE_DATE))
        return valid

    def _all_valid(self, frames: SilverFrames, chunk: Days | None, bronze_rows: int) -> bool:
        """Whether the quarantine gets no row of `chunk`, which writing it would take a second
        run of the whole transform to find: where no (key, version) repeats, when every one of
        its `bronze_rows` is a silver row (the manifest's and the log's counts, no scan); where a
        dimension's versions collapse, when no input row fails a rule (one small query)."""
        if frames.repeats:
            return frames.failing is not None and frames.failing.limit(1).count() == 0
        return self._counted(self.relative, chunk)[0] == bronze_rows

    def _accepted(self, chunk: Days | None, days: Days | None) -> DataFrame | None:
        """The rows silver holds outside the partitions being rebuilt (from `chunk` to the end
        of `days`: the chunks before it are rebuilt already): a fact's keys there are taken, a
        cdc dimension's change records there may precede the versions rebuilt."""
        table = self.table
        fact = table.role is TableRole.FACT
        changes = table.role is TableRole.DIMENSION and table.mode is CaptureMode.CDC
        if (
            not (fact or changes)
            or chunk is None
            or days is None
            or not exists(self.lake, self.path)
        ):
            return None
        rows = self.read().where(~F.col(CHANGE_DATE).between(F.lit(chunk[0]), F.lit(days[1])))
        # A dimension's history (a file per day), joined with the chunk's few keys, is read
        # through one stream as gold reads it (`GoldRunner.apply_dimension`); a fact's, large
        # and filtered on its keys' range, keeps its streams.
        return rows if fact else rows.coalesce(1)

    def _read(self, path: str, days: Days | None) -> DataFrame:
        rows = self.spark.read.format("delta").load(path)
        if days is None or self.table.change_time_column is None:
            return rows
        return rows.where(F.col(CHANGE_DATE).between(F.lit(days[0]), F.lit(days[1])))

    def read(self) -> DataFrame:
        return self.spark.read.format("delta").load(self.path)

    def read_quarantine(self) -> DataFrame:
        return self.spark.read.format("delta").load(self.quarantine_path)
