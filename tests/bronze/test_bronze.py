"""Bronze ingestion: initial, incremental, cdc, refresh, crashes, concurrency."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from resources.bronze_store import BronzeStore
from resources.lake import LakeConflictError, LakeStorage
from resources.source_db import SourceDatabase
from spotify_assets.bronze.schema import RUN_ID, bronze_schema
from spotify_assets.bronze.windows import Window, midnight
from spotify_assets.catalog.tables import CHANGE_OP, CatalogError, Table, TableRole
from spotify_assets.source.simulator import simulate
from tests.helpers.bronze import (
    assert_bronze_matches_source,
    assert_same_rows,
    canonical,
    current_state,
    load_everything,
    runner_for,
    source_rows,
)
from tests.helpers.source import (
    BUSY,
    CLOCK0,
    HISTORY_END,
    HISTORY_START,
    ON_TIME,
    SEED,
    initialise,
)


@pytest.fixture
def sqlite_setup(sqlite_source: SourceDatabase, tmp_path: Path):
    initialise(sqlite_source)
    return sqlite_source, runner_for(sqlite_source, tmp_path / "lake")


@pytest.mark.parametrize("mode", ["cdc", "watermark"])
def test_initial_load_equals_the_source(
    sqlite_source: SourceDatabase, tmp_path: Path, mode: str
) -> None:
    source = sqlite_source.model_copy(
        update={
            "capture_modes": ",".join(f"{d}={mode}" for d in ("DimUser", "DimArtist", "DimTrack"))
        }
    )
    initialise(source)
    runner = runner_for(source, tmp_path / "lake")
    results = load_everything(runner, source.catalog)
    for table in source.catalog:
        store = runner.store(table)
        bronze = store.read_all()
        assert bronze.schema == bronze_schema(table), "types exactly as the catalog declares"
        assert_same_rows(current_state(bronze, table), source_rows(source, table), table.key[0])
        result = results[table.name]
        assert result.rows_read == result.rows_written == bronze.num_rows
        if table.change_time_column:
            assert result.watermark_before is None and result.watermark_after == CLOCK0
            # Partitioned by change time: every file holds exactly one UTC day.
            for file in store.current().files:
                days = pc.unique(
                    pc.cast(
                        store.lake.read_parquet([file.path])[table.change_time_column], pa.date32()
                    )
                ).to_pylist()
                assert days == [file.partition]


def ops_of_run(bronze: pa.Table, run_id: str) -> dict[str, int]:
    ops = bronze.filter(pc.equal(bronze[RUN_ID], run_id))[CHANGE_OP]
    return {o["values"]: o["counts"] for o in pc.value_counts(ops).to_pylist()}


def changes_in(batches: list, table: Table) -> dict[str, int]:
    counts = {
        "I": sum(b.inserts[table.name].num_rows for b in batches if table.name in b.inserts),
        "U": sum(b.updates[table.name].num_rows for b in batches if table.name in b.updates),
        "D": sum(len(b.deletes[table.name]) for b in batches if table.name in b.deletes),
    }
    return {op: n for op, n in counts.items() if n}


def test_incremental_picks_up_exactly_the_changes(sqlite_setup) -> None:
    source, runner = sqlite_setup
    load_everything(runner, source.catalog, "initial")
    with source.session() as session:
        batches = list(simulate(session.read_state(), days=2, seed=SEED, rates=BUSY))
        session.apply(batches)
    results = load_everything(runner, source.catalog, "incremental")

    facts = source.catalog["FactStream"]
    new = pa.concat_tables(b.inserts["FactStream"] for b in batches)
    on_time = new.filter(pc.greater_equal(new["stream_timestamp"], CLOCK0))
    assert 0 < on_time.num_rows < new.num_rows, "the simulation must include late streams"
    # Watermark mode copies exactly the on-time new streams; late ones are for reconciliation.
    result = results["FactStream"]
    assert result.window == Window(CLOCK0, CLOCK0 + timedelta(days=2))
    incremental = runner.store(facts).read_all().filter(pc.equal(pc.field(RUN_ID), "incremental"))
    assert sorted(incremental["stream_id"].to_pylist()) == sorted(on_time["stream_id"].to_pylist())

    for table in source.catalog.by_role(TableRole.DIMENSION):
        bronze = runner.store(table).read_all()
        ops = ops_of_run(bronze, "incremental")
        # Besides every change record, the current image of each row changed in the window.
        current = source_rows(source, table)
        changed = pc.sum(pc.greater_equal(current["updated_at"], CLOCK0)).as_py()
        assert ops.pop("S") == changed, table.name
        assert ops == changes_in(batches, table), table.name
        assert_same_rows(current_state(bronze, table), source_rows(source, table), table.key[0])
    calendar = source.catalog["DimDate"]
    assert_same_rows(
        runner.store(calendar).read_all().select(list(calendar.column_names)),
        source_rows(source, calendar),
        "date_key",
    )


def test_cdc_mode_carries_deletes(sqlite_setup) -> None:
    source, runner = sqlite_setup
    users = source.catalog["DimUser"]
    runner.copy(users, None, "initial")
    victim = source_rows(source, users)["user_id"][0].as_py()
    with source.session() as session, session.transaction():
        session.apply_deletes(users, pa.array([victim], pa.int32()))
        session.set_clock(CLOCK0 + timedelta(hours=6))
    result = runner.copy(users, None, "incremental", from_watermark=True)
    bronze = runner.store(users).read_all()
    deletes = bronze.filter(pc.equal(bronze[CHANGE_OP], "D"))
    assert deletes["user_id"].to_pylist() == [victim]
    assert result.rows_read == 1
    assert victim not in current_state(bronze, users)["user_id"].to_pylist()


def test_rerunning_any_window_changes_nothing(sqlite_setup) -> None:
    source, runner = sqlite_setup
    load_everything(runner, source.catalog, "first")
    with source.session() as session:
        session.apply(simulate(session.read_state(), days=1, seed=SEED, rates=BUSY))
    load_everything(runner, source.catalog, "second")
    refresh = Window.of_days(HISTORY_END - timedelta(days=3), HISTORY_END)
    for table in source.catalog:
        for window in (refresh, None, Window(CLOCK0, CLOCK0 + timedelta(hours=30))):
            runner.copy(table, window, "once")
            once = canonical(runner.store(table).read_all(), table)
            runner.copy(table, window, "twice")
            twice = canonical(runner.store(table).read_all(), table)
            assert twice.equals(once), f"{table.name}: re-running {window} changed bronze"
        assert_same_rows(
            current_state(runner.store(table).read_all(), table),
            source_rows(source, table),
            table.key[0],
        )


def test_backdated_refresh_recovers_late_streams(sqlite_setup) -> None:
    source, runner = sqlite_setup
    facts = source.catalog["FactStream"]
    runner.copy(facts, None, "initial")
    with source.session() as session:
        session.apply(simulate(session.read_state(), days=1, seed=SEED, rates=BUSY))
    runner.copy(facts, None, "incremental", from_watermark=True)
    missing = source_rows(source, facts).num_rows - runner.store(facts).read_all().num_rows
    assert missing > 0, "late streams are behind the watermark"
    late_days = Window.of_days(HISTORY_END - timedelta(days=5), HISTORY_END - timedelta(days=1))
    result = runner.copy(facts, late_days, "refresh")
    assert result.watermark_after == result.watermark_before, "a refresh never moves the watermark"
    assert_same_rows(
        runner.store(facts).read_all().select(list(facts.column_names)),
        source_rows(source, facts),
        "stream_id",
    )


class Crash(RuntimeError):
    pass


@pytest.mark.parametrize("crash_at", ["during the write", "before the state commit"])
def test_a_crash_leaves_a_state_the_next_run_recovers_from(
    sqlite_setup, monkeypatch: pytest.MonkeyPatch, crash_at: str
) -> None:
    source, runner = sqlite_setup
    load_everything(runner, source.catalog, "initial")
    with source.session() as session:
        session.apply(simulate(session.read_state(), days=2, seed=SEED, rates=ON_TIME))
    before = {t.name: runner.store(t).current() for t in source.catalog}

    if crash_at == "during the write":
        real_write, calls = LakeStorage.write_parquet, []

        def write_then_crash(self: LakeStorage, relative: str, table: pa.Table) -> int:
            calls.append(relative)
            if len(calls) > 1:
                raise Crash("disk gone")
            return real_write(self, relative, table)

        monkeypatch.setattr(LakeStorage, "write_parquet", write_then_crash)
    else:
        monkeypatch.setattr(
            BronzeStore, "commit", lambda self, manifest: (_ for _ in ()).throw(Crash("killed"))
        )
    for table in source.catalog:
        with pytest.raises(Crash):
            runner.copy(table, None, "crashing", from_watermark=True)
        assert runner.store(table).current() == before[table.name], "old state stays visible"
    monkeypatch.undo()

    orphans = [p for p in (Path(runner.lake.url) / "bronze").rglob("*.parquet")]
    listed = {f.path for t in source.catalog for f in runner.store(t).current().files}
    assert len(orphans) > len(listed), "the crashed run left files, invisible to readers"
    load_everything(runner, source.catalog, "retry")
    assert_bronze_matches_source(source, runner)


def test_a_torn_manifest_write_is_ignored(sqlite_setup) -> None:
    source, runner = sqlite_setup
    facts = source.catalog["FactStream"]
    runner.copy(facts, None, "first")
    manifests = Path(runner.lake.url) / "bronze" / "FactStream" / "_manifests"
    (manifests / "v0000000002.json.tmp-0123abcd").write_text('{"table": "FactSt')
    assert runner.store(facts).current().version == 1
    refresh = Window.of_days(HISTORY_END - timedelta(days=1), HISTORY_END - timedelta(days=1))
    assert runner.copy(facts, refresh, "second").manifest_version == 2


def test_an_unchanged_snapshot_is_not_copied_again(sqlite_setup) -> None:
    source, runner = sqlite_setup
    dates = source.catalog["DimDate"]
    assert runner.copy(dates, None, "first").committed
    again = runner.copy(dates, None, "again")
    assert not again.committed and again.rows_read > 0 and not again.files
    with source.session() as session:
        session.apply(simulate(session.read_state(), days=1, seed=SEED, rates=ON_TIME))
    changed = runner.copy(dates, None, "after a day")
    assert changed.committed and changed.rows_written == again.rows_read + 1


@pytest.mark.parametrize("damage", ["lost", "rows cut"])
def test_an_unchanged_snapshot_whose_file_was_damaged_is_copied_again(
    sqlite_setup, damage: str
) -> None:
    """An unchanged snapshot's file of the size written is taken as intact without being opened;
    one lost, or of another size and rows, is copied again."""
    source, runner = sqlite_setup
    dates = source.catalog["DimDate"]
    first = runner.copy(dates, None, "first")
    (written,) = runner.store(dates).current().files
    path = Path(runner.lake.path(written.path))
    if damage == "lost":
        path.unlink()
    else:
        pq.write_table(pq.read_table(path).slice(0, 1), path)
    again = runner.copy(dates, None, "again")
    assert again.committed and again.rows_written == first.rows_written


def test_a_concurrent_commit_of_the_same_version_is_refused(sqlite_setup) -> None:
    source, runner = sqlite_setup
    dates = source.catalog["DimDate"]
    store = runner.store(dates)
    stale = store.current()
    runner.copy(dates, None, "first")
    with pytest.raises(LakeConflictError):
        store.commit(stale.with_extraction(None, [], CLOCK0))


def test_tables_load_in_parallel_with_their_own_state(sqlite_setup) -> None:
    source, runner = sqlite_setup
    with ThreadPoolExecutor(max_workers=len(source.catalog.tables)) as pool:
        list(pool.map(lambda t: runner.copy(t, None, "parallel", True), source.catalog))
    assert_bronze_matches_source(source, runner)
    manifests = {t.name: runner.store(t).current() for t in source.catalog}
    assert {m.table for m in manifests.values()} == {t.name for t in source.catalog}
    assert all(m.version == 1 for m in manifests.values())


def test_changes_committed_after_high_wait_for_the_next_run(sqlite_setup) -> None:
    """Rule 1: `high` is captured first; a batch committing during the copy is not half-read."""
    source, runner = sqlite_setup
    load_everything(runner, source.catalog, "initial")
    with source.session() as writer:
        batches = iter(simulate(writer.read_state(), days=1, seed=SEED, rates=ON_TIME))
        first = next(batches)
        with writer.transaction():
            writer.apply_batch(first)
            during = load_everything(runner, source.catalog, "during")
        after = load_everything(runner, source.catalog, "after")
    assert all(r.rows_read == 0 for r in during.values() if r.window is not None)
    assert after["FactStream"].rows_read > 0
    assert_bronze_matches_source(source, runner)


@pytest.mark.parametrize(
    "modes",
    ['DimUser"; DROP TABLE "DimUser"; --=cdc', "DimUser=cdc; DROP TABLE x", "Dim User=cdc"],
)
def test_hostile_identifiers_in_configuration_are_rejected(
    sqlite_source: SourceDatabase, modes: str
) -> None:
    hostile = sqlite_source.model_copy(update={"capture_modes": modes})
    with pytest.raises(CatalogError):
        hostile.catalog  # noqa: B018


@pytest.mark.parametrize("mode", ["cdc", "watermark"])
def test_the_copy_profile_counts_every_row_the_extraction_reads(
    sqlite_source: SourceDatabase, mode: str
) -> None:
    """Chunks are cut from these counts: in cdc mode the change records and the current images
    (the cdc profile alone counts the records), so a chunk's rows are what it reads."""
    source = sqlite_source.model_copy(update={"capture_modes": f"DimUser={mode}"})
    initialise(source)
    with source.session() as session:
        session.apply(simulate(session.read_state(), days=2, seed=SEED, rates=BUSY))
    table = source.catalog["DimUser"]
    window = Window(midnight(HISTORY_START), CLOCK0 + timedelta(days=3))
    with source.session() as session:
        read = len(session.query(session.sql.extract_query(table, window)))
        profiled = sum(
            int(rows)
            for query in session.sql.extract_profile_queries(table, window)
            for _, rows, _ in session.query(query)
        )
    assert read == profiled > 0


