"""`spotify-lakehouse source …` as a user runs it: JSON out, clear errors, exit codes."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest
from dagster import DagsterInstance, DagsterRunStatus

from resources.dagster_launcher import ForkedRunLauncher
from resources.lake import LakeStorage
from resources.lease import lake_writer
from resources.source_reader import read_arrow
from spotify_assets.bronze.dialects import Dialect
from spotify_assets.catalog.tables import CATALOG
from spotify_assets.cli import INTERRUPTED, commands, main
from spotify_assets.cli.commands import (
    INSTANCE_CONFIGS_WRITTEN,
    dagster_instance,
    demo_settings,
    instance_config,
)
from spotify_assets.orchestration.resources import copy_runner
from spotify_assets.orchestration.settings import Settings
from tests.helpers.gold_reference import (
    assert_dimensions_equal_source,
    assert_gold_equals_source,
    small_source,
)
from tests.helpers.processes import CLI, Lakehouse, cli_imports, run_until_bronze

SECRET = "not-in-any-output-42"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SPOTIFY_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SPOTIFY_SOURCE_ODBC", raising=False)
    monkeypatch.delenv("SPOTIFY_CAPTURE_MODES", raising=False)
    return tmp_path / "home"


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    assert main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


def test_init_simulate_stats(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    created = run_json(
        capsys, "source", "init", "--scale", "0.002", "--seed", "3", "--end-date", "2026-04-01"
    )
    assert created["history"] == ["2026-01-01", "2026-04-01"]
    # Loaded with the rollback journal, then left in WAL mode: readers and the simulator's
    # writes do not block each other.
    db = sqlite3.connect(home / "source.db")
    assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    db.close()
    before = run_json(capsys, "source", "stats")
    assert before["clock"] == "2026-04-01 00:00:00"
    assert before["meta"]["seed"] == "3"
    assert before["tables"]["FactStream"]["rows"] == 10_000
    assert before["tables"]["DimUser"]["change_rows"] == 0

    simulated = run_json(capsys, "source", "simulate", "--days", "2")
    assert simulated["to"] == "2026-04-03 00:00:00" and simulated["rows_changed"] > 0
    after = run_json(capsys, "source", "stats")
    assert after["tables"]["FactStream"]["rows"] > before["tables"]["FactStream"]["rows"]
    assert after["tables"]["DimUser"]["change_rows"] > 0
    assert after["tables"]["DimDate"]["rows"] == before["tables"]["DimDate"]["rows"] + 2


def test_init_refuses_to_overwrite_without_force(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["source", "init", "--scale", "0.001", "--end-date", "2026-04-01"]
    assert main(args) == 0
    assert main(args) == 2
    assert "--force" in capsys.readouterr().err
    # A table of the user's own in the same file: --force recreated the source by deleting the
    # file, and the user's table with it.
    with sqlite3.connect(home / "source.db") as db:
        db.execute("CREATE TABLE my_notes (note TEXT)")
        db.execute("INSERT INTO my_notes VALUES ('kept')")
    db.close()
    assert main([*args, "--force", "--seed", "9"]) == 0
    capsys.readouterr()
    assert run_json(capsys, "source", "stats")["meta"]["seed"] == "9"
    db = sqlite3.connect(home / "source.db")
    assert db.execute("SELECT note FROM my_notes").fetchall() == [("kept",)]
    assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    db.close()


def test_commands_on_a_missing_source_say_what_to_do(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["source", "stats"]) == 2
    assert "spotify-lakehouse source init" in capsys.readouterr().err


# A SQLite file made by hand, as with the `sqlite3` shell: the user's own DDL, text dates.
OWN_SQLITE = """
CREATE TABLE DimUser (user_id INTEGER PRIMARY KEY, user_name TEXT, country TEXT,
    subscription_type TEXT, start_date DATE, updated_at TIMESTAMP NOT NULL);
