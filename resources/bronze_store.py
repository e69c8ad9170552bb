"""Bronze on the lake: immutable parquet files per partition, and a versioned manifest per table.

    bronze/<Table>/date=YYYY-MM-DD/<extraction>.parquet   (partitioned tables)
    bronze/<Table>/snapshot/<extraction>.parquet          (snapshot tables)
    bronze/<Table>/_manifests/v0000000042.json            (the whole state, one object per version)

A reader takes the highest manifest version and reads only the live rows it lists, so a partial
write is never visible and older extractions stay on the lake for audit.
"""

from __future__ import annotations

import functools
import posixpath
import re
from collections.abc import Sequence
from datetime import date

import pyarrow as pa
import pyarrow.compute as pc

from resources.lake import REPAIR_COMMAND, LakeFileError, LakeStorage
from spotify_assets.bronze.manifest import BronzeFile, Manifest
from spotify_assets.bronze.schema import bronze_schema
from spotify_assets.catalog.counts import counted
from spotify_assets.catalog.lake_paths import bronze_path
from spotify_assets.catalog.tables import Table
from spotify_assets.consistency.reconcile import ABSENT, PartitionStats

_VERSION = re.compile(r"^v(\d{10})\.json$")
DAMAGED = "damaged"  # where `verify --repair` sets damaged manifests aside, below _manifests


