"""The copy activity of the embedded default: the local implementation of the ADF copy contract.

For one table and a requested window it
1. captures `high` — the source's clock minus the safety lag — *before* reading anything;
2. runs the bounded query `[start, min(end, high))` in chunks, streaming Arrow batches;
3. writes immutable parquet files per partition with the audit columns;
4. commits the next manifest version, which makes the files visible and advances the watermark
   in one atomic step. A crash before 4 leaves the previous version: files written so far are
   invisible, and the next run re-extracts the window.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyodbc
from pydantic import BaseModel, Field

from resources.bronze_store import BronzeStore
from resources.delta_tables import CHUNK_ROWS
from resources.lake import LakeStorage
from resources.odbc import SourceUnavailableError
from resources.source_db import SourceDatabase
from resources.source_reader import ReaderKind, read_arrow, read_as_text
from spotify_assets.bronze.dialects import DIALECTS, Dialect
from spotify_assets.bronze.manifest import BronzeFile, Manifest
from spotify_assets.bronze.profile import file_profile
from spotify_assets.bronze.schema import (
    EXTRACTED_AT,
    RUN_ID,
    WINDOW_END,
    WINDOW_START,
    bronze_schema,
)
from spotify_assets.bronze.windows import Window, as_date, midnight, split_window
from spotify_assets.catalog.counts import counted
from spotify_assets.catalog.tables import CHANGE_AT, CHANGE_OP, CHANGE_SEQ, CaptureMode, Table
from spotify_assets.source.schema import (
    SourceColumns,
    all_typed,
    compare_columns,
    text_schema,
    text_values,
    type_values,
)

_EPOCH = date(1970, 1, 1)


class RowsBeforePartitionStart(ValueError):
    """The source holds rows older than the first partition: they would have no partition."""

    def __init__(self, table: Table, oldest: datetime) -> None:
        super().__init__(
            f"{table.name}: the source holds rows from {oldest.isoformat(sep=' ')}, before the "
            f"partition start {table.first_partition} (SPOTIFY_PARTITION_START): set it to "
            f"{oldest.date()} or earlier"
        )


class ChangeTimeNotATime(ValueError):
    """A change time the source holds is not a time without a zone (SQLite keeps any text): no
    partition can hold its row; with a zone offset, windows, which compare SQLite's text, could
    place it on another day than its UTC one."""

    def __init__(self, table: Table, value: object) -> None:
        columns = dict.fromkeys(c for c in (table.cdc_column, table.change_time_column) if c)
        held = f"{table.name}: the source holds {str(value)!r} in {' or '.join(columns)}"
        if _zoned(value):
            super().__init__(
                f"{held}, a time with a zone offset, which windows compare by its text (its row "
                "could be loaded into another day): store it in UTC without an offset"
            )
        elif _number(value) and table.cdc_column:
            # A tool's unix time (SQLite keeps any type in any column).
            column = table.cdc_column
            super().__init__(
                f"{held}, a number, not a time: if it counts seconds since 1970, store it as "
                f"UTC text (UPDATE {table.name} SET {column} = datetime({column}, 'unixepoch') "
                f"WHERE typeof({column}) <> 'text')"
            )
        else:
            super().__init__(
                f"{held}, which is not a time, so its row has no partition: correct or delete "
                "that row in the source"
            )


class RowsWithoutChangeTime(ValueError):
    """The source holds rows (cdc: change records) whose change time is NULL: no window reads
    them and no partition could hold them."""

    def __init__(self, table: Table, rows: int, lowest_key: object) -> None:
        time = table.change_time_column
        (key,) = table.key
        held = "the source" if table.mode is CaptureMode.WATERMARK else table.change_table
        others = " and others" if rows > 1 else ""
        super().__init__(
            f"{table.name}: {held} holds {counted(rows, 'row')} without a {time} "
            f"({key} {lowest_key}{others}), which no partition can hold: set their {time} or "
            "delete them in the source"
        )


class ChangeRecordsWithoutOperation(ValueError):
    """A change table without its constraint holds records that are no insert, update or
    delete: what they did to their row is unknown."""

    def __init__(self, table: Table, records: pa.Table) -> None:
        (key,) = table.key
        first = records.slice(0, 1).to_pylist()[0]
        super().__init__(
            f"{table.name}: {table.change_table} holds change records whose {CHANGE_OP} is not "
            f"I, U or D ({key} {first[key]}: {first[CHANGE_OP]!r}): correct or delete them in "
            "the source"
        )


def moment_text(moment: datetime | None) -> str:
    """A time as metadata and `run`'s output show it ("none": no time)."""
    return moment.isoformat(sep=" ") if moment else "none"


