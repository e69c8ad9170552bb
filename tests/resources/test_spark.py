"""Sail in process (resources/spark.py) as a long-lived process uses it."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

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
