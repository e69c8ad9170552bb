"""Dagster's run launcher for the product's instance: each run still in a process of its own,
started warm.

Dagster's default launcher asks the code server to start each run, and the code server spawns a
fresh interpreter that imports Dagster, its storage (SQLAlchemy, Alembic) and the project before
the run's first step: 1.7-1.9 CPU s, most of the "launch" between a sensor's request and the run's
start. Here the process that launches runs (the daemon's run queue) keeps a fork server that has
imported those libraries once; each run is a child forked from it that loads the code location
itself (so a reloaded location's code runs) and executes the run the way Dagster's own
`dagster api execute_run` does. Only libraries that start no thread on import are preloaded: a
fork keeps no other thread, so a preloaded thread pool or async runtime (numpy's BLAS, pyarrow's
allocator, delta-rs) would be broken in the run.

A run whose code location runs on another interpreter (another environment) goes to the code
server as before. The run's worker process is tagged on the run (its pid and start): terminating
it sends the worker SIGINT, which Dagster turns into a canceled run, as the code server's cancel
does, and Dagster's run monitoring (on in the instance's `dagster.yaml`) asks the launcher whether
the worker still runs: a worker killed, or dead before it could report its run's end, fails its
run instead of leaving it in progress for ever, holding the run queue's one writer slot. The
launching process also waits for each worker, and fails its run at once if the worker ended
without ending it, started or not yet (run monitoring checks only started runs' workers).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
from multiprocessing.process import BaseProcess

from dagster import DagsterInstance, DagsterRunStatus, DefaultRunLauncher, RunsFilter
from dagster._cli.api import execute_run_command
from dagster._core.launcher import CheckRunHealthResult, LaunchRunContext, WorkerStatus
from dagster._core.storage.dagster_run import DagsterRun
from dagster._grpc.types import ExecuteRunArgs
from dagster._serdes import ConfigurableClassData, serialize_value

from resources.process_identity import ProcessIdentity

# Imported by the fork server before it forks any run; each starts no thread (checked by a test).
PRELOADED = ("dagster", "dagster._cli.api", "sqlalchemy", "alembic", "grpc")
WORKER_TAG = "spotify/run_worker"  # its ProcessIdentity


def execute_run(serialized_args: str, environment: dict[str, str]) -> None:
    """A run worker's body: Dagster's `dagster api execute_run`, in the forked process, with the
    launching process's environment of the moment (the fork server's is that of its start)."""
    os.environ.clear()
    os.environ.update(environment)
    # It handles SIGINT itself (a canceled run), even where the fork server started with SIGINT
    # ignored (`dg dev` as a script's background job).
    execute_run_command.callback(input_json=serialized_args, compressed_input_json=None)


class ForkedRunLauncher(DefaultRunLauncher):
    """`DefaultRunLauncher` whose runs on this interpreter start from a warm fork server."""

    def __init__(self, inst_data: ConfigurableClassData | None = None) -> None:
        super().__init__(inst_data)
        self._workers = multiprocessing.get_context("forkserver")
        self._workers.set_forkserver_preload(list(PRELOADED))

    def launch_run(self, context: LaunchRunContext) -> None:
        run = context.dagster_run
        origin = run.job_code_origin
        if origin is None or origin.executable_path != sys.executable:
            super().launch_run(context)
            return
        args = ExecuteRunArgs(
            job_origin=origin, run_id=run.run_id, instance_ref=self._instance.get_ref()
        )
        worker = self._workers.Process(
            target=execute_run,
            args=(serialize_value(args), dict(os.environ)),
            name=f"dagster-run-{run.run_id}",
        )
        worker.start()
        self._instance.add_run_tags(run.run_id, worker_tag(worker.pid))
        self._run_ids.add(run.run_id)
        threading.Thread(target=self._fail_if_unfinished, args=(worker,), daemon=True).start()

    def _fail_if_unfinished(self, worker: BaseProcess) -> None:
        """Once the worker ends: its run, if it did not end it (killed, even before the run
        started), is failed now. Run monitoring would check only a STARTED run's worker, at its
        next poll, and fail a STARTING one only after its start timeout, holding the run
        queue's one writer slot meanwhile."""
        worker.join()
        fail_runs_of_gone_workers(self._instance)

    def terminate(self, run_id: str) -> bool:
        run = self._instance.get_run_by_id(run_id)
        if run is None or WORKER_TAG not in run.tags:
            return super().terminate(run_id)
        if run.is_finished:
            return False
        worker = ProcessIdentity.parse(run.tags[WORKER_TAG])
        lives = worker.lives()
        if lives is None:  # a process of another machine
            return super().terminate(run_id)
        if not lives:
            # Killed before it could end the run, and its pid may name another process by now.
            self._instance.report_run_canceled(
                run, f"its worker (pid {worker.pid}) had already ended without ending the run"
            )
            return True
        self._instance.report_run_canceling(run)
        try:
            os.kill(worker.pid, signal.SIGINT)
        except ProcessLookupError:
            return False
        return True

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        """A run without the tag was launched by a code server: the lake lease fails it once
        its process is gone (resources/dagster_resources.py)."""
        worker = gone_worker(run)
        if worker is None:
            return CheckRunHealthResult(WorkerStatus.RUNNING)
        return CheckRunHealthResult(WorkerStatus.FAILED, _ended(worker))


def worker_tag(pid: int) -> dict[str, str]:
    """The tag naming the process that executes a run: a forked worker, or a CLI command that
    executes its runs in its own process (a command killed at any moment of its run, even
    before the run takes the lake lease, is then known to have ended)."""
    return {WORKER_TAG: str(ProcessIdentity.of(pid))}


def gone_worker(run: DagsterRun) -> ProcessIdentity | None:
    """The process tagged as the run's worker, if it is known to have ended."""
    if WORKER_TAG not in run.tags:
        return None
    worker = ProcessIdentity.parse(run.tags[WORKER_TAG])
    return worker if worker.lives() is False else None


def fail_runs_of_gone_workers(instance: DagsterInstance) -> None:
    """Runs still in progress whose worker has ended (a CLI command or a worker killed) are
    failed: the UI would show them running for ever, and the run queue, which counts them, would
    hold every sensor and UI run behind them. Dagster's run monitoring does the same under the
    daemon; a CLI command does it before its runs."""
    in_progress = RunsFilter(statuses=[DagsterRunStatus.STARTING, DagsterRunStatus.STARTED])
    for run in instance.get_runs(in_progress):
        if (worker := gone_worker(run)) is not None:
            instance.report_run_failed(run, _ended(worker))


def _ended(worker: ProcessIdentity) -> str:
    return f"its worker (pid {worker.pid}) ended without ending the run (killed?)"
