"""Partitions follow the data: the partition start is configuration, a row older
than it fails the load in one line, rows after the last partition are reported, and the
simulator never moves the source's clock past the current UTC time."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterInstance

from spotify_assets.cli import main
from spotify_assets.cli.commands import instance_config
from spotify_assets.orchestration import ingest
from spotify_assets.orchestration.definitions import build_definitions
from spotify_assets.orchestration.resources import copy_runner, source_database
from spotify_assets.orchestration.settings import Settings
from tests.helpers.gold_reference import assert_gold_equals_source, keep_initial_dimensions


@pytest.fixture
def today() -> date:
    """The UTC day when the test starts: a module's constant went stale when a suite crossed
    midnight (tomorrow was then today)."""
    return datetime.now(UTC).date()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("SPOTIFY_SOURCE_ODBC", "SPOTIFY_CAPTURE_MODES", "SPOTIFY_PARTITION_START"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SPOTIFY_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home" / "dagster"))
    (tmp_path / "home" / "dagster").mkdir(parents=True)
    (tmp_path / "home" / "dagster" / "dagster.yaml").write_text(instance_config())
    return tmp_path / "home"


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> object:
    assert main(list(argv)) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def fails(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """The one error line of a command that exits 2."""
    assert main(list(argv)) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = [line for line in err.splitlines() if line.startswith("error: ")]
    return line


def init(capsys: pytest.CaptureFixture[str], end: date, days: int) -> dict:
    argv = ["source", "init", "--scale", "0.002", "--end-date", end.isoformat()]
    return run_json(capsys, *argv, "--history-days", str(days))  # type: ignore[return-value]


def loads(result: object) -> dict[str, dict]:
    return {load["table"]: load for load in result["incremental"]}  # type: ignore[index]


@pytest.mark.timeout(600)  # a load and a run to gold: minutes when the machine is busy
def test_history_before_2026_keeps_its_days_through_gold(
    home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 2025 history is loaded on its own days (it used to land on 2026-01-01). The run happens
    on the history's last day: run today, it would also cover every empty day since (years of
    partitions load the same way, only slower: benchmarks/bench_history.py times three years)."""
    monkeypatch.setattr(ingest, "_today", lambda: date(2025, 6, 1))
    created = init(capsys, date(2025, 6, 1), 21)
    start = date(2025, 6, 1) - timedelta(days=21)
    assert created["partition_start"] == start.isoformat()
    settings = Settings.from_env()
    assert settings.partition_start == start
    graph = build_definitions(settings).resolve_asset_graph()
    bronze = graph.get(AssetKey(["bronze", settings.catalog.fact.name]))
    assert bronze.partitions_def.start.date() == start  # the UI shows the data's days only
    keep_initial_dimensions(settings)

    initial = loads(run_json(capsys, "run"))
    assert initial["FactStream"]["watermark"] == "2025-06-01 00:00:00"
    assert_gold_equals_source(settings)


