"""Delta writes shared by silver and gold, on Spark: whole-partition replacement and creation.

Sail cannot `replaceWhere` or `MERGE INTO` a path that holds no Delta table yet, so a missing
table is created by a plain write of the rows.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable

from deltalake import DeltaTable, Field
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from resources.delta_tables import Days, check_log, exists
from resources.lake import LakeStorage


def replace_partitions(
    lake: LakeStorage,
    frame: DataFrame,
    path: str,
    partition: str | None,
    days: Days | None,
    nullable: Collection[str] = (),
) -> None:
    """Replace the partitions `days` of the table at `path` with `frame` (every row of which
    must fall in them); `days` None or no `partition`: replace the whole table. A table not
    there yet is created by the same write, with `frame`'s schema and the partitioning: one
    commit, not an empty table first and then the rows. Sail then records as NOT NULL what its
    physical plan proves never null (e.g. a version time computed from bronze's NOT NULL
    columns), where an empty write kept Spark's looser analysed schema.

    `nullable`: columns that may hold NULL whatever the table declared (bronze copies any NULL
    the source holds): a table that declared them NOT NULL (one written before) is widened.
    `declare_not_null` declares the others."""
    check_log(lake, path)
    if not exists(lake, path):
        writer = frame.write.format("delta").mode("overwrite")
        (writer.partitionBy(partition) if partition else writer).save(path)
        return
    frame = _with_table_columns(lake, frame, path, nullable)
    writer = frame.write.format("delta").mode("overwrite")
    if partition and days is not None:
        first, last = (d.isoformat() for d in days)
        writer = writer.option(
            "replaceWhere", f"{partition} >= DATE'{first}' AND {partition} <= DATE'{last}'"
        )
    writer.save(path)


def declare_not_null(frame: DataFrame, path: str, columns: Iterable[str]) -> DataFrame:
    """`frame` with `columns` recorded NOT NULL by the write to the table at `path` whatever
    `frame`'s plan proves, a NULL in one failing the write naming it. Apply it before the
    rows' layout (a repartition by day): Sail spreads a step after it over its streams again
    once the rows pass one batch."""
    types = dict(frame.dtypes)
    return frame.withColumns({name: _not_null(path, name, types[name]) for name in columns})


def _not_null(path: str, name: str, type_: str) -> Column:
    """Column `name`, which the engine then proves never NULL (the literal is never reached: a
    NULL raises first)."""
    failure = F.raise_error(
        F.lit(f"{path}: a row without {name}, which the table declares NOT NULL")
    )
    return F.coalesce(F.col(name), failure.cast(type_), F.lit(0).cast(type_))


def _with_table_columns(
    lake: LakeStorage, frame: DataFrame, path: str, nullable: Collection[str]
) -> DataFrame:
    """`frame` with exactly the table's columns, as Sail's `replaceWhere` requires: a new column
    (a source column carried by the drift policy) first joins the table's schema; a column the
    frame lacks (a partition extracted before it appeared) comes as NULL. A column `nullable`
    allows NULL in loses the table's NOT NULL."""
    table = DeltaTable(path, storage_options=lake.delta_storage_options())
    fields = table.schema().fields
    types = {f.name: json.loads(f.to_json())["type"] for f in fields}
    new = [f for f in frame.schema.fields if f.name not in types]
    if new:
        table.alter.add_columns([Field.from_json(json.dumps(f.jsonValue())) for f in new])
    for field in fields:
        if not field.nullable and field.name in nullable:
            table.alter.drop_column_not_null(field.name)
    missing = [F.lit(None).cast(t).alias(c) for c, t in types.items() if c not in frame.columns]
    return frame.select("*", *missing) if missing else frame