def test_days_holding_more_rows_than_a_chunk_are_copied_whole_in_slices(
    sqlite_setup, tmp_path: Path
) -> None:
    """A day of more rows than a chunk is read in slices of its time (change records and
    images alike in cdc mode): every slice's rows reach bronze, none twice."""
    source, _ = sqlite_setup
    runner = runner_for(source, tmp_path / "sliced", chunk_rows=40)
    results = load_everything(runner, source.catalog)
    fact = results[source.catalog.fact.name]
    assert len(fact.files) > 2 * len(fact.partitions)  # several slices per day
    assert_bronze_matches_source(source, runner)


KILLABLE_COPY = """
import sys
from resources.copy_runner import LocalCopyRunner
from resources.lake import LakeStorage
from resources.source_db import SourceDatabase
source = SourceDatabase(connection_string=sys.argv[1], partition_start=sys.argv[3])
runner = LocalCopyRunner(source=source, lake=LakeStorage(url=sys.argv[2]), safety_lag_seconds=0,
                         chunk_rows=100, workers=1)
print("ready", flush=True)
for table in source.catalog:
    runner.copy(table, None, "killed", from_watermark=True)
print("finished", flush=True)
"""


# Seconds after the copy's first file appears: killed amid its first files, or further on. Counted
# from the first file, not from start-up, so a slower start never kills it before it writes.
@pytest.mark.parametrize("after_seconds", [0.0, 0.2])
def test_a_copy_killed_at_any_moment_is_recovered_by_the_next(
    sqlite_setup, after_seconds: float
) -> None:
    source, runner = sqlite_setup
    args = [sys.executable, "-c", KILLABLE_COPY, source.connection_string, runner.lake.url,
            source.partition_start]  # fmt: skip
    process = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    assert process.stdout and process.stdout.readline() == "ready\n"
    deadline = time.monotonic() + 60
    while not any(Path(runner.lake.url).rglob("*.parquet")) and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(after_seconds)
    process.send_signal(signal.SIGKILL)
    assert "finished" not in process.communicate()[0], "the copy ended before the kill"
    files_after_kill = list(Path(runner.lake.url).rglob("*.parquet"))
    assert files_after_kill, "the copy was killed before writing anything: kill later"
    load_everything(runner, source.catalog, "after the kill")
    assert_bronze_matches_source(source, runner)