# What a load reports of the rows it could not take yet (metadata names, `run`'s output).
NOT_LOADED_YET_ROWS = "not_loaded_yet_rows"
NOT_LOADED_YET_OLDEST = "not_loaded_yet_oldest"


@dataclass(frozen=True)
class Waiting:
    """Source rows an incremental load could not take yet: count and oldest change time."""

    rows: int
    oldest: datetime | None

    @property
    def oldest_text(self) -> str:
        return moment_text(self.oldest)

    def report(self) -> dict[str, int | str]:
        return {NOT_LOADED_YET_ROWS: self.rows, NOT_LOADED_YET_OLDEST: self.oldest_text}

    def describe(self) -> str:
        return (
            f"{counted(self.rows, 'source row')} not loaded yet, the oldest at {self.oldest_text}: "
            "they are ahead of the source's clock bound or after today (UTC), the last "
            "partition; a later run loads them once their day has begun"
        )


@dataclass(frozen=True)
class CopyResult:
    table: str
    window: Window | None  # None: a whole-table snapshot
    high: datetime
    query: str
    rows_read: int = 0
    files: tuple[BronzeFile, ...] = ()
    watermark_before: datetime | None = None
    watermark_after: datetime | None = None
    manifest_version: int = 0
    seconds: float = 0.0
    partitions: tuple[date, ...] = field(default=())

    @property
    def rows_written(self) -> int:
        return sum(f.rows for f in self.files)

    @property
    def committed(self) -> bool:
        return self.manifest_version > 0


@dataclass(frozen=True)
class PlannedCopy:
    """What a copy settles before it reads (step 1, the window and query of step 2)."""

    table: Table
    window: Window | None  # None: a whole-table snapshot; never an empty window
    high: datetime
    manifest: Manifest  # the version the copy extends
    carried: tuple[str, ...]  # new source columns copied as text
    query: str
    run_id: str
    started: float  # `time.perf_counter()` when the copy started


