"""Faults a user meets (issue 12): missing and damaged lake files, full disks. Each one is named
in one line (the file, the table, what to run), never a traceback; after the documented recovery
(`refresh` of the days, `verify --repair`, or the next `run`) gold equals plain SQL on the source.

Each test breaks a copy of one loaded lake (conftest.py's `loaded_home`).
"""

from __future__ import annotations

import errno
import json
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import resources.lake
from resources.delta_tables import rows_per_day, table_stats
from resources.gold_state import unmatched_records
from resources.lake import LakeStorage
from spotify_assets.catalog.lake_paths import gold_path, quarantine_path
from spotify_assets.catalog.tables import CATALOG, CHANGE_DATE
from spotify_assets.cli import main
from spotify_assets.cli.commands import source_simulate
from spotify_assets.orchestration.resources import copy_runner
from spotify_assets.orchestration.settings import Settings
from spotify_assets.source.simulator import SimulationRates
from tests.helpers.gold_reference import assert_gold_equals_source
from tests.helpers.source import without_constraints

# Each test runs the pipeline two or three times (the first one also builds the shared lake).
pytestmark = pytest.mark.timeout(900)

END = datetime.now(UTC).date() - timedelta(days=4)  # the history's end: the watermark's day
DAY = END - timedelta(days=3)  # a loaded day within reconciliation's lookback


@dataclass
class Cli:
    """`spotify-lakehouse` in process on a lake of its own: its exit code and error lines (and
    in `printed`, its standard output)."""

    settings: Settings
    capsys: pytest.CaptureFixture[str]
    printed: str = ""
    warned: tuple[str, ...] = ()

    def __call__(self, *args: str) -> tuple[int, list[str]]:
        self.capsys.readouterr()
        code = main(list(args))
        out = self.capsys.readouterr()
        assert "Traceback" not in out.out + out.err
        self.printed = out.out
        self.warned = tuple(line for line in out.err.splitlines() if line.startswith("warning: "))
        return code, [line for line in out.err.splitlines() if line.startswith("error: ")]

    @property
    def lake(self) -> Path:
        return Path(self.settings.lake_url)


@pytest.fixture
def cli(loaded_lakehouse: Settings, capsys: pytest.CaptureFixture) -> Cli:
    return Cli(loaded_lakehouse, capsys)


def bronze_file(cli: Cli, table: str, day: date) -> Path:
    (path,) = (cli.lake / "bronze" / table / f"date={day}").glob("*.parquet")
    return path


def latest_manifest(cli: Cli, table: str) -> Path:
    return sorted((cli.lake / "bronze" / table / "_manifests").glob("v*.json"))[-1]


def delta_commit(cli: Cli, table: str, version: int, suffix: str = ".json") -> Path:
    return cli.lake / table / "_delta_log" / f"{version:020d}{suffix}"


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def one_line_each(errors: list[str], *expected: tuple[str, ...]) -> None:
    """A line for each expected fault, naming all its parts; every line says what to run (a
    step that needed a damaged table fails with a line of its own)."""
    for parts in expected:
        assert any(all(p in line for p in parts) for line in errors), (parts, errors)
    assert all("verify --repair" in line for line in errors), errors


def test_damaged_bronze_files_and_manifests_are_named_and_verify_repair_rebuilds_them(
    cli: Cli,
) -> None:
    # No late streams: reconciliation, blocked here by the damage, is not what is tested.
    source_simulate(cli.settings, 1, 8, SimulationRates(late_fraction=0.0))
    missing = bronze_file(cli, "FactStream", DAY)
    missing.unlink()
    truncated = bronze_file(cli, "DimUser", DAY)
    truncate(truncated)
    manifest = latest_manifest(cli, "DimArtist")
    truncate(manifest)

    code, errors = cli("run")
    assert code == 1
    # The damaged manifest blocks its own table only; the deleted file is found by
    # reconciliation (its day is in the lookback), which reads every file of the day.
    one_line_each(
        errors,
        ("DimArtist", str(manifest), "damaged"),
        ("FactStream", str(missing), "is missing"),
        ("DimUser", str(truncated), "is unreadable"),
    )
    store = copy_runner(cli.settings).store(CATALOG["DimTrack"])
    assert store.current().watermark.date() > END, "the other tables were loaded"

    code, _ = cli("verify")
    assert code == 1
    code, errors = cli("verify", "--repair")
    assert (code, errors) == (0, [])
    assert cli("verify") == (0, [])
    assert_gold_equals_source(cli.settings)