class BronzeStore:
    def __init__(self, lake: LakeStorage, table: Table) -> None:
        self.lake = lake
        self.table = table
        self.root = bronze_path(table.name)

    def current(self) -> Manifest:
        """The latest manifest version; `LakeFileError` naming it if it cannot be read."""
        version = self.latest_version()
        if version is None:
            return Manifest(table=self.table.name)
        path = self.manifest_path(version)
        try:
            return Manifest.from_json(self.lake.read_json(path))
        except (ValueError, KeyError, TypeError) as error:  # truncated or not a manifest
            problem = f"is damaged ({_first_line(error)})"
            raise LakeFileError(
                f"bronze {self.table.name}: manifest {self.lake.uri(path)} {problem}; run "
                f"`{REPAIR_COMMAND}`",
                problem,
            ) from error

    def latest_version(self) -> int | None:
        names = self.lake.list_names(self._manifests)
        return max((int(m.group(1)) for n in names if (m := _VERSION.match(n))), default=None)

    def set_aside_latest(self) -> str | None:
        """Move the latest manifest version into `_manifests/damaged/`: the previous version
        becomes current (its files are intact), and the next commit takes the freed number."""
        version = self.latest_version()
        if version is None:
            return None
        return self.lake.set_aside(self.manifest_path(version), DAMAGED)

    def damaged_files(self, files: Sequence[BronzeFile]) -> list[tuple[BronzeFile, str]]:
        """The `files` that are missing or do not hold the rows their manifest lists, each with
        what is wrong (read from the parquet footers only)."""
        found = []
        for file in files:
            try:
                rows = self.lake.parquet_rows(file.path)
            except (OSError, pa.ArrowException) as error:
                found.append((file, _problem(error)))
                continue
            if rows != file.rows:
                problem = f"holds {counted(rows, 'row')}, the manifest lists {file.rows:,}"
                found.append((file, problem))
        return found

    def as_written(self, files: Sequence[BronzeFile]) -> set[str]:
        """The paths of `files` whose size on the lake is the size recorded when they were
        written, from one listing per partition (no file opened): any other was replaced,
        damaged or lost since (or written before sizes were recorded)."""
        recorded = [f for f in files if f.bytes is not None]
        sizes = {
            posixpath.join(folder, name): size
            for folder in sorted({posixpath.dirname(f.path) for f in recorded})
            for name, size in self.lake.file_sizes(folder).items()
        }
        return {f.path for f in recorded if sizes.get(f.path) == f.bytes}

    def all_intact(self, files: Sequence[BronzeFile]) -> bool:
        """Whether none of `files` is missing or damaged: those still of the size written
        (`as_written`, one listing per partition) are not opened, the others are judged by
        their footers (`damaged_files`)."""
        sized = self.as_written(files)
        return not self.damaged_files([f for f in files if f.path not in sized])

    def commit(self, manifest: Manifest) -> None:
        """Publish the next version; fails if another writer published it first."""
        self.lake.create_json(self.manifest_path(manifest.version), manifest.to_json())

    def file_path(self, partition: date | None, extraction: str) -> str:
        folder = f"date={partition.isoformat()}" if partition else "snapshot"
        return f"{self.root}/{folder}/{extraction}.parquet"

    def read(
        self,
        partition: date | None,
        manifest: Manifest | None = None,
        intact_only: bool = False,
        columns: Sequence[str] | None = None,
    ) -> pa.Table:
        """The live rows of one partition (None: a snapshot table) of the current version, with
        only `columns` if given. A missing or damaged file fails in one line naming it, or with
        `intact_only` is left out (a re-extraction of the partition is about to supersede it)."""
        manifest = manifest or self.current()
        files = manifest.files_of(partition)
        if intact_only:
            damaged = {f.path for f, _ in self.damaged_files(files)}
            files = [f for f in files if f.path not in damaged]
        return self.read_files(files, columns)

    def read_all(self, manifest: Manifest | None = None) -> pa.Table:
        manifest = manifest or self.current()
        return self.read_files(manifest.files)

    def read_files(
        self, files: Sequence[BronzeFile], columns: Sequence[str] | None = None
    ) -> pa.Table:
        """The live rows of `files`, with only `columns` if given; a missing or damaged file
        fails in one line naming it."""
        parts = [self._live_rows(f, columns) for f in files]
        if parts:
            return _concat(parts)
        empty = self.empty()
        return empty.select(list(columns)) if columns else empty

    def partition_stats(
        self, manifest: Manifest | None = None
    ) -> dict[date | None, PartitionStats]:
        """Live rows per partition (None: a snapshot) and when its newest file was written: the
        manifest's counts; only files partly superseded by a newer extraction are read (their
        change time column), to count their live part."""
        manifest = manifest or self.current()
        stats: dict[date | None, PartitionStats] = {}
        for file in manifest.files:
            live = file.rows if file.fully_live else self._live_count(file)
            held = stats.get(file.partition, ABSENT)
            written = max((t for t in (held.written, file.written) if t is not None), default=None)
            stats[file.partition] = PartitionStats(held.rows + live, written)
        return stats

    def _live_count(self, file: BronzeFile) -> int:
        column = self.table.change_time_column
        assert column is not None
        time = self.lake.read_parquet([file.path], columns=[column])[column]
        return int(pc.sum(self._live(file, time)).as_py() or 0)

    def empty(self) -> pa.Table:
        return bronze_schema(self.table).empty_table()

    def _live_rows(self, file: BronzeFile, columns: Sequence[str] | None = None) -> pa.Table:
        time = self.table.change_time_column
        read = None if columns is None else list(dict.fromkeys([*columns, time or columns[0]]))
        try:
            rows = self.lake.read_parquet([file.path], columns=read)
        except (OSError, pa.ArrowException) as error:
            raise self.file_error(file, _problem(error)) from error
        if not file.fully_live:
            rows = rows.filter(self._live(file, rows[time]))
        return rows if columns is None else rows.select(list(columns))

    @staticmethod
    def _live(file: BronzeFile, time: pa.ChunkedArray) -> pa.ChunkedArray:
        """Which rows of a partly superseded file are live: change time in a live window."""
        return functools.reduce(pc.or_, [window.holds(time) for window in file.live])

    def file_error(self, file: BronzeFile, problem: str) -> LakeFileError:
        """A bronze file the manifest lists cannot be read: one line naming it and the fix."""
        where = f"partition {file.partition}" if file.partition else "snapshot"
        return LakeFileError(
            f"bronze {self.table.name}: {self.lake.uri(file.path)} ({where}) {problem}; run "
            f"`{REPAIR_COMMAND}` to re-extract it from the source"
        )

    @property
    def _manifests(self) -> str:
        return f"{self.root}/_manifests"

    def manifest_path(self, version: int) -> str:
        return f"{self._manifests}/v{version:010d}.json"


def _concat(parts: list[pa.Table]) -> pa.Table:
    # Older files lack the columns added since (new source columns, `_untyped`): NULL there.
    return pa.concat_tables(parts, promote_options="default")


def _problem(error: BaseException) -> str:
    if isinstance(error, FileNotFoundError):
        return "is missing"
    return f"is unreadable ({_first_line(error)})"


def _first_line(error: BaseException) -> str:
    return (str(error).splitlines() or [type(error).__name__])[0]
