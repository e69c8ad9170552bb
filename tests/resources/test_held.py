"""Inputs held as local relations (resources/held.py) on rows of any width."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from tests.helpers.paths import REPO
from tests.helpers.processes import BoundedRun

# A dimension whose versions carry a 1-MB text: silver held a day's bronze of a few hundred
# such rows, which passed Spark Connect's 128-MiB message and failed the run. Printed per
# input: whether it came back held (a new DataFrame) and its rows' total length.
WIDE_ROWS = """
from pyspark.sql import functions as F
from resources.held import FEW_ROWS, held
from resources.spark import SparkResource
spark = SparkResource().session()
for rows, width in ((1_000, 10), (40, 1_000_000), (200, 1_000_000)):
    text = F.concat(F.col("id").cast("string"), F.repeat(F.lit("x"), width)).alias("text")
    wide = spark.range(rows).select("id", text)
    kept = held(wide, FEW_ROWS)
    print(kept is not wide, kept.agg(F.sum(F.length("text"))).collect()[0][0])
"""


def test_rows_too_wide_to_hold_are_read_as_they_are(
    bounded: Callable[..., BoundedRun],
) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = bounded([sys.executable, "-c", WIDE_ROWS], 2.0, env=env, timeout=300)
    assert not result.killed_for_memory, "holding wide rows passed 2 GiB"
    assert result.returncode == 0, result.stderr[-3000:]
    lengths = {
        rows: rows * width + sum(len(str(i)) for i in range(rows))
        for rows, width in ((1_000, 10), (40, 1_000_000), (200, 1_000_000))
    }
    assert result.stdout.splitlines()[-3:] == [
        f"True {lengths[1_000]}",  # narrow: held
        f"False {lengths[40]}",  # 40 MB: fits a message, but rides in every later plan
        f"False {lengths[200]}",  # 200 MB: more than one message
    ]
