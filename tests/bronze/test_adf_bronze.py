"""Bronze on Azure: Data Factory's landed file committed into bronze equals the local copy.

No factory here: the landed parquet file is written as the pipeline's Copy activity writes it
(the extraction query's rows, the audit columns as strings from `additionalColumns`), and ADF's
REST API is the fake transport of `tests/helpers/fake_arm.py`. The reference is a real
`LocalCopyRunner` extraction of the same SQLite source and window.
"""

from __future__ import annotations

import sqlite3
from datetime import timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from resources.adf import AdfClient, DataFactoryResource, TableCopy
from resources.azure_copy import AzureCopyRunner
from resources.copy_runner import CopyRunner, LocalCopyRunner
from resources.dagster_resources import LakeResource, SourceResource
from resources.source_db import SourceDatabase
from spotify_assets.bronze import adf_pipeline as adf
from spotify_assets.bronze.dialects import DIALECTS
from spotify_assets.bronze.schema import (
    EXTRACTED_AT,
    RUN_ID,
    WINDOW_END,
    WINDOW_START,
    bronze_schema,
)
from spotify_assets.bronze.windows import Window
from spotify_assets.catalog.tables import UNTYPED, CaptureMode, Table
from tests.helpers.bronze import runner_for
from tests.helpers.fake_arm import FACTORY, GROUP, SUBSCRIPTION, FakeArm, client_for, copy_run
from tests.helpers.fake_arm import RUN_ID as ADF_RUN_ID
from tests.helpers.source import initialise

EXTRACTED = "2026-04-01T00:05:07.1234567Z"  # utcNow(): seven fractional digits and a zone


def azure_runner(source: SourceDatabase, lake: Path) -> AzureCopyRunner:
    factory = DataFactoryResource(
        subscription_id=SUBSCRIPTION, resource_group=GROUP, factory_name=FACTORY
    )
    return AzureCopyRunner(
        source=SourceResource(**source.model_dump()),
        lake=LakeResource(url=str(lake)),
        safety_lag_seconds=0,
        data_factory=factory,
    )


def land(
    runner: CopyRunner,
    table: Table,
    window: Window | None,
    run_id: str,
    carried: tuple[str, ...] = (),
) -> TableCopy:
    """Write the file ADF's Copy lands for `window`; returns what its activity run reports.
    New source columns (`carried`) come in their source type, as the parquet sink writes them."""
    sql = DIALECTS[runner.source.dialect]
    reader = LocalCopyRunner(source=runner.source, lake=runner.lake, safety_lag_seconds=0)
    rows = reader._read(table, sql.extract_query(table, window, carried), carried)
    rows = rows.drop_columns([UNTYPED])
    for name in carried:
        typed = pc.cast(rows[name], pa.int64())
        rows = rows.set_column(rows.schema.get_field_index(name), name, typed)
    # ADF's parquet sink writes datetime2 with nanosecond precision: the commit casts it back.
    rows = rows.cast(
        pa.schema(
            pa.field(f.name, pa.timestamp("ns")) if pa.types.is_timestamp(f.type) else f
            for f in rows.schema
        )
    )
    low = adf.timestamp_text(window.start) if window else ""
    end = adf.timestamp_text(window.end) if window else ""
    for name, value in ((EXTRACTED_AT, EXTRACTED), (WINDOW_START, low), (WINDOW_END, end)):
        rows = rows.append_column(name, pa.array([value] * rows.num_rows, pa.string()))
    rows = rows.append_column(RUN_ID, pa.array([run_id] * rows.num_rows, pa.string()))
    file = f"bronze/{table.name}/_adf/landing/{ADF_RUN_ID}.parquet"
    if rows.num_rows:  # ADF deletes the file of an empty copy
        runner.lake.write_parquet(file, rows)
    return TableCopy(
        table=table.name,
        rows_read=rows.num_rows,
        rows_copied=rows.num_rows,
        window=Window.from_json([low, end]) if window else None,
        file=file if rows.num_rows else None,
        activity_run_id=f"run-{table.name}",
    )


IGNORED = (EXTRACTED_AT, RUN_ID)


def comparable(rows: pa.Table) -> pa.Table:
    kept = [n for n in rows.column_names if n not in IGNORED]
    return rows.select(kept).sort_by([(n, "ascending") for n in kept]).combine_chunks()


