"""The run launcher of the CLI's instance (`resources/dagster_launcher.py`): a launched run
executes in a process of its own (forked from a warm fork server, no code server needed), and
terminating it cancels it there."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dagster import DagsterInstance, DagsterRun, DagsterRunStatus, reconstructable

from resources.dagster_launcher import PRELOADED, WORKER_PID_TAG
from resources.dagster_storage import BATCH_SIZE_VARIABLE
from spotify_assets.cli.commands import dagster_instance
from spotify_assets.orchestration.settings import Settings
from tests.helpers.launched_job import worker_job

pytestmark = pytest.mark.timeout(300)

# A guard against a run that never gets there, not a measure: a few seconds on a quiet machine.
WAIT_SECONDS = 180


@pytest.fixture
def instance(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> DagsterInstance:
    """The instance `spotify-lakehouse` creates under a fresh SPOTIFY_HOME."""
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    monkeypatch.delenv(BATCH_SIZE_VARIABLE, raising=False)
    return dagster_instance(Settings.from_env({"SPOTIFY_HOME": str(tmp_path / "home")}))


def launch(instance: DagsterInstance, marker: Path, hold: bool) -> str:
    run = instance.create_run_for_job(
        job_def=worker_job,
        run_config={"ops": {"record_pid": {"config": {"marker": str(marker), "hold": hold}}}},
        job_code_origin=reconstructable(worker_job).get_python_origin(),
    )
    # No workspace: Dagster's default launcher would need a code server to start it.
    instance.launch_run(run.run_id, workspace=None)  # ty: ignore[invalid-argument-type]
    return run.run_id


def wait_for(instance: DagsterInstance, run_id: str, statuses: set[DagsterRunStatus]) -> DagsterRun:
    deadline = time.monotonic() + WAIT_SECONDS
    while (run := instance.get_run_by_id(run_id)) is not None and run.status not in statuses:
        assert time.monotonic() < deadline, f"run {run_id} still {run.status}"
        time.sleep(0.2)
    assert run is not None
    return run


def test_a_launched_run_executes_in_a_process_of_its_own(
    instance: DagsterInstance, tmp_path: Path
) -> None:
    marker = tmp_path / "pid"
    run_id = launch(instance, marker, hold=False)

    run = wait_for(instance, run_id, {DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE})

    assert run.status is DagsterRunStatus.SUCCESS
    worker = int(marker.read_text())
    assert worker == int(run.tags[WORKER_PID_TAG])
    assert worker != os.getpid()


def test_terminating_a_launched_run_cancels_it(instance: DagsterInstance, tmp_path: Path) -> None:
    marker = tmp_path / "pid"
    run_id = launch(instance, marker, hold=True)
    deadline = time.monotonic() + WAIT_SECONDS
    while not marker.exists():  # the op is running
        assert time.monotonic() < deadline, "the run never reached its op"
        time.sleep(0.2)

    assert instance.run_launcher.terminate(run_id)

    run = wait_for(instance, run_id, {DagsterRunStatus.CANCELED, DagsterRunStatus.FAILURE})
    assert run.status is DagsterRunStatus.CANCELED


def test_the_fork_server_preloads_only_libraries_that_start_no_thread() -> None:
    """A fork keeps only the forking thread: a library whose import starts one would be broken
    in every run."""
    count = "import os; print(len(os.listdir('/proc/self/task')))"
    imports = "; ".join(f"import {module}" for module in PRELOADED)
    threads = subprocess.run(
        [sys.executable, "-c", f"{imports}; {count}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert threads.strip() == "1"
