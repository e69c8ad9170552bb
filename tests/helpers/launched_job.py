"""A job for the run launcher's tests (tests/resources/test_dagster_launcher.py): Dagster loads it
again by this file's path in the run's own process."""

import os
import time
from pathlib import Path

from dagster import OpExecutionContext, in_process_executor, job, op

HOLD_SECONDS = 120  # a held run ends by itself only if the test failed to terminate it


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