@pytest.fixture
def both(sqlite_source: SourceDatabase, tmp_path: Path):
    initialise(sqlite_source)
    return (
        runner_for(sqlite_source, tmp_path / "local"),
        azure_runner(sqlite_source, tmp_path / "azure"),
    )


@pytest.mark.parametrize("name", ["FactStream", "DimUser", "DimDate"])
def test_a_committed_landing_equals_the_local_copy_and_recommits_idempotently(
    both: tuple[LocalCopyRunner, AzureCopyRunner], name: str
) -> None:
    local, azure = both
    table = local.source.catalog[name]
    expected = local.copy(table, None, "local-run", from_watermark=True)
    window, high, _ = azure.plan(table, None, from_watermark=True)
    assert window == expected.window
    copied = land(azure, table, window, "azure-run")
    assert copied.rows_copied > 0

    result = azure.commit_landed(table, copied, ADF_RUN_ID, "azure-run", high)
    bronze = azure.store(table).read_all()
    assert bronze.schema == bronze_schema(table), "types exactly as the local runner writes them"
    assert comparable(bronze).equals(comparable(local.store(table).read_all()))
    assert set(bronze[RUN_ID].to_pylist()) == {"azure-run"}
    if table.mode is not CaptureMode.CDC:
        assert set(bronze["_op"].to_pylist()) == {"S"} and bronze["_seq"].null_count == len(bronze)
    manifest = azure.store(table).current()
    assert manifest.watermark == local.store(table).current().watermark == expected.watermark_after
    assert (result.watermark_after, result.manifest_version) == (manifest.watermark, 1)
    assert result.rows_read == result.rows_written == expected.rows_written
    assert result.partitions == expected.partitions
    # The local layout: one file per day of change time, at BronzeStore.file_path.
    assert sorted(f.partition for f in manifest.files if f.partition) == sorted(
        f.partition for f in local.store(table).current().files if f.partition
    )
    assert all(
        f.path == azure.store(table).file_path(f.partition, Path(f.path).stem)
        for f in manifest.files
    )

    again = azure.commit_landed(table, copied, ADF_RUN_ID, "azure-run", high)
    if window is None:  # an unchanged snapshot is not committed again, as locally
        assert again.manifest_version == 0
    else:
        assert again.manifest_version == 2
        assert {f.path for f in again.files}.isdisjoint({f.path for f in result.files})
    assert comparable(azure.store(table).read_all()).equals(comparable(bronze))
    assert azure.store(table).current().watermark == manifest.watermark


@pytest.mark.parametrize("name", ["FactStream", "DimUser"])
def test_an_empty_window_without_a_landed_file_still_advances_the_watermark(
    both: tuple[LocalCopyRunner, AzureCopyRunner], name: str
) -> None:
    _, azure = both
    table = azure.source.catalog[name]
    window, high, _ = azure.plan(table, None, from_watermark=True)
    assert window is not None
    azure.commit_landed(table, land(azure, table, window, "first"), ADF_RUN_ID, "first", high)
    before = azure.store(table).current()
    later = Window(window.end, window.end + timedelta(hours=6))
    empty = TableCopy(table.name, 0, 0, later, None, "run-empty")

    result = azure.commit_landed(table, empty, ADF_RUN_ID, "second", later.end)
    after = azure.store(table).current()
    assert (after.version, after.watermark) == (before.version + 1, later.end)
    local_rule = before.with_extraction(later, [], azure.history_start(table))
    assert after.watermark == local_rule.watermark
    assert (result.rows_written, result.files, result.watermark_after) == (0, (), later.end)
    assert comparable(azure.store(table).read_all()).equals(
        comparable(azure.store(table).read_all(before))
    )


