"""Bronze in the Azure environment: planned like the embedded default, copied by Data Factory.

The sensors and the CLI plan loads from the source's change feed and the bronze manifests on the
lake (`CopyRunner.plan`, `first_change_day`, `store`), which work unchanged against Azure SQL
and ADLS. The copy itself is the Data Factory pipeline of `adf/` (`resources/adf.py`
`AdfClient.ingest`), which lands one parquet file per table under
`bronze/<Table>/_adf/landing/<ADF run id>.parquet`. `AzureCopyRunner.commit_landed` then does what
`LocalCopyRunner.copy` does after its reads, with the same helpers: conform the rows to
`bronze_schema`, write immutable per-day files, carry past cdc images, and publish the next
manifest version (`Manifest.with_extraction`: the same watermark rule). A window whose copy held
no rows (ADF deletes the empty file) is still committed, so the watermark advances as locally.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.compute as pc
from dagster import ConfigurableResource, Failure

from resources.adf import AdfClient, DataFactoryResource, TableCopy
from resources.copy_runner import (
    CopyResult,
    CopyRunner,
    PlannedCopy,
    _by_partition,
    nothing_copied,
    unchanged_snapshot,
)
from resources.dagster_resources import LakeResource, SourceResource
from spotify_assets.bronze.adf_pipeline import query_template
from spotify_assets.bronze.manifest import BronzeFile
from spotify_assets.bronze.schema import EXTRACTED_AT, WINDOW_END, WINDOW_START, bronze_schema
from spotify_assets.catalog.counts import counted
from spotify_assets.catalog.tables import CHANGE_OP, CHANGE_SEQ, UNTYPED, CaptureMode, Table

# The audit columns ADF's Copy adds as strings (`additionalColumns`): bronze stores timestamps.
_TIMESTAMP_COLUMNS = (EXTRACTED_AT, WINDOW_START, WINDOW_END)


class AzureCopyRunner(ConfigurableResource, CopyRunner):
    """Plans like every `CopyRunner`; copies with Data Factory, then commits the landed file."""

    source: SourceResource
    lake: LakeResource
    data_factory: DataFactoryResource

    def adf_client(self) -> AdfClient:
        return self.data_factory.client()

    def copy_planned(self, planned: PlannedCopy, log: Callable[[str], None]) -> CopyResult:
        table = planned.table
        # The run copies with the query planned here: the source's columns as they are now.
        run = self.adf_client().ingest(
            {table.name: planned.window}, planned.run_id, table.first_partition, log,
            queries={table.name: query_template(table, planned.carried)},
        )  # fmt: skip
        if table.name not in run.tables:
            raise Failure(
                description=f"{table.name}: ADF run {run.run_id} succeeded without a copy of it",
                metadata={"adf_run_id": run.run_id, "table": table.name},
            )
        return self.commit_landed(
            table, run.tables[table.name], run.run_id, planned.run_id, planned.high,
            planned.query, log, planned.started, planned.carried,
        )  # fmt: skip

    def commit_landed(
        self,
        table: Table,
        copied: TableCopy,
        adf_run_id: str,
        run_id: str,
        high: datetime,
        query: str = "",
        log: Callable[[str], None] = lambda message: None,
        started: float | None = None,
        carried: tuple[str, ...] = (),
    ) -> CopyResult:
        """Commit ADF's landed file of `copied` into bronze, as `LocalCopyRunner.copy` would;
        `carried`: the new source columns its query read."""
        started = time.perf_counter() if started is None else started
        manifest = self.store(table).current()
        window = copied.window
        if table.mode is not CaptureMode.SNAPSHOT and window is None:
            raise Failure(description=f"{table.name}: ADF reported no window for a windowed copy")
        if window is not None and window.empty:
            log(f"{table.name}: ADF copied an empty window (watermark {manifest.watermark})")
            return nothing_copied(table, window, high, query, manifest)
        landed = (
            self.lake.read_parquet([copied.file]) if copied.file else None
        )  # None: ADF deleted the empty file
        rows = conform_landed(table, landed, carried)
        if rows.num_rows != copied.rows_copied:
            raise Failure(
                description=f"{table.name}: ADF reported "
                f"{counted(copied.rows_copied, 'row')} copied but "
                f"{copied.file} holds {rows.num_rows:,}",
                metadata={"adf_run_id": adf_run_id, "file": str(copied.file)},
            )
        if window is None and unchanged_snapshot(manifest, rows.select(list(table.column_names))):
            log(f"{table.name}: unchanged since manifest version {manifest.version}")
            return CopyResult(
                table.name, None, high, query, rows_read=copied.rows_read,
                seconds=time.perf_counter() - started,
            )  # fmt: skip
        end = window.end if window else high
        extraction = f"{end:%Y%m%dT%H%M%S}-adf-{adf_run_id[:12]}-{uuid.uuid4().hex[:8]}"
        files: list[BronzeFile] = [
            self._write(table, partition, part, window, extraction, run_id)
            for partition, part in _by_partition(table, rows)
        ]
        result = self.commit_files(
            table, manifest, window, files, extraction, run_id, high, query, copied.rows_read,
            started,
        )  # fmt: skip
        log(
            f"{table.name}: committed {counted(rows.num_rows, 'row')} of ADF run {adf_run_id} into "
            f"{counted(len(result.files), 'file')} (manifest version {result.manifest_version})"
        )
        return result


def conform_landed(
    table: Table, landed: pa.Table | None, carried: tuple[str, ...] = ()
) -> pa.Table:
    """ADF's landed rows in `bronze_schema(table, carried)`, exactly as `LocalCopyRunner` writes
    them.

    The source columns (and `_op`/`_seq`/change time in cdc mode) are cast to the catalog's
    types, and new columns (`carried`) to text; the string audit columns become timestamps ('' for
    a snapshot's window: NULL); tables not in cdc mode get `_op='S'` and a NULL `_seq`, as
    `_with_audit` adds them. None: no file.
    """
    schema = bronze_schema(table, carried)
    if landed is None:
        return schema.empty_table()
    columns: list[pa.ChunkedArray] = []
    for field in schema:
        if field.name in landed.column_names:
            column = landed[field.name]
            if field.name in _TIMESTAMP_COLUMNS and (
                pa.types.is_string(column.type) or pa.types.is_large_string(column.type)
            ):
                column = _parse_timestamps(column)
            columns.append(column.cast(field.type))
        elif table.mode is not CaptureMode.CDC and field.name == CHANGE_OP:
            columns.append(pa.chunked_array([pa.repeat("S", landed.num_rows)], pa.string()))
        elif table.mode is not CaptureMode.CDC and field.name == CHANGE_SEQ:
            columns.append(pa.chunked_array([pa.nulls(landed.num_rows, pa.int64())]))
        elif field.name == UNTYPED:
            # The server enforced the column types: every value fitted.
            columns.append(pa.chunked_array([pa.nulls(landed.num_rows, pa.string())]))
        else:
            raise Failure(
                description=f"{table.name}: the landed file lacks column {field.name}",
                metadata={"columns": str(landed.column_names)},
            )
    return pa.Table.from_arrays(columns, schema=schema)


def _parse_timestamps(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """ADF timestamp strings (ISO 8601, up to 7 fractional digits, 'Z') as naive UTC, in `us`.

    Parsed once per distinct value: an audit column holds one or two values per file.
    """
    distinct = pc.unique(column)
    parsed = pa.array([_adf_timestamp(v) for v in distinct.to_pylist()], pa.timestamp("us"))
    positions = pc.index_in(column, value_set=distinct)
    return pa.chunked_array(
        [parsed.take(chunk) for chunk in positions.chunks], type=pa.timestamp("us")
    )


def _adf_timestamp(value: str | None) -> datetime | None:
    if not value:
        return None
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment
