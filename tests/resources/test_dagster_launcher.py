"""The run launcher of the CLI's instance (`resources/dagster_launcher.py`): a launched run
executes in a process of its own (forked from a warm fork server, no code server needed), and
terminating it cancels it there, even when the launching process ignores SIGINT."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from dagster import DagsterRunStatus

from resources.dagster_launcher import PRELOADED, WORKER_PID_TAG
from resources.dagster_storage import BATCH_SIZE_VARIABLE
from tests.helpers.launched_job import cli_instance, launch, terminated_status, wait_for
from tests.helpers.paths import REPO

pytestmark = pytest.mark.timeout(300)

# How a script's background job starts a command: SIGINT ignored, inherited by its children.
BACKGROUND_JOB = ["sh", "-c", 'trap "" INT; exec "$0" "$@"']


@pytest.fixture(autouse=True)
def no_instance_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    monkeypatch.delenv(BATCH_SIZE_VARIABLE, raising=False)


def test_a_launched_run_executes_in_a_process_of_its_own(tmp_path: Path) -> None:
    instance = cli_instance(tmp_path / "home")
    marker = tmp_path / "pid"
    run_id = launch(instance, marker, hold=False)

    run = wait_for(instance, run_id, {DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE})

    assert run.status is DagsterRunStatus.SUCCESS
    worker = int(marker.read_text())
    assert worker == int(run.tags[WORKER_PID_TAG])
    assert worker != os.getpid()


def test_terminating_a_launched_run_cancels_it(tmp_path: Path) -> None:
    assert terminated_status(tmp_path / "home") is DagsterRunStatus.CANCELED


def test_terminating_a_run_launched_by_a_background_job_cancels_it(tmp_path: Path) -> None:
    """`dg dev &` in a script: its daemon, and so the fork server, start with SIGINT ignored."""
    home = tmp_path / "home"
    home.mkdir()
    launcher = [sys.executable, "-m", "tests.helpers.launched_job", str(home)]
    done = subprocess.run(
        BACKGROUND_JOB + launcher, cwd=REPO, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[-1] == DagsterRunStatus.CANCELED.value


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
