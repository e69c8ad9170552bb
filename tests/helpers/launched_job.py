"""A job for the run launcher's tests (tests/resources/test_dagster_launcher.py), which Dagster
loads again by this file's path in the run's own process, and how they launch, await and
terminate its runs on the CLI's instance."""

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from dagster import (
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    JobDefinition,
    OpExecutionContext,
    in_process_executor,
    job,
    op,
    reconstructable,
)

from resources.dagster_storage import BATCH_SIZE_VARIABLE
from spotify_assets.cli.commands import dagster_instance
from spotify_assets.orchestration.settings import Settings

HOLD_SECONDS = 120  # a held run ends by itself only if the test failed to terminate it
# A guard against a run that never gets there, not a measure: a few seconds on a quiet machine.
WAIT_SECONDS = 180


@op(config_schema={"marker": str, "hold": bool})
def record_pid(context: OpExecutionContext) -> None:
    """Writes the process id of the run's worker, then holds the run if asked (until
    terminated)."""
    Path(context.op_config["marker"]).write_text(str(os.getpid()))
    deadline = time.monotonic() + HOLD_SECONDS
    while context.op_config["hold"] and time.monotonic() < deadline:
        time.sleep(0.1)


@job(executor_def=in_process_executor)  # the op runs in the run's worker process
def worker_job() -> None:
    record_pid()


def never_starting_job() -> JobDefinition:
    """`worker_job` as a run's worker loads it after a long hold: its run stays STARTING."""
    time.sleep(HOLD_SECONDS)
    return worker_job


def cli_instance(home: Path) -> DagsterInstance:
    """The instance `spotify-lakehouse` creates under a fresh SPOTIFY_HOME (the caller has no
    DAGSTER_HOME or batch size set)."""
    assert "DAGSTER_HOME" not in os.environ and BATCH_SIZE_VARIABLE not in os.environ
    return dagster_instance(Settings.from_env({"SPOTIFY_HOME": str(home)}))


def run_config(marker: Path, hold: bool) -> dict[str, object]:
    """`worker_job`'s: where its op writes its process id, and whether it then holds."""
    return {"ops": {"record_pid": {"config": {"marker": str(marker), "hold": hold}}}}


def launch(
    instance: DagsterInstance,
    marker: Path,
    hold: bool,
    loads: Callable[[], JobDefinition] | None = None,
) -> str:
    """Launches `worker_job`, which the run's worker loads by `loads` (a function returning
    it) if given."""
    run = instance.create_run_for_job(
        job_def=worker_job,
        run_config=run_config(marker, hold),
        job_code_origin=reconstructable(loads or worker_job).get_python_origin(),
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


def wait_for_op(marker: Path) -> int:
    """Waits until the launched run's op runs, and returns its worker's process id."""
    deadline = time.monotonic() + WAIT_SECONDS
    while not marker.exists():
        assert time.monotonic() < deadline, "the run never reached its op"
        time.sleep(0.2)
    return int(marker.read_text())


def terminated_status(home: Path) -> DagsterRunStatus:
    """Launches a run that holds until terminated, terminates it once its op runs, and returns
    the status it ends with."""
    instance = cli_instance(home)
    marker = home / "pid"
    run_id = launch(instance, marker, hold=True)
    wait_for_op(marker)
    assert instance.run_launcher.terminate(run_id)
    ended = {DagsterRunStatus.CANCELED, DagsterRunStatus.FAILURE, DagsterRunStatus.SUCCESS}
    return wait_for(instance, run_id, ended).status


if __name__ == "__main__":
    print(terminated_status(Path(sys.argv[1])).value)
