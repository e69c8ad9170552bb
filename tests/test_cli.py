"""`spotify-lakehouse source …` as a user runs it: JSON out, clear errors, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from spotify_assets.catalog.tables import CATALOG
from spotify_assets.cli import main
from spotify_assets.orchestration.resources import copy_runner
from spotify_assets.orchestration.settings import Settings

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
    assert (home / "source.db").exists()
    assert created["history"] == ["2026-01-01", "2026-04-01"]
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
    assert main([*args, "--force", "--seed", "9"]) == 0
    capsys.readouterr()
    assert run_json(capsys, "source", "stats")["meta"]["seed"] == "9"


def test_commands_on_a_missing_source_say_what_to_do(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["source", "stats"]) == 2
    assert "spotify-lakehouse source init" in capsys.readouterr().err


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
    assert incremental["FactStream"]["window"] == f"[{end} 00:00:00, {end + timedelta(2)} 00:00:00)"
    # Late streams fell into days already loaded: reconciliation found them and refreshed them.
    repaired = {load["table"]: load for load in result["repaired"]}
    assert set(repaired) == {"FactStream"} and repaired["FactStream"]["rows"] > 0

    stats = run_json(capsys, "source", "stats")["tables"]
    settings = Settings.from_env()
    streams = copy_runner(settings).store(CATALOG["FactStream"])
    assert streams.read_all().num_rows == stats["FactStream"]["rows"]

    again = run_json(capsys, "run")
    assert {load["rows"] for load in again["incremental"] if load["table"] != "DimDate"} == {0}
    assert again["repaired"] == []
    first = (end - timedelta(days=5)).isoformat()
    run_json(capsys, "refresh", "--from", first, "--to", end.isoformat(), "--tables", "FactStream")
    assert streams.read_all().num_rows == stats["FactStream"]["rows"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["refresh", "--from", "2026-03-02", "--to", "2026-03-01"], "before --from"),
        (["refresh", "--from", "2026-03-01", "--to", "2999-01-01"], "in the future"),
        (["run", "--tables", "DimNope"], "unknown table 'DimNope'"),
        (["run", "--tables", "DimUser;DROP"], "unknown table"),
    ],
)
def test_bad_run_arguments_fail_clearly(
    home: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert main(["source", "init", "--scale", "0.001", "--end-date", "2026-04-01"]) == 0
    capsys.readouterr()
    assert main(argv) == 2
    assert message in capsys.readouterr().err
