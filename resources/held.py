"""Query inputs held as local relations: computed once, then carried inside each later query's
plan, which neither computes them again nor reopens their files (Sail plans a list of files one
file at a time, in every query that reads them)."""

from __future__ import annotations

from pyspark.sql import DataFrame

# The most rows of a computed input held (a dimension's changed versions: a day's changes at
# scale 10 are ~25k), which each query would otherwise compute again from all of silver.
LOCAL_ROWS = 200_000
# The most rows of a table's files held when they are read whole (bronze's chunk for silver,
# silver's dimension for gold's first apply): what pays is the number of files (a first load
# of 320 days at scale 0.002 is 10k rows in 320 files a table); larger inputs (a dimension at
# scale 1, ~100k rows in ~90 files) are read from their files as before.
FEW_ROWS = 50_000


def held(rows: DataFrame, most: int) -> DataFrame:
    """`rows` computed once and held as a local relation, if they are at most `most`; else
    `rows` as they are."""
    schema = rows.schema  # analysed once: the limit below inherits it
    kept = rows.limit(most + 1).toArrow()
    if kept.num_rows > most:
        return rows
    return rows.sparkSession.createDataFrame(kept, schema)
