"""Runs with nothing or little to do (issue 13): `run` with no change in the source decides so
from the change feeds, the bronze manifests and the Delta logs, and then writes nothing, records
no Dagster run and starts no Spark session; a snapshot table is rebuilt only when it changed;
a run stopped between two layers is still finished by the next `run`, change or no change.

One small lakehouse is loaded once for the module; each test starts and ends with it up to date.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterInstance
from sqlalchemy.exc import OperationalError

from resources.delta_tables import delta_table, partition_stats
from resources.gold_state import applied_version
from resources.lake import LakeStorage
from resources.silver_store import SilverStore
from resources.spark import SparkResource
from spotify_assets.bronze.manifest import Manifest
from spotify_assets.bronze.windows import Window
from spotify_assets.catalog.lake_paths import BRONZE, gold_path, quarantine_path, silver_path
from spotify_assets.catalog.tables import CATALOG, CHANGE_DATE, CaptureMode, Catalog, Table
from spotify_assets.cli import commands, main
from spotify_assets.cli.commands import instance_config, run
from spotify_assets.consistency.faults import Fault
from spotify_assets.orchestration import gate
from spotify_assets.orchestration.resources import copy_runner, source_database
from spotify_assets.orchestration.settings import Settings
from tests.helpers.bronze import parquet_reads
from tests.helpers.gold_reference import assert_gold_equals_source, small_source
from tests.helpers.processes import CLI, CLI_MEMORY_GIB, Lakehouse, cli_imports, run_bounded

NOTHING_DONE = {"incremental": [], "repaired": []}
CALENDAR = next(t for t in CATALOG if t.mode is CaptureMode.SNAPSHOT)


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """A small embedded source loaded through to gold by `run`, with the CLI's instance."""
    settings = small_source(tmp_path_factory.mktemp("idle"))
    settings.dagster_home.mkdir(parents=True)
    (settings.dagster_home / "dagster.yaml").write_text(instance_config())
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DAGSTER_HOME", str(settings.dagster_home))
        run(settings)
        assert gate.up_to_date(settings)
        yield settings


def _lake_tables() -> list[str]:
    """Every Delta table of the lake: silver, quarantine, gold and the aggregates."""
    names = [silver_path(t) for t in CATALOG] + [quarantine_path(t) for t in CATALOG]
    names += [gold_path(t.lake_name) for t in CATALOG if t.gold]
    return names + [gold_path(a.name) for a in CATALOG.aggregates]


def _lake_state(settings: Settings) -> dict[str, object]:
    """Every Delta table's version, every bronze manifest's version and gold's apply states."""
    lake = LakeStorage(url=settings.lake_url)
    state: dict[str, object] = {name: delta_table(lake, name).version() for name in _lake_tables()}
    runner = copy_runner(settings)
    state |= {t.name: runner.store(t).latest_version() for t in CATALOG}
    state |= {f"state {t.name}": applied_version(lake, t) for t in CATALOG}
    return state


def _dagster_state() -> tuple[int, dict[AssetKey, tuple[str, float]]]:
    """Runs recorded, and the run and time of every asset's latest materialization."""
    instance = DagsterInstance.get()
    keys = list(instance.get_asset_keys())
    latest = instance.get_latest_materialization_events(keys)
    return len(instance.get_runs()), {k: (e.run_id, e.timestamp) for k, e in latest.items() if e}


