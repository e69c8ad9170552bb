"""Bronze as the tests check it: a local copy runner on a lake folder, and the source's current
state read back from bronze's versions."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from resources.copy_runner import LocalCopyRunner
from resources.lake import LakeStorage
from resources.source_db import SourceDatabase
from spotify_assets.bronze.profile import file_profile
from spotify_assets.catalog.tables import CHANGE_AT, CHANGE_OP, CHANGE_SEQ, CaptureMode, Table


def runner_for(source: SourceDatabase, lake: Path, **options: object) -> LocalCopyRunner:
    return LocalCopyRunner(
        source=source, lake=LakeStorage(url=str(lake)), safety_lag_seconds=0, **options
    )


def parquet_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The lake files opened as parquet from now on, read or only their footer (their paths, in
    order, as they are opened)."""
    read: list[str] = []
    read_parquet, parquet_rows = LakeStorage.read_parquet, LakeStorage.parquet_rows

    def counted(
        self: LakeStorage, relatives: list[str], columns: list[str] | None = None
    ) -> pa.Table:
        read.extend(relatives)
        return read_parquet(self, relatives, columns)

    def footer(self: LakeStorage, relative: str) -> int:
        read.append(relative)
        return parquet_rows(self, relative)

    monkeypatch.setattr(LakeStorage, "read_parquet", counted)
    monkeypatch.setattr(LakeStorage, "parquet_rows", footer)
    return read


def source_rows(source: SourceDatabase, table: Table) -> pa.Table:
    with source.session() as session:
        return session.read_table(table)


def current_state(bronze: pa.Table, table: Table) -> pa.Table:
    """The source table as bronze describes it: the newest version per key, by business time.

    A version's time is its cdc column; a delete's is its change time, and it wins a tie.
    """
    key = table.key[0]
    rows = bronze.select([*table.column_names, CHANGE_OP])
    if table.mode is CaptureMode.CDC:
        deleted = pc.equal(rows[CHANGE_OP], "D")
        when = pc.if_else(deleted, bronze[CHANGE_AT], rows[table.cdc_column])
        rows = rows.append_column("_when", when).append_column("_rank", deleted.cast(pa.int8()))
        order = [(key, "ascending"), ("_when", "ascending"), ("_rank", "ascending")]
    else:
        order = [(key, "ascending"), (table.cdc_column or key, "ascending")]
    rows = rows.sort_by(order)
    keys = rows[key].to_numpy()
    last = [i for i in range(len(keys)) if i + 1 == len(keys) or keys[i + 1] != keys[i]]
    latest = rows.take(pa.array(last, pa.int64()))
    latest = latest.filter(pc.not_equal(latest[CHANGE_OP], "D"))
    return latest.select(list(table.column_names)).cast(table.arrow_schema)


def assert_same_rows(actual: pa.Table, expected: pa.Table, key: str) -> None:
    actual, expected = actual.sort_by(key), expected.sort_by(key)
    assert actual.num_rows == expected.num_rows
    assert actual.schema.names == expected.schema.names
    assert actual.schema.types == expected.schema.types
    # Bronze's source columns are nullable (Table.copied_schema): the values must be equal.
    same = actual.equals(expected.cast(actual.schema))
    assert same, f"bronze differs from the source on {key}"


def load_everything(runner: LocalCopyRunner, catalog, run_id: str = "run") -> dict:
    return {t.name: runner.copy(t, None, run_id, from_watermark=True) for t in catalog}


def canonical(bronze: pa.Table, table: Table) -> pa.Table:
    """Source columns plus op and sequence, in a fixed order: equal iff the same rows."""
    columns = [*table.column_names, CHANGE_OP, CHANGE_SEQ]
    return bronze.select(columns).sort_by([(c, "ascending") for c in columns])


def assert_bronze_matches_source(source: SourceDatabase, runner: LocalCopyRunner) -> None:
    for table in source.catalog:
        bronze = runner.store(table).read_all()
        assert bronze.num_rows == canonical(bronze, table).num_rows
        assert_same_rows(current_state(bronze, table), source_rows(source, table), table.key[0])
        if table.mode is CaptureMode.WATERMARK:
            keys = bronze[table.key[0]]
            assert pc.count_distinct(keys).as_py() == len(keys), f"{table.name}: duplicates"
        assert_profiles_match_files(runner, table)


def assert_profiles_match_files(runner: LocalCopyRunner, table: Table) -> None:
    """Every file the manifest lists is of the size it records, and holds the rows its
    recorded profile describes (what reconciliation takes instead of reading the file)."""
    store = runner.store(table)
    for file in store.current().files:
        assert runner.lake.fs.size(runner.lake.path(file.path)) == file.bytes, file.path
        if table.change_time_column:
            rows = runner.lake.read_parquet([file.path])
            assert file.profile == file_profile(rows, table), file.path