class CopyRunner(BaseModel, ABC):
    """Copies source windows into bronze. Planning and the commit (step 4) are the same in every
    environment; how the window's rows are read and written is each runner's own. A plain object:
    planning runs (and the idle `run`'s decision) needs no Dagster; the Dagster resources are
    `LocalCopyResource` and `AzureCopyRunner`."""

    source: SourceDatabase
    lake: LakeStorage
    safety_lag_seconds: float = Field(
        description="Hold `high` back this long behind the server's clock: covers transactions "
        "stamped before they commit and CDC capture latency. A simulated source clock is "
        "committed with the changes it stamps, so it needs none.",
    )

    def store(self, table: Table) -> BronzeStore:
        return BronzeStore(self.lake, table)

    def high(self) -> datetime:
        """The upper bound of what may be read now, captured before any read (rule 1)."""
        sql = DIALECTS[self.source.dialect]
        with self.source.connect() as conn:
            ((simulated, server),) = self.source.session_on(conn).query(sql.source_now())
        if simulated is not None:
            return _as_datetime(simulated)
        return _as_datetime(server) - timedelta(seconds=self.safety_lag_seconds)

    def plan(
        self,
        table: Table,
        requested: Window | None,
        from_watermark: bool = False,
        reextract_from: date | None = None,
    ) -> tuple[Window | None, datetime, Manifest]:
        """The window to copy: the request, bounded by `high`.

        `from_watermark` (incremental) starts where the last load ended, or at the partition
        start on a first load, and runs to the end of the request: loads stay contiguous; with
        `reextract_from`, it starts at that day if earlier (loaded days re-extracted whole, for
        late rows). A source holding rows older than the partition start fails here, before any
        copy.
        """
        manifest = self.store(table).current()
        high = self.high()
        if table.mode is CaptureMode.SNAPSHOT:
            return None, high, manifest
        self.first_change(table)
        requested = requested or Window(self.history_start(table), high)
        start = requested.start
        if from_watermark:
            start = manifest.watermark or self.history_start(table)
            if reextract_from is not None:
                start = min(start, midnight(reextract_from))
        end = min(requested.end, high)
        return Window(start, max(start, end)), high, manifest

    def first_change(self, table: Table) -> datetime | None:
        """The oldest change time in the source (None: nothing to load); one older than the
        partition start, or none at all, is an error: such a row has no partition, and is never
        re-dated."""
        sql = DIALECTS[self.source.dialect]
        timeless = sql.timeless_query(table)
        with self.source.connect() as conn:
            session = self.source.session_on(conn)
            try:
                counted = session.query(timeless) if timeless else [(0, None)]
                value = session.scalar(sql.first_change_query(table))
            except pyodbc.Error:
                # The first query of a table in a run: a missing table or column is named in
                # one line, not in the driver's words.
                self.source_columns(table)
                raise
        ((rows, lowest_key),) = counted
        if rows:
            raise RowsWithoutChangeTime(table, rows, lowest_key)
        oldest = None if value is None else _change_time(table, value)
        if oldest is not None and oldest < self.history_start(table):
            raise RowsBeforePartitionStart(table, oldest)
        return oldest

    def first_change_day(self, table: Table) -> date | None:
        """The UTC day of the oldest change time in the source (None: nothing to load)."""
        oldest = self.first_change(table)
        return None if oldest is None else oldest.date()

    def load_bound(self) -> datetime:
        """Where an incremental load's window ends now: the source's clock bound (`high`), or
        the end of today (UTC), the last partition, if earlier."""
        return min(self.high(), midnight(datetime.now(UTC).date() + timedelta(days=1)))

    def not_loaded_yet(self, table: Table, bound: datetime) -> Waiting:
        """The source's rows at or after `bound`: past the source's clock or the last partition
        (today, UTC), they wait for a later load."""
        sql = DIALECTS[self.source.dialect]
        with self.source.connect() as conn:
            ((rows, oldest),) = self.source.session_on(conn).query(sql.pending_query(table, bound))
        return Waiting(int(rows or 0), None if oldest is None else _change_time(table, oldest))

    def history_start(self, table: Table) -> datetime:
        return midnight(table.first_partition)

    def copy(
        self,
        table: Table,
        requested: Window | None,
        run_id: str,
        from_watermark: bool = False,
        log: Callable[[str], None] = lambda message: None,
        reextract_from: date | None = None,
    ) -> CopyResult:
        """Copy the planned window of `requested`; an empty one copies nothing and keeps the
        watermark."""
        started = time.perf_counter()
        window, high, manifest = self.plan(table, requested, from_watermark, reextract_from)
        carried = self.source_columns(table, log).carried
        if carried:
            log(f"{table.name}: new source column(s) {', '.join(carried)} carried as text")
        query = DIALECTS[self.source.dialect].extract_query(table, window, carried)
        if window is not None and window.empty:
            log(f"{table.name}: nothing to copy up to {high} (watermark {manifest.watermark})")
            return nothing_copied(table, window, high, query, manifest)
        planned = PlannedCopy(table, window, high, manifest, carried, query, run_id, started)
        return self.copy_planned(planned, log)

    @abstractmethod
    def copy_planned(self, planned: PlannedCopy, log: Callable[[str], None]) -> CopyResult:
        """Steps 2 to 4 of a planned copy."""

    def commit_files(
        self,
        table: Table,
        manifest: Manifest,
        window: Window | None,
        files: list[BronzeFile],
        extraction: str,
        run_id: str,
        high: datetime,
        query: str,
        rows_read: int,
        started: float,
    ) -> CopyResult:
        """Step 4: carry past cdc images, then publish the next manifest version."""
        files = files + self._carry_past_images(table, manifest, window, files, extraction, run_id)
        next_manifest = manifest.with_extraction(window, files, self.history_start(table))
        self.store(table).commit(next_manifest)
        return CopyResult(
            table=table.name,
            window=window,
            high=high,
            query=query,
            rows_read=rows_read,
            files=tuple(files),
            watermark_before=manifest.watermark,
            watermark_after=next_manifest.watermark,
            manifest_version=next_manifest.version,
            seconds=time.perf_counter() - started,
            partitions=tuple(sorted({f.partition for f in files if f.partition})),
        )

    def _carry_past_images(
        self,
        table: Table,
        manifest: Manifest,
        window: Window | None,
        new_files: list[BronzeFile],
        extraction: str,
        run_id: str,
    ) -> list[BronzeFile]:
        """Keep the images a re-extraction of cdc rows no longer sees: never lose a version.

        An image the source no longer shows in the window is a past version of a row that has
        changed since (or been deleted), and no change record may describe it (rows loaded before
        capture, pruned records). Superseding it would erase that version, so it is carried into
        the new extraction, keeping its original audit columns.
        """
        if table.mode is not CaptureMode.CDC or window is None:
            return []
        assert table.cdc_column is not None
        version = [*table.key, table.cdc_column]
        store = self.store(table)
        touched = {f.partition for f in manifest.files if any(w.intersect(window) for w in f.live)}
        carried = []
        for partition in sorted(p for p in touched if p is not None):
            part = window.intersect(Window.of_days(partition, partition))
            assert part is not None
            # A damaged file cannot be carried: its past images are lost with it, and this
            # re-extraction (the repair of that damage) must still go through.
            old = store.read(partition, manifest, intact_only=True)
            old = old.filter(pc.and_(pc.equal(old[CHANGE_OP], "S"), part.holds(old[CHANGE_AT])))
            if old.num_rows == 0:
                continue
            new = [f.path for f in new_files if f.partition == partition]
            seen = self.lake.read_parquet(new, columns=version) if new else old.select(version)[:0]
            past = old.join(seen, keys=version, join_type="left anti")
            past = past.select(old.column_names).cast(old.schema)
            if past.num_rows:
                carried.append(
                    self._write(table, partition, past, window, f"{extraction}-past", run_id)
                )
        return carried

    def source_columns(
        self, table: Table, log: Callable[[str], None] = lambda message: None
    ) -> SourceColumns:
        """The source's columns of `table` checked against the catalog (and, in cdc mode, its
        change capture): before every extraction, one catalog query each."""
        sql = DIALECTS[self.source.dialect]
        with self.source.connect() as conn:
            session = self.source.session_on(conn)
            found = session.columns_of(table)
            captured = None
            if table.mode is CaptureMode.CDC:
                captured = [name for (name,) in session.query(sql.captured_columns_query(table))]
        columns = compare_columns(table, found, captured, sql.exact_case_engine)
        if columns.ignored:
            log(
                f"{table.name}: new source column(s) {', '.join(columns.ignored)} not copied "
                f"(drift policy {table.silver.new_columns}, or not in the change capture)"
            )
        return columns

    def _write(
        self,
        table: Table,
        partition: date | None,
        rows: pa.Table,
        window: Window | None,
        extraction: str,
        run_id: str,
    ) -> BronzeFile:
        path = self.store(table).file_path(partition, extraction)
        size = self.lake.write_parquet(path, rows)
        written = time.time_ns() // 1_000_000
        if window is None:
            return BronzeFile(path, rows.num_rows, run_id, None, None, fingerprint=fingerprint(
                rows.select(list(table.column_names))), written=written, bytes=size)  # fmt: skip
        if partition is not None:
            window = window.intersect(Window.of_days(partition, partition))
        # Published with the file in one manifest version: no crash separates the two.
        profile = file_profile(rows, table)
        return BronzeFile(
            path, rows.num_rows, run_id, partition, window, written=written, bytes=size,
            profile=profile,
        )  # fmt: skip


class LocalCopyRunner(CopyRunner):
    """Copies source windows into bronze in process (the embedded default of the ADF copy)."""

    reader: ReaderKind = Field(default=ReaderKind.AUTO, description="connectorx or arrow-odbc")
    chunk_rows: int = Field(
        default=CHUNK_ROWS,
        description="Source rows per query, about (counted per day before the copy; a day "
        "holding more is read in slices of its time): memory holds `workers` chunks.",
    )
    workers: int = Field(default=2, description="Chunks copied in parallel.")

    def copy_planned(self, planned: PlannedCopy, log: Callable[[str], None]) -> CopyResult:
        table, window, manifest = planned.table, planned.window, planned.manifest
        high, query, run_id, started = planned.high, planned.query, planned.run_id, planned.started
        carried = planned.carried
        sql = DIALECTS[self.source.dialect]
        extraction = f"{high:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:12]}"
        extracted_at = datetime.now(UTC).replace(tzinfo=None)

        def copy_rows(rows: pa.Table, name: str) -> list[BronzeFile]:
            audited = _with_audit(table, carried, rows, window, extracted_at, run_id)
            return [
                self._write(table, partition, part, window, name, run_id)
                for partition, part in _by_partition(table, audited)
            ]

        def copy_chunk(numbered: tuple[int, Window]) -> tuple[int, list[BronzeFile]]:
            # Slices of one day are chunks of their own: each writes a file of its own name.
            number, chunk = numbered
            rows = self._read(table, sql.extract_query(table, chunk, carried), carried)
            return rows.num_rows, copy_rows(rows, f"{extraction}-{number}")

        rows_read, files = 0, []
        if window is None:
            # A snapshot identical to the one bronze holds (intact) is not copied again.
            rows = self._read(table, query, carried)
            if self.holds_snapshot(table, manifest, rows):
                log(f"{table.name}: unchanged since manifest version {manifest.version}")
                return CopyResult(
                    table.name, None, high, query, rows_read=rows.num_rows,
                    seconds=time.perf_counter() - started,
                )  # fmt: skip
            rows_read, files = rows.num_rows, copy_rows(rows, extraction)
        else:
            # Each worker reads, splits and writes whole chunks: the engines release the GIL,
            # so both cores work, and memory holds at most `workers` chunks.
            chunks = self._chunks(table, window)
            with ThreadPoolExecutor(max_workers=self.workers) as pool:
                copied = pool.map(copy_chunk, enumerate(chunks))
                for done, (read, chunk_files) in enumerate(copied, start=1):
                    rows_read += read
                    files += chunk_files
                    if rows_read and _progress_step(done, len(chunks)):
                        into = counted(len(files), "file")
                        log(f"{table.name}: {counted(rows_read, 'row')} copied into {into}")
        return self.commit_files(
            table, manifest, window, files, extraction, run_id, high, query, rows_read, started
        )

    def holds_snapshot(self, table: Table, manifest: Manifest, rows: pa.Table) -> bool:
        """Whether bronze holds exactly the snapshot `rows`, its files intact: not copied again."""
        unchanged = unchanged_snapshot(manifest, rows.select(list(table.column_names)))
        return unchanged and self.store(table).all_intact(manifest.files)

    def has_changes(self, table: Table) -> bool:
        """Whether an incremental copy of `table` would find anything: a snapshot other than
        bronze's, or change records (rows, in watermark mode) from the watermark up to
        `load_bound`. Rows past it are not: no load can take them yet, and counting them made
        every idle `run` a full one (`run` reports them as not loaded yet)."""
        manifest = self.store(table).current()
        sql = DIALECTS[self.source.dialect]
        if table.mode is CaptureMode.SNAPSHOT:
            rows = self._read(table, sql.extract_query(table, None))
            return not self.holds_snapshot(table, manifest, rows)
        if manifest.watermark is None:
            return True
        bound = self.load_bound()
        if bound <= manifest.watermark:
            return False
        since = Window(manifest.watermark, bound)
        with self.source.connect() as conn:
            days = self.source.session_on(conn).query(sql.daily_profile_query(table, since))
        return any(int(rows) for _, rows, _ in days)

    def _chunks(self, table: Table, window: Window) -> list[Window]:
        """Query windows of about `chunk_rows` rows, from the source's rows per day in `window`
        (one profile per part of what the extraction reads)."""
        sql = DIALECTS[self.source.dialect]
        per_day: Counter[date] = Counter()
        with self.source.connect() as conn:
            session = self.source.session_on(conn)
            for query in sql.extract_profile_queries(table, window):
                for day, rows, _ in session.query(query):
                    per_day[as_date(day)] += int(rows)
        return split_window(window, per_day, self.chunk_rows)

    def _read(self, table: Table, query: str, carried: tuple[str, ...] = ()) -> pa.Table:
        """The rows of `query` in the catalog's types, plus `_untyped`.

        The fast read types values as it reads and fails on one that does not fit (text in an
        integer column, an integer out of range); the query is then read again as text and each
        value typed on its own, so one bad value reaches silver's quarantine instead of stopping
        the load."""
        schema = pa.schema([*table.extract_schema, *(pa.field(c, pa.string()) for c in carried)])
        conn_str, dialect = self.source.connection_string, self.source.dialect
        try:
            batches = read_arrow(conn_str, dialect, query, schema, self.reader)
            return all_typed(pa.Table.from_batches(list(batches), schema=schema))
        except SourceUnavailableError as error:
            # Change times place rows in windows and partitions. SQLite holds them as text,
            # which its driver's typed read re-dated (an offset dropped): read as text and
            # checked there; the other servers type them, and they stay typed.
            as_text = dialect is Dialect.SQLITE
            times = () if as_text else (CHANGE_AT, table.cdc_column or CHANGE_AT)
            text = text_schema(schema, keep=(CHANGE_OP, CHANGE_SEQ, *times))
            try:
                rows = read_as_text(conn_str, dialect, query, text)
            except SourceUnavailableError:
                raise error from None
            if as_text and table.change_time_column is not None:
                _check_change_times(table, text_values(rows[table.change_time_column]))
            return type_values(rows, schema)


