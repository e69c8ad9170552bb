"""Dagster's event log on the CLI's instance: a single-run backfill over many daily partitions
records one planned event per asset naming its partitions and one materialization per asset and
partition (the UI shows each partition), written in a fixed number of transactions instead of
two per event, and the history it leaves reads as Dagster's default SQLite storage leaves it
(each partition's status included: materialized, failed or in progress)."""

import shutil
import sqlite3
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from dagster import (
    AssetCheckKey,
    AssetCheckResult,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    AssetPartitionStatus,
    BackfillPolicy,
    DagsterEventType,
    DagsterInstance,
    MaterializeResult,
    asset,
    materialize,
)
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import Pool

from resources.copy_runner import CopyResult, LocalCopyRunner
from resources.dagster_storage import BATCH_SIZE_VARIABLE, BatchingSqliteEventLogStorage
from resources.lake import LakeStorage
from resources.source_db import SourceDatabase, sqlite_connection_string
from spotify_assets.cli.commands import dagster_instance
from spotify_assets.orchestration.assets.bronze import copy_metadata
from spotify_assets.orchestration.partitions import (
    daily_partitions,
    partition_days,
    partition_range_tags,
)
from spotify_assets.orchestration.settings import Settings

START = date(2025, 1, 1)
PARTITIONS = daily_partitions(START)


@asset(
    partitions_def=PARTITIONS,
    backfill_policy=BackfillPolicy.single_run(),
    check_specs=[AssetCheckSpec("no_nulls", asset="copied")],
)
def copied(context: AssetExecutionContext) -> MaterializeResult:
    first, last = partition_days(context)
    return MaterializeResult(
        metadata={"days": (last - first).days + 1},
        check_results=[AssetCheckResult(passed=True)],
    )


@asset(partitions_def=PARTITIONS, backfill_policy=BackfillPolicy.single_run(), deps=[copied])
def cleaned(context: AssetExecutionContext) -> MaterializeResult:
    return MaterializeResult(metadata={"run": context.run.run_id})


@asset(partitions_def=PARTITIONS, backfill_policy=BackfillPolicy.single_run(), deps=[cleaned])
def broken() -> None:
    raise RuntimeError("this step fails: its partitions were planned, never materialized")


KEYS = [AssetKey("copied"), AssetKey("cleaned"), AssetKey("broken")]
CHECK = AssetCheckKey(KEYS[0], "no_nulls")


def cli_instance(home: Path, monkeypatch: pytest.MonkeyPatch) -> DagsterInstance:
    """The instance `spotify-lakehouse` creates under a fresh SPOTIFY_HOME."""
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    monkeypatch.delenv(BATCH_SIZE_VARIABLE, raising=False)
    return dagster_instance(Settings.from_env({"SPOTIFY_HOME": str(home)}))


def default_instance(home: Path) -> DagsterInstance:
    """Dagster's default SQLite storage, events stored one by one."""
    home.mkdir(parents=True)
    return DagsterInstance.from_config(str(home))


def run_range(instance: DagsterInstance, days: int) -> str:
    result = materialize(
        [copied, cleaned, broken],
        instance=instance,
        tags=partition_range_tags(START, START + timedelta(days=days - 1)),
        raise_on_error=False,
    )
    assert not result.success  # `broken` fails after the others materialized
    return result.run_id


@contextmanager
def listening(target: Any, name: str, handler: Callable[..., None]) -> Iterator[None]:
    """`handler` listens to SQLAlchemy's event `name` of `target` while open."""
    event.listen(target, name, handler)
    try:
        yield
    finally:
        event.remove(target, name, handler)


@contextmanager
def commits() -> Iterator[list[int]]:
    """Counts the transactions committed to Dagster's SQLite files while open."""
    count = [0]

    def committed(_: object) -> None:
        count[0] += 1

    with listening(Engine, "commit", committed):
        yield count


def history(instance: DagsterInstance, run_id: str, days: int) -> dict[str, Any]:
    """What the UI and run planning read of a run: events by type and asset (the partitions
    each planned event names apart), partition status, the latest materialization per
    partition, and each check's executions."""
    storage = instance.event_log_storage
    events: Counter[tuple[str, AssetKey | None, str | None]] = Counter()
    planned: dict[AssetKey | None, list[str]] = defaultdict(list)
    for entry in instance.all_logs(run_id):
        if (event := entry.dagster_event) is None:
            continue
        if event.event_type is DagsterEventType.ASSET_MATERIALIZATION_PLANNED:
            subset = event.asset_materialization_planned_data.partitions_subset
            planned[event.asset_key] += subset.get_partition_keys() if subset else [event.partition]
        events[event.event_type_value, event.asset_key, entry.step_key] += 1
    keys = [(START + timedelta(days=n)).isoformat() for n in range(days)]
    materialization = DagsterEventType.ASSET_MATERIALIZATION
    checks = storage.get_asset_check_execution_history(CHECK, limit=1000)
    unfinished = (
        storage.get_latest_asset_partition_materialization_attempts_without_materializations
    )
    return {
        "events": events,
        "planned": planned,
        "status": {k: instance.get_status_by_partition(k, keys, PARTITIONS) for k in KEYS},
        "materialized": {k: set(instance.get_materialized_partitions(k)) for k in KEYS},
        "latest": {
            k: set(instance.get_latest_storage_id_by_partition(k, materialization)) for k in KEYS
        },
        "unfinished": {k: set(unfinished(k)) for k in KEYS},
        "last_run": {
            r.asset_entry.asset_key: r.asset_entry.last_run_id == run_id
            for r in instance.get_asset_records(KEYS)
        },
        "latest_partition": {
            k: instance.get_latest_materialization_event(k).asset_materialization.partition
            for k in KEYS[:2]
        },
        "checks": Counter((c.status, c.partition) for c in checks),
    }


