"""The run launcher of the CLI's instance (`resources/dagster_launcher.py`): a launched run
executes in a process of its own (forked from a warm fork server, no code server needed),
terminating it cancels it there, even when the launching process ignores SIGINT, and a run whose
worker is killed is failed by Dagster's run monitoring instead of staying in progress."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from dagster import DagsterEventType, DagsterInstance, DagsterRun, DagsterRunStatus, RunsFilter
from dagster._core.launcher import WorkerStatus
from dagster._daemon.monitoring.run_monitoring import monitor_started_run

from resources.dagster_launcher import PRELOADED, WORKER_TAG, worker_tag
from resources.dagster_storage import BATCH_SIZE_VARIABLE
from resources.process_identity import ProcessIdentity, this_machine
from spotify_assets.cli.commands import source_simulate
from spotify_assets.orchestration import ingest
from spotify_assets.orchestration.settings import Settings
from tests.helpers.launched_job import (
    WAIT_SECONDS,
    cli_instance,
    launch,
    never_starting_job,
    run_config,
    terminated_status,
    wait_for,
    wait_for_op,
    worker_job,
)
from tests.helpers.paths import REPO
from tests.helpers.source import DIRTY, SEED

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
    assert worker == ProcessIdentity.parse(run.tags[WORKER_TAG]).pid
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


def test_a_run_whose_worker_is_killed_is_failed_at_once(tmp_path: Path) -> None:
    """A SIGKILLed worker cannot report its run's end: the run stayed STARTED until run
    monitoring's next poll (for ever without it), holding the run queue's one writer slot."""
    instance = cli_instance(tmp_path / "home")
    marker = tmp_path / "pid"
    run_id = launch(instance, marker, hold=True)
    worker = wait_for_op(marker)
    wait_for(instance, run_id, {DagsterRunStatus.STARTED})

    os.kill(worker, signal.SIGKILL)

    wait_for(instance, run_id, {DagsterRunStatus.FAILURE})
    assert _failure_message(instance, run_id).startswith(f"its worker (pid {worker}) ended")


def test_a_run_whose_worker_dies_before_it_starts_is_failed_at_once(tmp_path: Path) -> None:
    """A worker killed while it loads the code location leaves its run STARTING: Dagster's run
    monitoring checks the worker only of a STARTED run, and failed this one only after its
    start timeout (180 s; for ever without the daemon)."""
    instance = cli_instance(tmp_path / "home")
    run_id = launch(instance, tmp_path / "pid", hold=False, loads=never_starting_job)
    starting = wait_for(instance, run_id, {DagsterRunStatus.STARTING})
    worker = ProcessIdentity.parse(starting.tags[WORKER_TAG]).pid

    os.kill(worker, signal.SIGKILL)

    wait_for(instance, run_id, {DagsterRunStatus.FAILURE})
    assert _failure_message(instance, run_id).startswith(f"its worker (pid {worker}) ended")


def test_run_monitoring_fails_a_started_run_whose_worker_is_gone(tmp_path: Path) -> None:
    """A worker gone with the process that launched it (`dg dev` SIGKILLed): the daemon's run
    monitoring, started again, asks the launcher and fails the run."""
    instance = cli_instance(tmp_path / "home")
    assert instance.run_monitoring_enabled
    gone = subprocess.Popen(["sleep", "60"])
    tags = worker_tag(gone.pid)
    gone.kill()
    gone.wait()
    run = instance.create_run_for_job(
        job_def=worker_job,
        tags=tags,
        run_config=run_config(tmp_path / "pid", hold=False),
        status=DagsterRunStatus.STARTED,
    )
    (record,) = instance.get_run_records(RunsFilter(run_ids=[run.run_id]))

    # No workspace: it serves only to resume a run, which the instance does not (0 attempts).
    monitor_started_run(instance, None, record, logging.getLogger(__name__))  # ty: ignore[invalid-argument-type]

    assert instance.get_run_by_id(run.run_id).status is DagsterRunStatus.FAILURE


def test_terminating_a_run_whose_worker_is_gone_interrupts_no_other_process(
    tmp_path: Path,
) -> None:
    """A worker killed, or gone with a SIGKILLed `dg dev`, leaves its run STARTED until run
    monitoring's next poll, and its pid may name another process by then (pids wrap): Terminate
    in the UI must not interrupt that one, and ends the run, which nothing else would end."""
    instance = cli_instance(tmp_path / "home")
    # Blocks SIGINT, so a SIGINT sent to it stays pending, and reports its pending signals.
    holds_sigint = (
        "import signal, sys; signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT});"
        " print('ready', flush=True); sys.stdin.readline();"
        " print(signal.SIGINT in signal.sigpending(), flush=True)"
    )
    bystander = subprocess.Popen(
        [sys.executable, "-c", holds_sigint],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert bystander.stdout is not None and bystander.stdout.readline().strip() == "ready"
        gone = ProcessIdentity(bystander.pid, started=1, machine=this_machine())  # pid reused
        run = instance.create_run_for_job(
            job_def=worker_job,
            run_config=run_config(tmp_path / "pid", hold=False),
            tags={WORKER_TAG: str(gone)},
            status=DagsterRunStatus.STARTED,
        )

        instance.run_launcher.terminate(run.run_id)

        interrupted, _ = bystander.communicate("\n", timeout=WAIT_SECONDS)
    finally:
        bystander.kill()
        bystander.wait()
    assert interrupted.strip() == "False"
    assert instance.get_run_by_id(run.run_id).status is DagsterRunStatus.CANCELED


def test_runs_this_launcher_did_not_start_are_left_to_the_lake_lease(tmp_path: Path) -> None:
    """A CLI command's in-process run has no worker of ours: monitoring must not fail it."""
    instance = cli_instance(tmp_path / "home")
    run = instance.create_run_for_job(
        job_def=worker_job, run_config=run_config(tmp_path / "pid", hold=False)
    )

    assert instance.run_launcher.check_run_worker_health(run).status is WorkerStatus.RUNNING


def test_a_run_of_a_killed_cli_command_is_failed_by_the_next_command(
    loaded_lakehouse: Settings,
) -> None:
    """A CLI command executes its runs in its own process: killed just as one started (before
    the run took the lake lease, which would have named it), the run stayed STARTED for ever and
    held the run queue's one writer slot. Each CLI run names its process; the next command with
    work fails the runs of processes gone, and leaves the living's alone."""
    with DagsterInstance.get() as instance:
        built = instance.get_runs()  # by this test process (the session's loaded home)
        assert built
        assert {ProcessIdentity.parse(r.tags[WORKER_TAG]).pid for r in built} == {os.getpid()}
        killed = subprocess.Popen(["sleep", "60"])
        tags = {**built[0].tags, **worker_tag(killed.pid)}
        killed.kill()
        killed.wait()
        stale, living = (
            instance.add_run(
                DagsterRun(job_name=built[0].job_name, status=DagsterRunStatus.STARTED, tags=t)
            ).run_id
            for t in (tags, built[0].tags)
        )

        source_simulate(loaded_lakehouse, 1, SEED, DIRTY)
        ingest.incremental(loaded_lakehouse, instance)

        assert instance.get_run_by_id(stale).status is DagsterRunStatus.FAILURE
        assert instance.get_run_by_id(living).status is DagsterRunStatus.STARTED


def _failure_message(instance: DagsterInstance, run_id: str) -> str:
    (failure,) = instance.get_records_for_run(run_id, of_type=DagsterEventType.RUN_FAILURE).records
    assert failure.event_log_entry.dagster_event is not None
    return failure.event_log_entry.dagster_event.message or ""


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