# Progress lines of one copy at most: each is an event the run's log stores, and a first load
# of years is hundreds of chunks.
PROGRESS_LINES = 10


def _progress_step(done: int, chunks: int) -> bool:
    """Whether the `done`th of `chunks` chunks completes a step of the copy's progress (a tenth)."""
    return done * PROGRESS_LINES // chunks > (done - 1) * PROGRESS_LINES // chunks


def nothing_copied(
    table: Table, window: Window | None, high: datetime, query: str, manifest: Manifest
) -> CopyResult:
    """The result of an empty window: nothing read, nothing committed, the watermark kept."""
    return CopyResult(
        table.name, window, high, query,
        watermark_before=manifest.watermark, watermark_after=manifest.watermark,
    )  # fmt: skip


def unchanged_snapshot(manifest: Manifest, rows: pa.Table) -> bool:
    """Whether a snapshot's source rows are exactly the ones bronze holds (not copied again)."""
    return [f.fingerprint for f in manifest.files] == [fingerprint(rows)]


def fingerprint(rows: pa.Table) -> str:
    """A digest of a table's content, independent of row order."""
    ordered = rows.sort_by([(name, "ascending") for name in rows.column_names])
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, ordered.schema) as writer:
        writer.write_table(ordered)
    return hashlib.sha256(sink.getvalue()).hexdigest()


