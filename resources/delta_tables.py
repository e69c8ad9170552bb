"""Delta tables of the lake read with delta-rs, without Spark: their logs, file statistics per
partition (no data scanned), chunks of days, and small tables whole. Spark's writes are in
`delta_writes.py`.

Nothing here imports pyarrow's dataset module (and with it pandas, ~0.4 CPU s together): the
idle `run` reads Delta logs and nothing more.
"""

from __future__ import annotations

import posixpath
import re
from datetime import date
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable, QueryBuilder
from deltalake.exceptions import DeltaError, TableNotFoundError

from resources.lake import REPAIR_COMMAND, LakeFileError, LakeStorage
from spotify_assets.bronze.windows import Days, split_days
from spotify_assets.consistency.reconcile import ABSENT, PartitionStats

# Rows one query over a range of daily partitions reads at most (unless one day holds more;
# SPOTIFY_CHUNK_ROWS): the memory of a build then follows the chunk, not the history. At 15M
# rows (scale 3), gold's aggregates needed more than Sail's 1-GiB memory pool in hash tables
# that cannot spill.
CHUNK_ROWS = 2_000_000
CHUNK_SETTING = "SPOTIFY_CHUNK_ROWS"
_LOG = "_delta_log"
_LOG_ENTRY = re.compile(r"^(\d{20})\.(json|crc|checkpoint\.parquet)$")


def exists(lake: LakeStorage, path: str) -> bool:
    """Whether a Delta table is at `path`: its log holds an entry of some version (a commit, a
    checkpoint, or the checksum of a lost commit: a damaged table, for `check_log`). A log
    holding none (a write killed, or out of disk, during the table's first commit) holds
    nothing: the table was never created, and its next write creates it."""
    # Version 0's commit, there until a checkpoint's log cleanup, answers in one probe.
    return lake.fs.exists(f"{path}/{_LOG}/{0:020d}.json") or bool(_log_versions(lake, path)[2])


def log_gaps(lake: LakeStorage, path: str) -> list[int]:
    """Commits missing from a Delta table's log: every version after the latest checkpoint (or
    from 0) up to the newest commit or commit sidecar (`.crc`) must be there. A lost newest
    commit without its `.crc` leaves no trace here (the layers' row counts show it)."""
    commits, checkpoints, seen = _log_versions(lake, path)
    first = max(checkpoints, default=-1) + 1
    return [v for v in range(first, max(seen, default=-1) + 1) if v not in commits]


def _log_versions(lake: LakeStorage, path: str) -> tuple[set[int], set[int], set[int]]:
    """The versions of a table's log that have a commit, a checkpoint, and any entry at all
    (a commit's `.crc` included); all empty if it has no log. An empty commit file is no
    commit: delta-rs reads it as a version without actions, Spark fails on it."""
    try:
        entries = lake.fs.ls(f"{path}/{_LOG}", detail=True)
    except FileNotFoundError:
        return set(), set(), set()
    commits: set[int] = set()
    checkpoints: set[int] = set()
    seen: set[int] = set()
    for entry in entries:
        if match := _LOG_ENTRY.match(posixpath.basename(entry["name"].rstrip("/"))):
            version, kind = int(match.group(1)), match.group(2)
            seen.add(version)
            if kind == "json" and entry["size"]:
                commits.add(version)
            elif kind == "checkpoint.parquet":
                checkpoints.add(version)
    return commits, checkpoints, seen


def check_log(lake: LakeStorage, path: str) -> None:
    """`LakeFileError` naming the first missing (or empty) commit of a table's log, and the
    fix."""
    if gaps := log_gaps(lake, path):
        raise LakeFileError(
            f"{path}: Delta log commit {gaps[0]} ({_LOG}/{gaps[0]:020d}.json) is missing or "
            f"empty; run `{REPAIR_COMMAND}` to rebuild the table from the layer below"
        )


def delta_table(lake: LakeStorage, relative: str, version: int | None = None) -> DeltaTable:
    """delta-rs's view of a lake table (its log, versions and files), without Spark; a
    damaged log fails in one line naming the table."""
    check_log(lake, lake.path(relative))
    try:
        return DeltaTable(
            lake.uri(relative), version=version, storage_options=lake.delta_storage_options()
        )
    except TableNotFoundError:
        raise  # no table yet (no log, or one without commits): not a damaged log
    except DeltaError as error:
        reason = (str(error).splitlines() or ["?"])[0]
        raise _damaged(lake, relative, f"has an unreadable Delta log ({reason})") from error


def add_actions(table: DeltaTable) -> pa.Table:
    """The files of a table's current version with their statistics (`path`, `num_records`,
    `modification_time`, `partition.<column>`, ...), from its log. Taken over Arrow's stream
    interface: `pa.table()` would first ask whether it is a pandas frame, importing pandas."""
    return pa.RecordBatchReader.from_stream(table.get_add_actions(flatten=True)).read_all()