def test_a_long_copy_logs_a_bounded_number_of_progress_lines(
    sqlite_source: SourceDatabase, tmp_path: Path
) -> None:
    """Each progress line is an event the run's log stores: a first load of years copied in
    hundreds of chunks logged one per chunk. Now a line per tenth of the chunks, the last one
    with every row."""
    initialise(sqlite_source)
    runner = runner_for(sqlite_source, tmp_path / "lake", chunk_rows=200)
    fact = sqlite_source.catalog.fact
    lines: list[str] = []
    result = runner.copy(fact, None, "run", from_watermark=True, log=lines.append)
    progress = [line for line in lines if "rows copied into" in line]
    assert result.window is not None
    assert result.window.end - result.window.start > timedelta(days=20)  # a chunk per day or so
    assert 1 <= len(progress) <= 10, progress
    assert (
        progress[-1]
        == f"{fact.name}: {result.rows_read:,} rows copied into {len(result.files)} files"
    )


SKEWED_COPY = """
from spotify_assets.orchestration.resources import copy_runner
from spotify_assets.orchestration.settings import Settings
settings = Settings.from_env()
result = copy_runner(settings).copy(settings.catalog.fact, None, "skewed", from_watermark=True)
print(result.rows_read)
"""
# A backfill burst on one day of the history: as many streams as a month holds at scale 2.
BURST_STREAMS = 3_000_000
BURST_CHUNK_ROWS = 100_000
# The copy of the burst day whole peaked at 0.62 GiB; in chunks of 100k rows, 0.26 GiB.
SKEWED_COPY_GIB = 0.4