CREATE TABLE DimArtist (artist_id INTEGER, artist_name TEXT, genre TEXT, country TEXT,
    updated_at TIMESTAMP NOT NULL);
CREATE TABLE DimTrack (track_id INTEGER, track_name TEXT, artist_id INTEGER, album_name TEXT,
    duration_sec INTEGER, release_date DATE, updated_at TIMESTAMP NOT NULL);
CREATE TABLE FactStream (stream_id INTEGER PRIMARY KEY, user_id INTEGER, track_id INTEGER,
    date_key INTEGER, listen_duration INTEGER, device_type TEXT, stream_timestamp TIMESTAMP);
INSERT INTO DimUser VALUES (1, 'ann', 'SE', 'Free', '2026-01-01', '2026-03-01 10:00:00');
"""


def test_own_sqlite_tables_attached_say_what_is_missing(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`source attach` names the missing column, then the missing table, in one line; once
    attached, `source stats` reports no simulated clock and `source simulate` refuses in one
    line (they raised a TypeError: the clock `source init` sets is empty)."""
    home.mkdir()
    db = sqlite3.connect(home / "source.db")
    db.executescript(OWN_SQLITE)
    assert main(["source", "attach"]) == 2
    assert capsys.readouterr().err.startswith(
        "error: DimUser: the source has no column(s) end_date"
    )
    db.execute("ALTER TABLE DimUser ADD COLUMN end_date DATE")
    assert main(["source", "attach"]) == 2
    assert capsys.readouterr().err.startswith("error: DimDate: the source has no such table")
    db.execute(
        "CREATE TABLE DimDate (date_key INTEGER, date DATE, day INTEGER, month INTEGER, "
        "year INTEGER, weekday TEXT)"
    )
    db.close()
    added = run_json(capsys, "source", "attach")["added"]
    assert added == ["source_clock", "source_meta", "DimUser_changes", "DimArtist_changes",
                     "DimTrack_changes"]  # fmt: skip
    stats = run_json(capsys, "source", "stats")
    assert stats["clock"] is None
    assert stats["tables"]["DimUser"]["rows"] == 1
    assert main(["source", "simulate", "--days", "1"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        "error: source simulate: the source has no simulated clock (source_clock is empty: "
        "`source init` did not create it): it simulates only a source `source init` made"
    ]


def test_init_on_own_tables_refuses_in_one_line(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A database holding a user's own tables, not attached: `source init` refuses and names
    `source attach` (it raised 'table DimUser already exists' with a traceback)."""
    home.mkdir()
    db = sqlite3.connect(home / "source.db")
    db.executescript(OWN_SQLITE)
    db.close()
    assert main(["source", "init", "--scale", "0.001"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: the source already holds tables of the catalog, not made by `source init`: "
        "to load your own rows run `spotify-lakehouse source attach`; --force drops them"
    ]


def test_own_tables_attached_are_never_dropped_unasked(
    home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A user's own tables, attached, named by SPOTIFY_SOURCE_ODBC: `demo` (which recreates
    its source) refuses in one line and `source init` without --force names them as the
    user's; the rows stay (the demo dropped them, and init called them Spotify tables)."""
    own = home.parent / "own.db"
    home.mkdir()
    db = sqlite3.connect(own)
    db.executescript(OWN_SQLITE)
    db.execute("ALTER TABLE DimUser ADD COLUMN end_date DATE")
    db.execute("CREATE TABLE DimDate (date_key INTEGER, date DATE, day INTEGER, month INTEGER, "
               "year INTEGER, weekday TEXT)")  # fmt: skip
    db.close()
    monkeypatch.setenv("SPOTIFY_SOURCE_ODBC", f"Driver=SQLite3;Database={own}")
    run_json(capsys, "source", "attach")
    assert main(["demo"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: the demo recreates the source it runs on, and Driver=SQLite3;Database={own} "
        "holds tables `source init` did not make (your own rows): unset SPOTIFY_SOURCE_ODBC to "
        "run the demo on a source of its own"
    ]
    assert main(["source", "init", "--scale", "0.001"]) == 2
    assert "not made by `source init`" in capsys.readouterr().err
    assert run_json(capsys, "source", "stats")["tables"]["DimUser"]["rows"] == 1


def test_console_script_reports_bad_configuration_without_the_password(home: Path) -> None:
    env = {
        "SPOTIFY_HOME": str(home),
        "SPOTIFY_SOURCE_ODBC": (
            f"Driver={{PostgreSQL Unicode}};Server=127.0.0.1;Port=1;Pwd={SECRET}"
        ),
        "PATH": "/usr/bin:/bin",
    }
    result = subprocess.run(
        [sys.executable, "-m", "spotify_assets.cli", "source", "stats"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "cannot connect to the source" in result.stderr
    assert SECRET not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.timeout(600)  # runs and refreshes through the CLI: minutes when the machine is busy
def test_run_and_refresh_keep_bronze_equal_to_the_source(
    home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))
    (home / "dagster").mkdir(parents=True)
    end = (datetime.now(UTC) - timedelta(days=2)).date()
    run_json(capsys, "source", "init", "--scale", "0.002", "--end-date", end.isoformat(),
             "--history-days", "21")  # fmt: skip
    initial = {load["table"]: load for load in run_json(capsys, "run")["incremental"]}
    assert initial["FactStream"]["rows"] == 10_000
    assert initial["FactStream"]["watermark"] == f"{end} 00:00:00"

    run_json(capsys, "source", "simulate", "--days", "2", "--late-fraction", "0.2")
    result = run_json(capsys, "run")
    incremental = {load["table"]: load for load in result["incremental"]}
    assert incremental["DimUser"]["window"] == f"[{end} 00:00:00, {end + timedelta(2)} 00:00:00)"
    # Late streams fell into days already loaded: the same run re-extracted those days.
    start, end_of_window = incremental["FactStream"]["window"].strip("[)").split(", ")
    assert start < f"{end} 00:00:00" and end_of_window == f"{end + timedelta(2)} 00:00:00"
    assert result["repaired"] == []

    stats = run_json(capsys, "source", "stats")["tables"]
    settings = Settings.from_env()
    streams = copy_runner(settings).store(CATALOG["FactStream"])
    assert streams.read_all().num_rows == stats["FactStream"]["rows"]

    again = run_json(capsys, "run")
    # Nothing to copy: an idle run reports no load (or, when it runs, loads of zero rows).
    assert {load["rows"] for load in again["incremental"] if load["table"] != "DimDate"} <= {0}
    assert again["repaired"] == []
    first = (end - timedelta(days=5)).isoformat()
    run_json(capsys, "refresh", "--from", first, "--to", end.isoformat(), "--tables", "FactStream")
    assert streams.read_all().num_rows == stats["FactStream"]["rows"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["refresh", "--from", "2026-03-02", "--to", "2026-03-01"],
         "--to 2026-03-01: expected a day on or after --from 2026-03-02"),
        (["refresh", "--from", "2026-03-01", "--to", "2999-01-01"],
         "--to 2999-01-01: expected today ("),
        (["run", "--tables", "DimUser;DROP"], "--tables DimUser;DROP: expected a table"),
    ],
)  # fmt: skip
def test_bad_run_arguments_fail_clearly(
    home: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert main(["source", "init", "--scale", "0.001", "--end-date", "2026-04-01"]) == 0
    capsys.readouterr()
    assert main(argv) == 2
    assert message in capsys.readouterr().err


# Every mistake a newcomer makes on the command line: one line on stderr naming the option (as
# typed) or the setting, what was expected and what to do; exit code 2; nothing on stdout.
@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["refresh", "--from", "2026/11/20", "--to", "2026-11-21"], {},
         "--from 2026/11/20: expected YYYY-MM-DD"),
        (["refresh", "--from", "2026-11-20", "--to", "tomorrow"], {},
         "--to tomorrow: expected YYYY-MM-DD"),
        (["source", "init", "--end-date", "2026-11-31"], {},
         "--end-date 2026-11-31: expected YYYY-MM-DD"),
        (["source", "init", "--scale", "0"], {}, "--scale 0: expected a number above 0"),
        (["source", "simulate", "--days", "0"], {},
         "--days 0: expected a whole number of at least 1"),
        (["source", "simulate", "--days", "1", "--late-fraction", "2"], {},
         "--late-fraction 2: expected a fraction between 0 and 1"),
        (["run", "--tables", "DimNope"], {},
         "--tables DimNope: expected a table of the catalog: DimUser or dim_user, DimArtist or "
         "dim_artist, DimTrack or dim_track, DimDate or dim_date, FactStream or fact_stream"),
        (["refresh", "--from", "2026-11-20", "--to", "2026-11-21", "--tables", "dim_date"], {},
         "--tables DimDate: a snapshot table, copied whole by every `spotify-lakehouse run`; "
         "refresh re-extracts days of DimUser, DimArtist, DimTrack, FactStream"),
        (["refresh", "--from", "2026-11-20"], {}, "the following arguments are required: --to"),
        (["frobnicate"], {},
         "frobnicate: expected a command: source, run, refresh, verify, demo, adf (see "
         "`spotify-lakehouse --help`)"),
        (["source", "frob"], {},
         "source frob: expected a command: init, simulate, stats, attach (see "
         "`spotify-lakehouse source --help`)"),
        (["verify", "--tables", "fact_stream"], {},
         "the source holds no Spotify tables yet (looked in {home}/source.db; SPOTIFY_HOME "
         "defaults to ./.data of the current directory): run `spotify-lakehouse source init`"),
        (["demo"], {"SPOTIFY_LAKE_URL": "{home}/elsewhere"},
         "the demo builds its own lake and Dagster instance under {home}/demo: unset "
         "SPOTIFY_LAKE_URL to run it"),
    ],
)  # fmt: skip
def test_every_cli_mistake_is_one_line_and_exit_code_2(
    home: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    env: dict[str, str],
    message: str,
) -> None:
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value.format(home=home))
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert err == f"error: {message.format(home=home)}\n"
    assert out == ""