def read_delta(lake: LakeStorage, relative: str, columns: list[str] | None = None) -> pa.Table:
    """The rows of a (small) lake table, or of some of its `columns`, in the table's own types:
    read with delta-rs's query engine, so pyarrow's dataset module (which imports pandas) is not
    needed."""
    table = delta_table(lake, relative)
    schema = pa.schema(table.schema().to_arrow())
    if columns is not None:
        schema = pa.schema([schema.field(name) for name in columns])
    select = ", ".join(f'"{name}"' for name in schema.names)
    rows = QueryBuilder().register("t", table).execute(f"SELECT {select} FROM t")
    # The engine reads text as string views; the table's readers expect its declared types.
    return pa.RecordBatchReader.from_stream(rows).read_all().cast(schema)


def _damaged(lake: LakeStorage, relative: str, problem: str) -> LakeFileError:
    return LakeFileError(f"{lake.uri(relative)} {problem}; run `{REPAIR_COMMAND}`", problem)


def partition_rows(
    lake: LakeStorage, relative: str, partition: str | None, days: Days | None
) -> int:
    """Rows in the partitions `days` (None: all), from the log's file statistics: no scan."""
    actions = add_actions(delta_table(lake, relative))
    records = actions["num_records"]
    if partition and days is not None:
        day = actions[f"partition.{partition}"]
        inside = pc.and_(pc.greater_equal(day, days[0]), pc.less_equal(day, days[1]))
        records = records.filter(inside)
    return int(pc.sum(records).as_py() or 0)


def lost_files(lake: LakeStorage, relative: str) -> list[str]:
    """The data files of a table's current version that the lake no longer holds (removed by
    hand, or by a storage lifecycle rule: every read of the table fails), lake-relative; one
    listing of the table's folder."""
    held = lake.files_below(relative)
    listed = add_actions(delta_table(lake, relative))["path"].to_pylist()
    return sorted(
        p for p in (posixpath.join(relative, unquote(f)) for f in listed) if p not in held
    )


def day_chunks(
    lake: LakeStorage, relative: str, partition: str, days: Days, chunk_rows: int
) -> list[Days]:
    """`days` cut into ranges of about `chunk_rows` rows of the table at `relative`, counted
    from its log (no scan)."""
    per_day = partition_stats(lake, relative, partition)
    return split_days({day: stats.rows for day, stats in per_day.items()}, days, chunk_rows)


def partition_stats(lake: LakeStorage, relative: str, partition: str) -> dict[date, PartitionStats]:
    """Rows per daily partition and when its newest file was written, from the log's add
    actions (no scan); empty if no table yet."""
    if not exists(lake, lake.path(relative)):
        return {}
    actions = add_actions(delta_table(lake, relative))
    # Summed here, a file at a time, not with `group_by`: its engine, Acero, imports pyarrow's
    # dataset module and pandas (~0.4 CPU s of an idle `run`), for a few hundred files.
    stats: dict[date, PartitionStats] = {}
    for day, rows, written in zip(
        actions[f"partition.{partition}"].to_pylist(),
        actions["num_records"].to_pylist(),
        actions["modification_time"].to_pylist(),
        strict=True,
    ):
        held = stats.get(day, ABSENT)
        stats[day] = PartitionStats(held.rows + (rows or 0), max(written, held.written or written))
    return stats


def rows_per_day(
    lake: LakeStorage, relative: str, partition: str, days: Days | None
) -> dict[date, int]:
    """Rows of each daily partition in `days` (None: all) that holds any, from the log's add
    actions (no scan)."""
    return {
        day: stats.rows
        for day, stats in partition_stats(lake, relative, partition).items()
        if days is None or days[0] <= day <= days[1]
    }


def table_stats(lake: LakeStorage, relative: str) -> PartitionStats:
    """Rows of a whole table and when its newest file was written, from the log's add actions
    (no scan); `ABSENT` if no table yet."""
    if not exists(lake, lake.path(relative)):
        return ABSENT
    actions = add_actions(delta_table(lake, relative))
    rows = pc.sum(actions["num_records"]).as_py()
    return PartitionStats(int(rows or 0), pc.max(actions["modification_time"]).as_py())


def rows_and_nulls(lake: LakeStorage, relative: str, column: str) -> tuple[int, int] | None:
    """Rows of a table and NULLs in one of its columns, from the log's file statistics (no
    scan); None if some file carries no statistics for it."""
    actions = add_actions(delta_table(lake, relative))
    nulls = f"null_count.{column}"
    if nulls not in actions.column_names or actions[nulls].null_count:
        return None
    return int(pc.sum(actions["num_records"]).as_py() or 0), int(
        pc.sum(actions[nulls]).as_py() or 0
    )