def test_bronze_left_without_manifests_by_a_repair_cut_short_is_named_and_repaired(
    cli: Cli,
) -> None:
    """`verify --repair` killed after setting a damaged (here: the only) manifest aside and
    before the re-extraction committed: bronze holds nothing under a full silver, and `verify`
    said the lake was consistent."""
    manifests = latest_manifest(cli, "DimUser").parent
    (manifests / "damaged").mkdir()
    for manifest in manifests.glob("v*.json"):
        manifest.rename(manifests / "damaged" / manifest.name)

    code, _ = cli("verify")
    assert code == 1
    assert "bronze DimUser: bronze/DimUser holds nothing while silver holds " in cli.printed
    assert cli("verify", "--repair") == (0, [])
    assert cli("verify") == (0, [])
    assert_gold_equals_source(cli.settings)


def test_a_missing_bronze_file_does_not_block_the_refresh_of_its_own_day(cli: Cli) -> None:
    bronze_file(cli, "FactStream", DAY).unlink()
    truncate(bronze_file(cli, "DimUser", DAY))  # cdc: the refresh carries its past images

    code, errors = cli("refresh", "--from", str(DAY), "--to", str(DAY))
    assert (code, errors) == (0, [])
    assert cli("verify") == (0, [])
    assert_gold_equals_source(cli.settings)


def test_lost_delta_commits_in_silver_and_gold_are_named_and_rebuilt_from_the_layer_below(
    cli: Cli,
) -> None:
    # A commit lost with its checksum file still there: delta-rs cannot open the table. (Each
    # table of the loaded lake has one commit: its first write created it.)
    delta_commit(cli, "silver/fact_stream", 0).unlink()
    delta_commit(cli, "gold/dim_user", 0).unlink()
    # The only commit lost with its checksum: no table, and one the layer below says should
    # hold rows, never "not built yet".
    for suffix in (".json", ".crc"):
        delta_commit(cli, "silver/dim_track", 0, suffix).unlink()
        delta_commit(cli, "gold/agg_daily_user", 0, suffix).unlink()

    code, errors = cli("run")
    assert code == 1
    one_line_each(
        errors,
        ("silver/fact_stream", "00000000000000000000.json", "missing"),
        ("gold/dim_user", "00000000000000000000.json", "missing"),
    )
    # A table lost whole does not block its run: reconciliation compares the layers and
    # rebuilt silver/dim_track; gold/agg_daily_user waits behind the damaged silver fact, and
    # `verify` names it.
    assert cli("verify")[0] == 1
    assert "silver/dim_track" not in cli.printed
    assert "gold/agg_daily_user is empty" in cli.printed
    code, errors = cli("verify", "--repair")
    assert (code, errors) == (0, [])
    assert cli("verify") == (0, [])
    assert cli("run") == (0, [])
    assert_gold_equals_source(cli.settings)


def test_delta_data_files_removed_by_hand_are_named_and_rebuilt_from_the_layer_below(
    cli: Cli,
) -> None:
    # Removed by hand or by a storage lifecycle rule, with the logs intact: every reader of
    # the table fails, and `verify` once found nothing.
    removed = {}
    for table in ("silver/fact_stream", "gold/fact_stream", "gold/dim_user"):
        path = sorted((cli.lake / table).rglob("*.parquet"))[-1]
        path.unlink()
        removed[table] = path

    code, _ = cli("verify")
    assert code == 1
    for table, path in removed.items():
        assert any(
            table in line and path.name in line and "missing" in line
            for line in cli.printed.splitlines()
        ), (table, cli.printed)
    code, errors = cli("verify", "--repair")
    assert (code, errors) == (0, [])
    assert cli("verify") == (0, [])
    assert_gold_equals_source(cli.settings)


