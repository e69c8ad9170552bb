"""Query inputs held as local relations: computed once, then carried inside each later query's
plan, which neither computes them again nor reopens their files (Sail plans a list of files one
file at a time, in every query that reads them)."""

from __future__ import annotations

from pyspark.sql import DataFrame

# The most rows held: a day's dimension changes at scale 10 are ~25k; a first load's bronze at
# scale 0.002 ~10k over hundreds of files.
LOCAL_ROWS = 200_000


def held(rows: DataFrame, most: int) -> DataFrame:
    """`rows` computed once and held as a local relation, if they are at most `most`; else
    `rows` as they are."""
    schema = rows.schema  # analysed once: the limit below inherits it
    kept = rows.limit(most + 1).toArrow()
    if kept.num_rows > most:
        return rows
    return rows.sparkSession.createDataFrame(kept, schema)