def _as_datetime(value: object) -> datetime:
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return moment.replace(tzinfo=None)


def _change_time(table: Table, value: object) -> datetime:
    if isinstance(value, datetime):
        return _as_datetime(value)
    try:
        moment = datetime.fromisoformat(str(value))
    except ValueError:
        raise ChangeTimeNotATime(table, value) from None
    if moment.tzinfo is not None:
        raise ChangeTimeNotATime(table, value)
    return moment


def _number(value: object) -> bool:
    try:
        float(str(value))
    except ValueError:
        return False
    return True


def _zoned(value: object) -> bool:
    try:
        return datetime.fromisoformat(str(value)).tzinfo is not None
    except ValueError:
        return False


def _check_change_times(table: Table, text: pa.ChunkedArray) -> None:
    """Change times read as text place their rows in windows and partitions: each must be a
    time without a zone (a driver's typed read of SQLite's text dropped an offset)."""
    timestamp = pa.timestamp("us")
    try:
        text.cast(timestamp)
    except pa.ArrowInvalid:
        for value in text.to_pylist():
            try:
                pa.scalar(value, pa.string()).cast(timestamp)
            except pa.ArrowInvalid:
                raise ChangeTimeNotATime(table, value) from None


def _check_operations(table: Table, rows: pa.Table) -> None:
    """Every row of a cdc extraction is a change record (I, U, D) or a current image (S)."""
    known = pc.fill_null(pc.is_in(rows[CHANGE_OP], pa.array(["I", "U", "D", "S"])), False)
    unknown = rows.filter(pc.invert(known))
    if unknown.num_rows:
        raise ChangeRecordsWithoutOperation(table, unknown)


