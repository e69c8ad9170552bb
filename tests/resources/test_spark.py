"""Sail in process (resources/spark.py) as a long-lived process uses it."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from pyspark.errors import AnalysisException
from pyspark.sql import SparkSession

from tests.helpers.paths import REPO
from tests.helpers.processes import BoundedRun

# Ask for the session, stay idle past the server's session timeout, then query again: the
# Dagster daemon, a code server or a test worker keeps its session far longer than one run.
IDLE_THEN_QUERY = """
import time
from resources.spark import SparkResource
spark = SparkResource().session()
spark.range(1).collect()
time.sleep(4)
print(spark.range(3).count())
"""


def test_the_session_of_sail_in_process_outlives_sails_idle_timeout(
    bounded: Callable[..., BoundedRun],
) -> None:
    # Sail ends a session idle for spark.session_timeout_secs (900 s by default); 1 s here.
    env = {**os.environ, "PYTHONPATH": str(REPO), "SAIL_SPARK__SESSION_TIMEOUT_SECS": "1"}
    result = bounded([sys.executable, "-c", IDLE_THEN_QUERY], 2.0, env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split()[-1] == "3"


def test_a_failed_query_prints_no_trace_of_spark_connects_client(
    sail_spark: SparkSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pyspark turns its Spark Connect client's logger off, but `logging.config.dictConfig`
    (Dagster calls it) turns every existing logger back on: a failed query of a run then printed
    its gRPC error with a stack trace, as JSON, beside the run's one-line error."""
    from pyspark.sql.connect.logging import logger

    printed: list[logging.LogRecord] = []
    console = logging.Handler()
    console.emit = printed.append  # type: ignore[method-assign]
    monkeypatch.setattr(logger, "handlers", [console])
    monkeypatch.setattr(logger, "disabled", False)  # as dictConfig leaves it
    with pytest.raises(AnalysisException):
        sail_spark.read.format("delta").load(str(tmp_path / "absent")).count()
    assert [record.getMessage() for record in printed] == []


# Count pyspark's captures of the call site while a plan is built and run.
CALL_SITES = """
import pyspark.errors.utils as errors
from pyspark.sql import functions as F
from resources.spark import SparkResource
captured = []
capture = errors._capture_call_site
errors._capture_call_site = lambda depth: captured.append(depth) or capture(depth)
spark = SparkResource().session()
rows = spark.range(5).withColumn("y", F.col("id") * 2).where(F.col("y") > 2).collect()
print(len(rows), len(captured))
"""


def test_dataframe_calls_do_not_walk_the_python_stack(
    bounded: Callable[..., BoundedRun],
) -> None:
    """pyspark's DataFrame debugging, on by default, walks the stack at every DataFrame and
    Column call (thousands per run): the session turns it off."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = bounded([sys.executable, "-c", CALL_SITES], 2.0, env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split()[-2:] == ["3", "0"]