@pytest.mark.parametrize(
    "argv", [["--help"], ["source", "simulate", "--days", "0"], ["run", "--tables", "nope"]]
)
def test_help_and_usage_mistakes_load_no_pipeline_library(home: Path, argv: list[str]) -> None:
    # Each costs a large part of a second or more to import (issue 13).
    heavy = ("dagster", "pyspark", "deltalake", "pandas", "sqlalchemy")
    result, loaded = cli_imports(argv, heavy, {**os.environ, "SPOTIFY_HOME": str(home)})
    assert result.returncode == (0 if argv == ["--help"] else 2)
    assert loaded == []


def test_output_that_is_not_a_terminal_has_no_progress_bars_or_telemetry_banner(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "spotify_assets.cli", "source", "init", "--scale", "0.001",
         "--end-date", "2026-04-01"],
        env={"SPOTIFY_HOME": str(home), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert result.returncode == 0 and result.stderr == ""
    # Unset, so the CLI writes its own instance configuration (restored after the test).
    monkeypatch.setenv("DAGSTER_HOME", "")
    instance = dagster_instance(Settings.from_env())
    assert not instance.telemetry_enabled
    instance.dispose()


# The `dagster.yaml` the CLI wrote on 2026-11-26: the run queue only (no warm launcher, no run
# monitoring, Dagster's own storages).
FIRST_INSTANCE_CONFIG = (
    "run_queue:\n  max_concurrent_runs: 4\n  tag_concurrency_limits:\n"
    "    - key: spotify/writer\n      limit: 1\n"
)


def test_a_home_made_by_an_older_version_gets_the_current_instance_configuration(
    home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The CLI wrote `dagster.yaml` only when missing: a home of an older version kept its
    runs cold, without run monitoring, for ever."""
    config = home / "dagster" / "dagster.yaml"
    config.parent.mkdir(parents=True)
    config.write_text(FIRST_INSTANCE_CONFIG)
    monkeypatch.setenv("DAGSTER_HOME", "")  # the CLI's own instance (restored after the test)

    instance = dagster_instance(Settings.from_env())

    assert isinstance(instance.run_launcher, ForkedRunLauncher)
    assert instance.run_monitoring_enabled
    instance.dispose()
    assert config.read_text() == instance_config()
    assert capsys.readouterr().err == ""


def test_the_instance_configuration_this_version_writes_is_recorded() -> None:
    """Else the next version would take a home this one made for a file its user edited."""
    assert hashlib.sha256(instance_config().encode()).hexdigest() in INSTANCE_CONFIGS_WRITTEN


def test_an_edited_instance_configuration_is_kept_and_what_it_lacks_said_once(
    home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = home / "dagster" / "dagster.yaml"
    config.parent.mkdir(parents=True)
    edited = FIRST_INSTANCE_CONFIG.replace("max_concurrent_runs: 4", "max_concurrent_runs: 2")
    config.write_text(edited)
    monkeypatch.setenv("DAGSTER_HOME", "")

    dagster_instance(Settings.from_env()).dispose()

    assert config.read_text() == edited
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"note: {config} was edited: kept as it is; it lacks ")
    assert "run_launcher" in line and "run_monitoring" in line and "run_queue" not in line


def test_demo_starts_from_a_clean_demo_home(home: Path) -> None:
    stale = home / "demo" / "lake" / "bronze" / "FactStream" / "_manifest" / "00000001.json"
    stale.parent.mkdir(parents=True)
    stale.write_text("{}")
    settings = demo_settings(Settings.from_env(), {"SPOTIFY_HOME": str(home)})
    assert settings.home == home / "demo"
    assert settings.lake_url == str(home / "demo" / "lake")
    assert settings.dagster_home == home / "demo" / "dagster"
    assert not (home / "demo").exists()


@pytest.mark.timeout(300)  # a first load interrupted, then a run: a minute when the machine is busy
def test_an_interrupted_run_stops_in_one_line_and_the_next_run_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C once bronze is committed: Dagster fails the step it interrupts, and the command
    then stops (it went on with the next runs and reconciliation's repair before) in one line
    with exit code 130; its Dagster run is failed, not left started, and `run` resumes. A
    terminal sends Ctrl-C to the whole process group: Dagster's log-capture helpers in it
    printed a KeyboardInterrupt traceback above that line."""
    cli = Lakehouse(tmp_path / "home")
    settings = small_source(cli.home)
    with (tmp_path / "output").open("w+") as output:
        process = run_until_bronze(cli, output)
        os.killpg(process.pid, signal.SIGINT)
        assert process.wait(timeout=120) == INTERRUPTED
        output.seek(0)
        lines = output.read().splitlines()
    assert "Traceback" not in "\n".join(lines)
    assert lines[-1].startswith("error: interrupted: the lake keeps every step committed before")
    monkeypatch.setenv("DAGSTER_HOME", str(settings.dagster_home))  # its dagster.yaml names it
    runs = DagsterInstance.from_config(str(settings.dagster_home)).get_runs()
    assert [run.status for run in runs] == [DagsterRunStatus.FAILURE]
    cli("run")
    assert_gold_equals_source(settings)
    assert_dimensions_equal_source(settings)


# A command as a script's background job starts it: SIGINT ignored (a shell's trap, inherited
# through exec; a preexec_fn would fork this multithreaded process, and gRPC's fork handlers
# then write to the child's stderr).
BACKGROUND_JOB = ["sh", "-c", 'trap "" INT; exec "$0" "$@"']


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=lambda s: s.name)
def test_a_writer_interrupted_while_it_waits_for_the_lease_says_so_in_one_line(
    tmp_path: Path, signum: signal.Signals
) -> None:
    """Ctrl-C, or a service manager's SIGTERM, before any Dagster run (here while `run` waits
    for another writer): one line and exit code 130 (a traceback, or no word at all, before).
    Started as a script's background job is, with SIGINT ignored: the command ignored it then
    (until a Dagster run began), and this test hung when the suite ran in the background."""
    cli = Lakehouse(tmp_path / "home")
    env = cli.env | {"SPOTIFY_WRITER_WAIT_SECONDS": "600"}
    with lake_writer(LakeStorage(url=cli.settings.lake_url), "test", 0, print):
        process = subprocess.Popen(
            [*BACKGROUND_JOB, CLI, "run"], env=env, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert process.stderr is not None
        assert process.stderr.readline().startswith("waiting up to 600 s for the lake writer")
        process.send_signal(signum)
        _, err = process.communicate(timeout=60)
    assert process.returncode == INTERRUPTED
    assert err.splitlines() == [
        "error: interrupted: the lake keeps every step committed before it; "
        "`spotify-lakehouse run` resumes from there"
    ]


def test_a_source_failing_before_any_run_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A source read failing while `run` decides what to do (a PostgreSQL server stopped, here a
    table gone): one line, not the error followed by its query on further lines."""
    path = tmp_path / "source.db"
    sqlite3.connect(path).close()
    odbc = f"Driver=SQLite3;Database={path}"
    schema = pa.schema([("date_key", pa.int64())])

    def read_fails(settings: Settings, tables: object) -> None:
        list(read_arrow(odbc, Dialect.SQLITE, 'SELECT "date_key" FROM "DimDate"', schema))

    monkeypatch.setenv("SPOTIFY_HOME", str(tmp_path))
    monkeypatch.setattr(commands, "run", read_fails)
    assert main(["run"]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: reading the source (Driver=SQLite3;Database={path}) with ")
    assert "DimDate" in error and error.count("\n") == 1


# A program ending as the console script does (`sys.exit(main())`, which reads `sys.argv`) or
# calling `main(argv)` as tests and scripts do, holding an object whose finalizer writes when
# the interpreter tears the program's module down.
_MAIN_WITH_A_FINALIZER = """
import sys
from spotify_assets.cli import main
class Finalized:
    def __del__(self) -> None:
        sys.stderr.write("torn down\\n")
held = Finalized()
called, argv = sys.argv[1], sys.argv[2:]
sys.argv = ["spotify-lakehouse", *argv]
sys.exit(main() if called == "as the program" else main(argv))
"""


@pytest.mark.parametrize("called", ["as the program", "with argv"])
@pytest.mark.parametrize(
    ("argv", "code"), [(["adf", "build", "--out", "adf"], 0), (["source", "stats"], 2)]
)
def test_a_command_run_as_the_program_ends_it_without_the_interpreters_teardown(
    home: Path, tmp_path: Path, called: str, argv: list[str], code: int
) -> None:
    """The console script's command ends its process once every exit handler has run, output
    and exit code whole: the interpreter's teardown of its modules (Sail's native state among
    them) cost ~1 CPU s after a run. `main(argv)` returns to its caller's interpreter, which
    goes on."""
    result = subprocess.run(
        [sys.executable, "-c", _MAIN_WITH_A_FINALIZER, called, *argv],
        env={**os.environ, "SPOTIFY_HOME": str(home)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == code, result.stderr
    if code == 0:
        written = json.loads(result.stdout)
        assert written and all((tmp_path / "adf" / name).is_file() for name in written)
    else:
        assert result.stderr.startswith("error: the source holds no Spotify tables yet")
    assert ("torn down" in result.stderr) is (called == "with argv")