def _with_audit(
    table: Table,
    carried: tuple[str, ...],
    rows: pa.Table,
    window: Window | None,
    extracted_at: datetime,
    run_id: str,
) -> pa.Table:
    if table.mode is CaptureMode.CDC:
        _check_operations(table, rows)
    schema = bronze_schema(table, carried)
    audit: dict[str, object] = {
        EXTRACTED_AT: extracted_at,
        WINDOW_START: window.start if window else None,
        WINDOW_END: window.end if window else None,
        RUN_ID: run_id,
    }
    if table.mode is not CaptureMode.CDC:
        audit = {CHANGE_OP: "S", CHANGE_SEQ: None, **audit}
    for name, value in audit.items():
        rows = rows.append_column(
            name, pa.repeat(pa.scalar(value, schema.field(name).type), rows.num_rows)
        )
    return rows.select(schema.names).cast(schema)


def _by_partition(table: Table, rows: pa.Table) -> Iterator[tuple[date | None, pa.Table]]:
    """Split rows by UTC day of their change time.

    Rows usually arrive ordered by change time (the index the query uses), so each batch is cut
    into runs of one day without copying; unordered batches are sorted first.
    """
    if table.change_time_column is None:
        yield None, rows
        return
    pieces: dict[int, list[pa.RecordBatch]] = {}
    for batch in rows.to_batches():
        if batch.num_rows == 0:
            continue
        days = pc.cast(pc.cast(batch[table.change_time_column], pa.date32()), pa.int32())
        days = days.to_numpy(zero_copy_only=False)
        if np.any(days[1:] < days[:-1]):
            order = np.argsort(days, kind="stable")
            batch, days = batch.take(pa.array(order)), days[order]
        starts = np.flatnonzero(np.r_[True, days[1:] != days[:-1]])
        for start, end in zip(starts, np.r_[starts[1:], len(days)], strict=True):
            pieces.setdefault(int(days[start]), []).append(batch.slice(start, end - start))
    for day in sorted(pieces):
        yield _EPOCH + timedelta(days=day), pa.Table.from_batches(pieces[day])