def test_tables_cut_short_in_their_first_commit_are_created_by_the_next_run(cli: Cli) -> None:
    # What a kill or a full disk during a table's first commit leaves: its data files (here the
    # rows of the lost table: read, they would double gold) and a log without commits, maybe
    # holding the commit's temporary file.
    lake = LakeStorage(url=cli.settings.lake_url)
    silver_rows = table_stats(lake, "silver/fact_stream").rows
    for table in ("silver/fact_stream", "gold/dim_user"):
        for entry in (cli.lake / table / "_delta_log").iterdir():
            entry.unlink()
    (cli.lake / "gold/dim_user/_delta_log/_commit_0b6c8f3e.json.tmp").write_text("{}\n")

    assert cli("run") == (0, [])
    assert cli("verify") == (0, [])
    assert table_stats(lake, "silver/fact_stream").rows == silver_rows
    assert_gold_equals_source(cli.settings)


@pytest.mark.parametrize(
    "target",
    ["bronze/FactStream/date=", "bronze/DimUser/_manifests/", "gold/_state/dim_track/"],
    ids=["bronze-file", "manifest", "gold-state"],
)
def test_a_full_disk_is_one_line_naming_the_file_and_the_next_run_recovers(
    cli: Cli,
    monkeypatch: pytest.MonkeyPatch,
    target: str,
) -> None:
    source_simulate(cli.settings, 1, 9, SimulationRates())

    def full(write: Callable[..., object], path_arg: int) -> Callable[..., object]:
        """`write`, failing with ENOSPC for the files under `target`."""

        def writing(*args: object, **kwargs: object) -> object:
            if target in str(args[path_arg]):
                raise OSError(errno.ENOSPC, "No space left on device")
            return write(*args, **kwargs)

        return writing

    with monkeypatch.context() as disk:
        disk.setattr(pq, "write_table", full(pq.write_table, 1))
        json_write = full(resources.lake._durable_temp_copy, 0)
        disk.setattr(resources.lake, "_durable_temp_copy", json_write)
        code, errors = cli("run")
    assert code == 1
    # One line per failed run (the incremental load, then each repair of a stale day): which
    # asset failed, over which days, the file, and where the whole story is.
    assert errors
    for line in errors:
        assert target in line and "No space left on device" in line
        assert " failed: LakeFileError: cannot write " in line
        assert "full log: run " in line and str(cli.settings.dagster_home) in line

    assert cli("run") == (0, [])
    assert_gold_equals_source(cli.settings)