def test_copy_runs_data_factory_for_the_window_then_commits_its_landing(
    both: tuple[LocalCopyRunner, AzureCopyRunner], monkeypatch: pytest.MonkeyPatch
) -> None:
    local, azure = both
    table = local.source.catalog["FactStream"]
    expected = local.copy(table, None, "dagster-run", from_watermark=True)
    window, _, _ = azure.plan(table, None, from_watermark=True)
    copied = land(azure, table, window, "dagster-run")
    assert window is not None and copied.window is not None
    arm = FakeArm(
        ["Queued", "Succeeded"],
        [
            copy_run(
                table.name,
                "Succeeded",
                copied.rows_copied,
                (adf.timestamp_text(window.start), adf.timestamp_text(window.end)),
            )
        ],
    )

    def fake_client(self: AzureCopyRunner) -> AdfClient:
        return client_for(arm)

    monkeypatch.setattr(AzureCopyRunner, "adf_client", fake_client)
    log: list[str] = []
    result = azure.copy(table, None, "dagster-run", from_watermark=True, log=log.append)

    assert arm.sent[0].body == adf.run_parameters(
        {table.name: window},
        "dagster-run",
        table.first_partition,
        {table.name: adf.query_template(table)},
    )
    for field in ("table", "window", "high", "query", "rows_read", "watermark_before"):
        assert getattr(result, field) == getattr(expected, field), field
    assert (result.rows_written, result.watermark_after, result.manifest_version) == (
        expected.rows_written,
        expected.watermark_after,
        expected.manifest_version,
    )
    assert result.partitions == expected.partitions
    assert comparable(azure.store(table).read_all()).equals(
        comparable(local.store(table).read_all())
    )
    assert any(f"ADF run {ADF_RUN_ID}" in line for line in log)
    # Caught up: the next incremental copy starts no ADF run, like the local runner reads nothing.
    sent = len(arm.sent)
    caught_up = azure.copy(table, None, "dagster-run", from_watermark=True)
    assert caught_up.window is not None and caught_up.window.empty
    assert len(arm.sent) == sent


def test_a_new_source_column_is_copied_by_data_factory_as_by_the_local_runner(
    both: tuple[LocalCopyRunner, AzureCopyRunner], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A column added to the source follows the drift policy through ADF as locally: the run
    sends the query that reads it, and bronze holds it as text, as the local runner's does."""
    local, azure = both
    table = local.source.catalog["FactStream"]
    with sqlite3.connect(local.source.sqlite_path()) as db:
        db.execute("ALTER TABLE FactStream ADD COLUMN rating INTEGER")
        db.execute("UPDATE FactStream SET rating = stream_id % 5 WHERE stream_id % 3 = 0")
    expected = local.copy(table, None, "dagster-run", from_watermark=True)
    window, _, _ = azure.plan(table, None, from_watermark=True)
    assert window is not None
    copied = land(azure, table, window, "dagster-run", carried=("rating",))
    arm = FakeArm(
        ["Succeeded"],
        [
            copy_run(
                table.name,
                "Succeeded",
                copied.rows_copied,
                (adf.timestamp_text(window.start), adf.timestamp_text(window.end)),
            )
        ],
    )
    monkeypatch.setattr(AzureCopyRunner, "adf_client", lambda self: client_for(arm))
    azure.copy(table, None, "dagster-run", from_watermark=True)

    (item,) = arm.sent[0].body["tables"]  # the pipeline copies with it (tests/bronze/test_adf.py)
    assert item["query"] == adf.query_template(table, ("rating",))
    bronze = azure.store(table).read_all()
    assert bronze.schema == bronze_schema(table, ("rating",))
    assert comparable(bronze).equals(comparable(local.store(table).read_all()))
    assert expected.rows_written == len(bronze)
    assert set(bronze["rating"].to_pylist()) == {None, "0", "1", "2", "3", "4"}


def test_a_renamed_source_column_stops_the_copy_before_data_factory_runs(
    both: tuple[LocalCopyRunner, AzureCopyRunner], monkeypatch: pytest.MonkeyPatch
) -> None:
    local, azure = both
    table = local.source.catalog["DimUser"]
    with sqlite3.connect(local.source.sqlite_path()) as db:
        db.execute("ALTER TABLE DimUser RENAME COLUMN user_name TO full_name")
    arm = FakeArm(["Succeeded"], [])
    monkeypatch.setattr(AzureCopyRunner, "adf_client", lambda self: client_for(arm))
    with pytest.raises(ValueError) as on_azure:
        azure.copy(table, None, "dagster-run", from_watermark=True)
    with pytest.raises(ValueError) as locally:
        local.copy(table, None, "dagster-run", from_watermark=True)
    assert str(on_azure.value) == str(locally.value)
    assert "DimUser" in str(on_azure.value) and "user_name" in str(on_azure.value)
    assert arm.sent == [], "no ADF run started"
    assert azure.store(table).current().version == 0
