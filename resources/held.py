"""Query inputs held as local relations: computed once, then carried inside each later query's
plan, which neither computes them again nor reopens their files (Sail plans a list of files one
file at a time, in every query that reads them)."""

from __future__ import annotations

import grpc
from pyspark.errors.exceptions.connect import SparkConnectGrpcException
from pyspark.sql import DataFrame

# The most rows of a computed input held (a dimension's changed versions: a day's changes at
# scale 10 are ~25k), which each query would otherwise compute again from all of silver.
LOCAL_ROWS = 200_000
# The most rows of a table's files held when they are read whole (bronze's chunk for silver,
# silver's dimension for gold's first apply): what pays is the number of files (a first load
# of 320 days at scale 0.002 is 10k rows in 320 files a table); larger inputs (a dimension at
# scale 1, ~100k rows in ~90 files) are read from their files as before.
FEW_ROWS = 50_000
# The most bytes held: a held input rides in the plan of every later query, and Spark Connect
# carries a message of at most 128 MiB (a dimension's versions of 1-MB texts passed it in a few
# hundred rows). Rows of usual width are far below it.
MOST_BYTES = 32 * 1024 * 1024


def held(rows: DataFrame, most: int) -> DataFrame:
    """`rows` computed once and held as a local relation, if they are at most `most` rows and
    `MOST_BYTES`; else `rows` as they are."""
    schema = rows.schema  # analysed once: the limit below inherits it
    try:
        kept = rows.limit(most + 1).toArrow()
    except SparkConnectGrpcException as error:
        # A batch of wide rows larger than one Spark Connect message: too wide to hold.
        if error.getGrpcStatusCode() is grpc.StatusCode.RESOURCE_EXHAUSTED:
            return rows
        raise
    if kept.num_rows > most or kept.nbytes > MOST_BYTES:
        return rows
    return rows.sparkSession.createDataFrame(kept, schema)