def _forbid_spark(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any Spark session asked for from now on fails the test (sessions already open are set
    aside)."""

    def connect(self: SparkResource) -> None:
        raise AssertionError("a run with nothing to do started a Spark session")

    monkeypatch.setattr("resources.spark._sessions", {})
    monkeypatch.setattr(SparkResource, "_connect", connect)


@pytest.fixture
def no_spark(monkeypatch: pytest.MonkeyPatch) -> None:
    _forbid_spark(monkeypatch)


def test_a_run_with_nothing_to_do_writes_nothing_records_no_run_and_starts_no_spark(
    loaded: Settings, no_spark: None
) -> None:
    lake, dagster = _lake_state(loaded), _dagster_state()
    for _ in range(2):
        assert run(loaded) == NOTHING_DONE
    assert _lake_state(loaded) == lake, "no Delta version, manifest or gold state written"
    assert _dagster_state() == dagster, "no Dagster run, no materialization"


def test_a_run_with_nothing_to_do_loads_neither_dagster_nor_spark(loaded: Settings) -> None:
    """Deciding that there is nothing to do takes the change feeds, the manifests and the Delta
    logs alone: Dagster (and its storage, SQLAlchemy) and Spark are for runs, and importing them
    would cost an idle `run` most of its time; pandas too (pyarrow's datasets import it: an idle
    run reads no dimension version through them)."""
    unloaded = ("dagster", "pyspark", "resources.dagster_storage", "sqlalchemy", "pandas")
    env = {**os.environ, "SPOTIFY_HOME": str(loaded.home)}
    lake = _lake_state(loaded)
    result, imported = cli_imports(["run"], unloaded, env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == NOTHING_DONE
    assert imported == []
    assert _lake_state(loaded) == lake, "no Delta version, manifest or gold state written"


def test_a_run_with_nothing_to_do_reads_no_bronze_file(
    loaded: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reconciliation's lookback takes bronze's counts and checksums per day from the profiles
    the manifests recorded as the files were written, and their sizes from a listing of each
    partition: no bronze file is read back (at scale 10 that read was half of an idle run). The
    calendar's snapshot is judged intact by its size too: its footer is not read either."""
    read = parquet_reads(monkeypatch)
    assert run(loaded) == NOTHING_DONE
    assert [path for path in read if path.startswith(f"{BRONZE}/")] == []


def test_the_run_after_a_refresh_has_nothing_to_do(
    loaded: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refresh re-extracts the dimensions' days too, whose versions can change the fact's
    later days: the refresh rebuilds those itself (the next `run` made an empty incremental run
    and a repair run of them)."""
    watermark = copy_runner(loaded).store(CATALOG.fact).current().watermark
    last = watermark.date() - timedelta(days=3)
    commands.refresh(loaded, last - timedelta(days=2), last)
    lake, dagster = _lake_state(loaded), _dagster_state()
    _forbid_spark(monkeypatch)
    assert run(loaded) == NOTHING_DONE
    assert _lake_state(loaded) == lake, "no Delta version, manifest or gold state written"
    assert _dagster_state() == dagster, "no Dagster run, no materialization"
    assert_gold_equals_source(loaded)


def _new_stream(settings: Settings, stream_id: int) -> None:
    """A stream half an hour after the source's clock, which moves an hour on."""
    with source_database(settings).session() as session:
        clock = session.clock()
        session.set_clock(clock + timedelta(hours=1))
        session.execute(
            "INSERT INTO FactStream (stream_id, user_id, track_id, date_key, listen_duration, "
            f"device_type, stream_timestamp) VALUES ({stream_id}, 1, 1, {clock:%Y%m%d}, 60, "
            f"'mobile', '{clock + timedelta(minutes=30):%Y-%m-%d %H:%M:%S.000}')"
        )


def test_a_run_with_new_streams_leaves_the_unchanged_calendar_alone(loaded: Settings) -> None:
    lake = LakeStorage(url=loaded.lake_url)
    calendar = {name: delta_table(lake, name).version() for name in _calendar_tables()}
    _new_stream(loaded, 99999999)
    done = run(loaded)
    assert sum(load["rows"] or 0 for load in done["incremental"]) == 1
    assert CALENDAR.name not in {load["table"] for load in done["incremental"]}
    assert {name: delta_table(lake, name).version() for name in _calendar_tables()} == calendar
    assert_gold_equals_source(loaded)
    assert gate.up_to_date(loaded)


def test_a_run_checks_each_tables_manifest_and_logs_once(
    loaded: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gate, the incremental run and the repair after it share one check of the tables'
    manifests and Delta logs (three before)."""
    checks: Counter[str] = Counter()
    faults = gate.delta_faults

    def counted(
        lake: LakeStorage, catalog: Catalog, table: Table, manifest: Manifest
    ) -> list[Fault]:
        checks[table.name] += 1
        return faults(lake, catalog, table, manifest)

    monkeypatch.setattr(gate, "delta_faults", counted)
    _new_stream(loaded, 99999998)
    done = run(loaded)
    assert sum(load["rows"] or 0 for load in done["incremental"]) == 1
    assert checks == Counter(t.name for t in CATALOG)
    assert_gold_equals_source(loaded)


def _calendar_tables() -> list[str]:
    return [silver_path(CALENDAR), quarantine_path(CALENDAR), gold_path(CALENDAR.lake_name)]


def test_the_next_run_finishes_a_run_stopped_after_bronze_or_silver(loaded: Settings) -> None:
    """Bronze re-extracted (a refresh stopped once bronze committed): silver, gold and the
    aggregates of those days are rebuilt, though their row counts match. Silver of a dimension
    rebuilt and gold not applied: gold catches up. Both without any change in the source."""
    runner, lake = copy_runner(loaded), LakeStorage(url=loaded.lake_url)
    catalog = runner.source.catalog
    fact, users, tracks = catalog.fact, catalog["DimUser"], catalog["DimTrack"]
    first, last = (
        runner.store(fact).current().watermark.date() - timedelta(days=d) for d in (5, 3)
    )
    for table in (fact, users):
        runner.copy(table, Window.of_days(first, last), "stopped after bronze")
    spark = SparkResource().session()
    SilverStore(lake, spark, tracks).refresh((first, last), "stopped after silver")
    assert not gate.up_to_date(loaded)

    done = run(loaded)
    repaired = {load["table"] for load in done["repaired"]}
    assert {fact.name, users.name} <= repaired
    for table in (fact, users):
        bronze = runner.store(table).partition_stats()
        silver = partition_stats(lake, silver_path(table), CHANGE_DATE)
        for day in (first, last):
            assert silver[day].written >= bronze[day].written, (table.name, day)
    silver_tracks = delta_table(lake, silver_path(tracks)).version()
    assert applied_version(lake, tracks) == silver_tracks
    assert_gold_equals_source(loaded)
    assert gate.up_to_date(loaded)


@pytest.mark.parametrize(
    ("failure", "says"),
    [
        ("disk I/O error", "disk I/O error\n"),
        # A sqlite3 shell's `BEGIN EXCLUSIVE` (Dagster waited 30 s for it, then failed).
        ("database is locked", "database is locked; another process holds it (a sqlite3 "),
    ],
)
def test_a_failure_of_dagsters_storage_is_still_one_line(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    failure: str,
    says: str,
) -> None:
    """SQLAlchemy, Dagster's storage layer, is imported only once Dagster's storage is opened
    (an idle run never does); its failures still read as one line, saying what to do where
    that is known."""

    def full_disk(settings: Settings, tables: object) -> None:
        raise OperationalError("INSERT INTO event_logs", {}, sqlite3.OperationalError(failure))

    monkeypatch.setenv("SPOTIFY_HOME", str(tmp_path))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    monkeypatch.setattr(commands, "run", full_disk)
    assert main(["run"]) == 1
    error = capsys.readouterr().err
    assert error.startswith(f"error: Dagster's storage under {tmp_path / 'dagster'} failed: ")
    assert error.count("\n") == 1 and says in error


def test_dagsters_storage_damaged_says_what_to_do_and_doing_it_brings_every_layer_back(
    loaded: Settings,
) -> None:
    """Its run history overwritten: `run` says so in one line, with what to do (the lake holds
    every load's state, Dagster only the runs' history), and doing it brings every layer back."""
    cli = Lakehouse(loaded.home)
    _new_stream(loaded, 99999996)
    (loaded.dagster_home / "history" / "runs.db").write_bytes(b"\x93" * 4096)
    failed = run_bounded([CLI, "run"], CLI_MEMORY_GIB, env=cli.env)
    assert failed.returncode == 1 and failed.stderr.count("\n") == 1, failed.stderr
    assert failed.stderr.startswith(f"error: Dagster's storage under {loaded.dagster_home}")
    assert f"; it is damaged: move {loaded.dagster_home} aside and run again" in failed.stderr
    loaded.dagster_home.rename(loaded.home / "dagster.damaged")
    cli("run")
    assert_gold_equals_source(loaded)
    assert gate.up_to_date(loaded)