def test_a_day_of_a_burst_of_streams_is_copied_within_a_memory_bound(
    sqlite_source: SourceDatabase, tmp_path: Path, bounded
) -> None:
    """Memory is bounded by a chunk, not by the data's shape: one day holding a burst of
    streams is read in slices of about SPOTIFY_CHUNK_ROWS rows, not whole."""
    initialise(sqlite_source)
    fact, burst_day = sqlite_source.catalog.fact, HISTORY_START + timedelta(days=5)
    values = {  # a stream each second or so of the day, of a few users and tracks
        "stream_id": "1000000000 + i",
        "user_id": "1 + i % 7",
        "track_id": "1 + i % 11",
        "date_key": f"{burst_day:%Y%m%d}",
        "listen_duration": "i % 300",
        "device_type": "'mobile'",
        fact.cdc_column: f"strftime('%Y-%m-%d %H:%M:%f', '{burst_day}', "
        f"'+' || (i * 86399 / {BURST_STREAMS}) || ' seconds')",
    }
    with sqlite3.connect(tmp_path / "source.db") as db:  # the file of `sqlite_source`
        db.execute(
            f"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n "
            f"WHERE i < {BURST_STREAMS}) INSERT INTO {fact.name} ({', '.join(fact.column_names)}) "
            f"SELECT {', '.join(values[c] for c in fact.column_names)} FROM n"
        )
        (streams,) = db.execute(f"SELECT COUNT(*) FROM {fact.name}").fetchone()
    env = {
        **os.environ,
        "SPOTIFY_SOURCE_ODBC": sqlite_source.connection_string,
        "SPOTIFY_LAKE_URL": str(tmp_path / "lake"),
        "SPOTIFY_PARTITION_START": sqlite_source.partition_start,
        "SPOTIFY_CHUNK_ROWS": str(BURST_CHUNK_ROWS),
    }
    run = bounded([sys.executable, "-c", SKEWED_COPY], SKEWED_COPY_GIB, env=env)
    assert not run.killed_for_memory, f"the copy passed {SKEWED_COPY_GIB} GiB"
    assert run.returncode == 0, run.stderr
    assert int(run.stdout) == streams