def test_a_run_that_fails_before_its_first_step_says_why(
    cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk fills up once the command holds the lease: the refresh's run cannot record its
    id in the lease, so it fails before any step, and its line says why (it said only "failed")."""
    json_write = resources.lake._durable_temp_copy
    writes: list[str] = []

    def lease_full_after_the_first(path: str, data: bytes) -> str:
        if "_lease" in str(path) and writes:
            raise OSError(errno.ENOSPC, "No space left on device")
        writes.append(str(path))
        return json_write(path, data)

    monkeypatch.setattr(resources.lake, "_durable_temp_copy", lease_full_after_the_first)
    code, errors = cli("refresh", "--from", str(DAY), "--to", str(DAY), "--tables", "FactStream")
    assert code == 1 and errors
    for line in errors:
        assert "failed: LakeFileError: cannot write " in line and "No space left" in line
        assert "full log: run " in line


def test_streams_of_a_day_missing_from_the_calendar_reach_gold_and_are_named(cli: Cli) -> None:
    """Streams whose date_key the source's DimDate lacks reached gold without a word (nothing
    checked the fact against the calendar). Now they still reach gold, `run` warns naming the
    day and exits 0, and once DimDate holds the day the next `run` rebuilds it: no warning, the
    check passes."""
    source_simulate(cli.settings, 1, 11, SimulationRates(late_fraction=0.0, dirty_fraction=0.0))
    with sqlite3.connect(cli.settings.embedded_source_path) as conn:
        (key,) = conn.execute("SELECT max(date_key) FROM FactStream").fetchone()
        removed = conn.execute("SELECT * FROM DimDate WHERE date_key = ?", (key,)).fetchall()
        conn.execute("DELETE FROM DimDate WHERE date_key = ?", (key,))
    conn.close()
    code, errors = cli("run")
    assert (code, errors) == (0, [])
    day = datetime.strptime(str(key), "%Y%m%d").date()
    lake = LakeStorage(url=cli.settings.lake_url)
    fact = CATALOG.fact
    (streams,) = rows_per_day(lake, gold_path(fact.lake_name), "stream_date", (day, day)).values()
    (warning,) = cli.warned
    assert warning == (
        f"warning: gold/fact_stream: check date_key_in_dim_date failed: {streams:,} rows hold a "
        f"date_key that DimDate lacks ({key}); they are in gold: add those rows to DimDate in the "
        "source, and the next run rebuilds their days"
    )

    with sqlite3.connect(cli.settings.embedded_source_path) as conn:
        conn.executemany(
            f"INSERT INTO DimDate VALUES ({', '.join('?' * len(removed[0]))})", removed
        )
    conn.close()
    code, errors = cli("run")
    assert (code, errors, cli.warned) == (0, [], ())
    assert not unmatched_records(lake, CATALOG).num_rows
    assert_gold_equals_source(cli.settings)


def test_streams_without_a_time_stop_only_their_table(cli: Cli) -> None:
    """A stream without a stream_timestamp (a source without the NOT NULL constraint) has no
    partition: it stopped the whole `run`, every table's load, until the source was corrected.
    Now its table waits, named in one line (exit 1), while the other tables load; once the row
    is corrected the next `run` loads the fact too."""
    source_simulate(cli.settings, 1, 12, SimulationRates(late_fraction=0.0))
    with sqlite3.connect(cli.settings.embedded_source_path) as conn:
        without_constraints(conn, "FactStream")
        conn.execute(
            "INSERT INTO FactStream SELECT max(stream_id) + 1, 1, 1, NULL, 30, 'mobile', NULL "
            "FROM FactStream"
        )
    conn.close()
    runner = copy_runner(cli.settings)
    watermarks = {t.name: runner.store(t).current().watermark for t in CATALOG}
    code, errors = cli("run")
    assert code == 1
    (error,) = errors
    assert error.startswith("error: FactStream: the source holds 1 row without a stream_timestamp")
    after = {t.name: runner.store(t).current().watermark for t in CATALOG}
    assert after["FactStream"] == watermarks["FactStream"]
    assert after["DimUser"] > watermarks["DimUser"]  # the other tables loaded

    with sqlite3.connect(cli.settings.embedded_source_path) as conn:
        conn.execute("DELETE FROM FactStream WHERE stream_timestamp IS NULL")
    conn.close()
    code, errors = cli("run")
    assert (code, errors) == (0, [])
    assert_gold_equals_source(cli.settings)


def test_a_critical_rule_quarantines_its_rows_warns_and_holds_no_gold_back(cli: Cli) -> None:
    """A stream without an id (a source without the NOT NULL constraint) fails the fact's
    critical rule: the row is quarantined and `run` says so in a warning naming the rule, its
    rows, where they are and what to do, while the day's other streams reach gold in the same
    run, and the next `run` is idle. A blocking check held back every gold day of that run
    (exit 1) and the next `run`'s repair built them anyway; bronze's profile did not count the
    row (a NULL key), so every `run` re-extracted its day."""
    fact = CATALOG["FactStream"]
    with sqlite3.connect(cli.settings.embedded_source_path) as conn:
        without_constraints(conn, "FactStream")
        conn.execute(
            "INSERT INTO FactStream SELECT NULL, user_id, track_id, date_key, listen_duration, "
            "device_type, stream_timestamp FROM FactStream WHERE date(stream_timestamp) = ? "
            "LIMIT 1",
            (str(DAY),),
        )
        (streams,) = conn.execute(
            "SELECT count(*) FROM FactStream WHERE stream_id IS NOT NULL "
            "AND date(stream_timestamp) = ?",
            (str(DAY),),
        ).fetchone()
    code, errors = cli("run")
    assert code == 0 and not errors
    (warning,) = cli.warned
    assert "check stream_id_not_null failed: 1 row failing" in warning
    assert quarantine_path(fact) in warning and "correct or delete those rows" in warning
    lake = LakeStorage(url=cli.settings.lake_url)
    day = fact.gold.date_column
    assert rows_per_day(lake, gold_path(fact.lake_name), day, (DAY, DAY)) == {DAY: streams}
    assert rows_per_day(lake, quarantine_path(fact), CHANGE_DATE, (DAY, DAY)) == {DAY: 1}
    code, errors = cli("run")
    assert (code, errors, cli.warned) == (0, [], ())
    assert json.loads(cli.printed) == {"incremental": [], "repaired": []}