def test_the_cli_instance_writes_a_range_run_in_transactions_that_do_not_grow_with_its_days(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    instance = cli_instance(tmp_path / "home", monkeypatch)
    assert isinstance(instance.event_log_storage, BatchingSqliteEventLogStorage)
    run_range(instance, 1)  # the first run also creates the assets' rows
    counted, events = {}, {}
    for days in (10, 40):
        with commits() as count:
            run_id = run_range(instance, days)
        counted[days] = count[0]
        events[days] = len(instance.all_logs(run_id))
        planned = instance.all_logs(run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION_PLANNED)
        assert len(planned) == 3  # one per asset, naming its days (Dagster's: one per day)
    # Per event, two transactions each: 30 more days would add ~600. Batched: the same count.
    assert counted[40] == counted[10], counted
    # A day more is a materialization more of each asset that succeeded, and nothing else.
    assert events[40] - events[10] == 30 * 2, events


@contextmanager
def engines_used() -> Iterator[dict[str, list[Engine]]]:
    """The SQLAlchemy engines that connect while open, by file name (held: no id is reused)."""
    engines: dict[str, list[Engine]] = defaultdict(list)

    def connected(connection: Connection) -> None:
        engines[Path(str(connection.engine.url.database)).name].append(connection.engine)

    with listening(Engine, "engine_connect", connected):
        yield engines


def test_the_cli_instance_keeps_one_engine_per_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Dagster's SQLite storage creates a SQLAlchemy engine, and compiles its statements afresh,
    for each event it stores and each read or write of a run; the CLI's instance keeps one
    engine per file."""
    instance = cli_instance(tmp_path / "home", monkeypatch)
    run_range(instance, 1)  # creating the files and checking their schema takes an engine each
    with engines_used() as engines:
        run_id = run_range(instance, 3)
    used = {name: len(set(map(id, held))) for name, held in engines.items()}
    assert {f"{run_id}.db", "index.db", "runs.db"} <= used.keys(), used
    assert set(used.values()) == {1}, used


def test_the_cli_instance_waits_for_the_disk_at_checkpoints_not_at_each_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite's default in WAL mode (synchronous FULL) waits for the disk at every commit, and a
    small first load commits ~750 times; NORMAL waits at checkpoints only."""
    instance = cli_instance(tmp_path / "home", monkeypatch)
    run_range(instance, 1)
    modes: dict[str, set[int]] = defaultdict(set)
    files: set[str] = set()

    def connected(connection: Connection) -> None:
        # On the DB-API connection: a statement on `connection` would begin its transaction.
        raw = connection.connection.dbapi_connection
        assert raw is not None
        (sync,) = raw.execute("PRAGMA synchronous").fetchone()
        modes[Path(str(connection.engine.url.database)).name].add(sync)
        files.add(str(connection.engine.url.database))

    with listening(Engine, "engine_connect", connected):
        run_id = run_range(instance, 3)
    assert {f"{run_id}.db", "index.db", "runs.db"} <= modes.keys(), modes
    assert set().union(*modes.values()) == {1}, modes  # NORMAL
    for file in files:  # the mode NORMAL is safe in
        with sqlite3.connect(file) as db:
            assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",), file


@contextmanager
def files_opened() -> Iterator[Counter[str]]:
    """The SQLite connections opened while open, by file name."""
    opened: Counter[str] = Counter()

    def connected(connection: Any, _: object) -> None:
        opened[Path(connection.execute("PRAGMA database_list").fetchone()[2]).name] += 1

    with listening(Pool, "connect", connected):
        yield opened


def test_the_cli_instance_keeps_its_files_open_however_many_transactions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection opened per transaction makes SQLite create, sync and delete the file's
    write-ahead log each time (the last connection to close checkpoints it): ~2,400 syncs on a
    first load of 320 days. The CLI's instance keeps its connections to each file: a run opens
    its own file (a connection and one Dagster nests in it), and no other."""
    instance = cli_instance(tmp_path / "home", monkeypatch)
    run_range(instance, 1)
    with files_opened() as opened:
        run_id = run_range(instance, 3)
    assert opened == {f"{run_id}.db": 2}, opened


def test_a_run_after_its_event_files_were_deleted_is_written_to_new_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection kept to a deleted file would go on writing to it: another process (the UI)
    would never see the events."""
    run_range(cli_instance(tmp_path / "home", monkeypatch), 1)
    events = tmp_path / "home" / "dagster" / "history" / "runs"
    shutil.rmtree(events)
    run_id = run_range(cli_instance(tmp_path / "home", monkeypatch), 1)
    with sqlite3.connect(events / "index.db") as other_process:
        runs = {row[0] for row in other_process.execute("SELECT run_id FROM event_logs")}
    assert runs == {run_id}


def test_the_cli_instance_checks_its_schema_once_per_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A code server creates the instance again for each sensor evaluation; Dagster's run and
    schedule storages then compare their schema with every migration script. The CLI's
    instance does that once per process: created again, it opens no file."""
    ref = cli_instance(tmp_path / "home", monkeypatch).get_ref()
    with engines_used() as engines:
        for _ in range(3):
            DagsterInstance.from_ref(ref).dispose()
    assert not engines, {name: len(held) for name, held in engines.items()}


@contextmanager
def index_statements() -> Iterator[list[str]]:
    """The SQL statements run on Dagster's index file while open."""
    executed: list[str] = []

    def before(connection: Connection, _: object, statement: str, *args: object) -> None:
        if Path(str(connection.engine.url.database)).name == "index.db":
            executed.append(statement)

    with listening(Engine, "before_cursor_execute", before):
        yield executed


def test_the_cli_instance_asks_the_index_for_its_schema_once_per_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Dagster asks whether the index has a table, an asset-key column or a secondary index for
    each event it stores and each step it starts, each time on a connection of its own; the
    CLI's instance keeps the answers once they are yes."""
    instance = cli_instance(tmp_path / "home", monkeypatch)
    run_range(instance, 1)
    with index_statements() as executed:
        run_range(instance, 3)
    schema = [s for s in executed if "PRAGMA" in s.upper() or "secondary_indexes" in s]
    assert executed and not schema, Counter(schema)


def test_a_batched_range_run_leaves_the_history_dagsters_default_storage_leaves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    days = 6
    batched = cli_instance(tmp_path / "cli", monkeypatch)
    one_by_one = default_instance(tmp_path / "default")
    with monkeypatch.context() as env:
        env.delenv(BATCH_SIZE_VARIABLE)
        expected = history(one_by_one, run_range(one_by_one, days), days)
    got = history(batched, run_range(batched, days), days)

    partitions = {(START + timedelta(days=n)).isoformat() for n in range(days)}
    # Each asset is planned by one event naming its partitions, not by one event per partition.
    planned = DagsterEventType.ASSET_MATERIALIZATION_PLANNED.value
    for key in KEYS:
        assert expected["events"].pop((planned, key, key.path[-1])) == days
        assert got["events"].pop((planned, key, key.path[-1])) == 1
    # Except the check: evaluated once for the run, it is planned once, not once per partition
    # (Dagster's rows per partition stay PLANNED for ever).
    evaluated = (AssetCheckExecutionRecordStatus.SUCCEEDED, None)
    planned = [(AssetCheckExecutionRecordStatus.PLANNED, p) for p in partitions]
    assert expected.pop("checks") == Counter([evaluated, *planned])
    assert got.pop("checks") == Counter([evaluated])
    assert got == expected
    assert got["materialized"] == {KEYS[0]: partitions, KEYS[1]: partitions, KEYS[2]: set()}
    assert got["unfinished"][KEYS[2]] == partitions
    failed = {day: AssetPartitionStatus.FAILED for day in sorted(partitions)}
    assert got["status"][KEYS[2]] == failed  # as the UI shows them


def test_each_partitions_materialization_names_the_days_written_as_ranges(tmp_path: Path) -> None:
    """A range run's copy metadata names the days it wrote as ranges, not one by one."""
    runner = LocalCopyRunner(
        source=SourceDatabase(
            connection_string=sqlite_connection_string(tmp_path / "source.db"),
            partition_start=START.isoformat(),
        ),
        lake=LakeStorage(url=str(tmp_path / "lake")),
        safety_lag_seconds=0,
    )
    gap = START + timedelta(days=60)
    days = [START + timedelta(days=n) for n in range(800) if START + timedelta(days=n) != gap]
    copied = CopyResult("FactStream", None, datetime(2027, 3, 11), "", partitions=tuple(days))

    written = copy_metadata(copied, runner)["run_partitions_written"].value
    assert written == "2025-01-01..2025-03-01, 2025-03-03..2027-03-11"