def test_partition_start_variable_wins_and_older_rows_fail_the_run(
    home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    init(capsys, date(2026, 4, 1), 10)
    assert Settings.from_env().partition_start == date(2026, 3, 22)  # recorded by init
    monkeypatch.setenv("SPOTIFY_PARTITION_START", "2026-03-25")
    line = fails(capsys, "run")
    assert "FactStream" in line or "Dim" in line
    assert "2026-03-22" in line and "SPOTIFY_PARTITION_START" in line and "2026-03-25" in line
    assert not DagsterInstance.get().get_runs()  # refused before any run started

    monkeypatch.setenv("SPOTIFY_PARTITION_START", "March")
    assert "SPOTIFY_PARTITION_START='March'" in fails(capsys, "run")


def test_a_row_older_than_the_partition_start_is_never_re_dated(
    home: Path, capsys: pytest.CaptureFixture[str], today: date
) -> None:
    init(capsys, today - timedelta(days=1), 3)
    run_json(capsys, "run")
    settings = Settings.from_env()
    with source_database(settings).session() as session:
        session.execute(
            "INSERT INTO FactStream (stream_id, user_id, track_id, date_key, listen_duration, "
            "device_type, stream_timestamp) VALUES (999999, 1, 1, 19700101, 60, 'mobile', "
            "'1970-01-01 00:00:01.000')"
        )
    line = fails(capsys, "run")
    assert line == (
        "error: FactStream: the source holds rows from 1970-01-01 00:00:01, before the partition "
        f"start {today - timedelta(days=4)} (SPOTIFY_PARTITION_START): set it to 1970-01-01 or "
        "earlier"
    )
    fact = settings.catalog.fact
    store = copy_runner(settings).store(fact)
    assert 999999 not in store.read_all()["stream_id"].to_pylist()


def test_refresh_before_the_partition_start_fails_in_one_line(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    init(capsys, date(2026, 4, 1), 10)
    line = fails(capsys, "refresh", "--from", "2025-12-01", "--to", "2025-12-05")
    assert line == (
        "error: --from 2025-12-01: expected the partition start 2026-03-22 "
        "(SPOTIFY_PARTITION_START) or later, or set the partition start earlier"
    )
    assert "2026-03-22" in fails(capsys, "refresh", "--from", "2026-03-21", "--to", "2026-03-23")
    assert not DagsterInstance.get().get_runs()


def test_the_source_clock_never_passes_the_current_time(
    home: Path, capsys: pytest.CaptureFixture[str], today: date
) -> None:
    tomorrow = today + timedelta(days=1)
    expected = f"--end-date {tomorrow}: expected today ({today}, UTC) or earlier"
    assert expected in fails(capsys, "source", "init", "--end-date", tomorrow.isoformat())
    init(capsys, today - timedelta(days=2), 3)
    assert "room for 2 whole days" in fails(capsys, "source", "simulate", "--days", "3")
    run_json(capsys, "source", "simulate", "--days", "2")
    assert "room for 0 whole days" in fails(capsys, "source", "simulate", "--days", "1")


def test_rows_after_the_last_partition_are_reported_until_they_load(
    home: Path, capsys: pytest.CaptureFixture[str], today: date
) -> None:
    """A source clock ahead of the wall clock (set by hand: the simulator refuses) and a stream
    of 2100: `run` loads what has a partition and reports the rest, run after run."""
    init(capsys, today, 3)
    settings = Settings.from_env()
    tomorrow = datetime.combine(today + timedelta(days=1), datetime.min.time())
    with source_database(settings).session() as session:
        session.set_clock(tomorrow + timedelta(hours=6))
        session.execute("UPDATE DimUser SET country = 'SE', updated_at = ? WHERE user_id = 1",
                        [f"{tomorrow.date()} 05:00:00.000"])  # fmt: skip
        for stream_id, at in ((999998, "2100-01-01 00:00:00.000"),
                              (999999, f"{tomorrow.date()} 05:00:00.000")):  # fmt: skip
            session.execute(
                "INSERT INTO FactStream (stream_id, user_id, track_id, date_key, "
                "listen_duration, device_type, stream_timestamp) "
                f"VALUES ({stream_id}, 1, 1, 20000101, 60, 'mobile', '{at}')"
            )
    result = loads(run_json(capsys, "run"))
    assert result["FactStream"]["not_loaded_yet_rows"] == 2
    assert result["FactStream"]["not_loaded_yet_oldest"] == f"{tomorrow.date()} 05:00:00"
    assert result["DimUser"]["not_loaded_yet_rows"] == 1
    assert result["DimArtist"]["not_loaded_yet_rows"] == 0
    # Waiting rows alone keep the next run idle (it was a full run, every time), still reported.
    runs = len(DagsterInstance.get().get_runs())
    for _ in range(2):
        again = run_json(capsys, "run")
        assert again["incremental"] == again["repaired"] == []  # type: ignore[index]
        waiting = {w.pop("table"): w for w in again["not_loaded_yet"]}  # type: ignore[index]
        assert waiting == {
            "DimUser": {k: result["DimUser"][k] for k in waiting["DimUser"]},
            "FactStream": {"not_loaded_yet_rows": 2,
                           "not_loaded_yet_oldest": f"{tomorrow.date()} 05:00:00"},
        }  # fmt: skip
        assert len(DagsterInstance.get().get_runs()) == runs
    store = copy_runner(settings).store(settings.catalog.fact)
    assert store.current().watermark == tomorrow
