"""The columns of a bronze file: the source's, then the audit columns every extraction adds."""

from __future__ import annotations

import pyarrow as pa

from spotify_assets.catalog.columns import DescribedColumn, describe
from spotify_assets.catalog.tables import (
    CHANGE_AT,
    CHANGE_OP,
    CHANGE_SEQ,
    EXTRACTED_AT,
    RUN_ID,
    UNTYPED,
    WINDOW_END,
    WINDOW_START,
    CaptureMode,
    Table,
)


def bronze_schema(table: Table, carried: tuple[str, ...] = ()) -> pa.Schema:
    """Source columns (the catalog's, then new ones carried as text), then the audit columns;
    `_untyped` holds the raw text of values that did not fit their type
    (spotify_assets/source/schema.py)."""
    audit = [pa.field(CHANGE_OP, pa.string(), nullable=False), pa.field(CHANGE_SEQ, pa.int64())]
    if table.mode is CaptureMode.CDC:
        audit.append(pa.field(CHANGE_AT, pa.timestamp("us"), nullable=False))
    audit += [
        pa.field(EXTRACTED_AT, pa.timestamp("us"), nullable=False),
        pa.field(WINDOW_START, pa.timestamp("us")),
        pa.field(WINDOW_END, pa.timestamp("us")),
        pa.field(RUN_ID, pa.string(), nullable=False),
        pa.field(UNTYPED, pa.string()),
    ]
    new = [pa.field(name, pa.string()) for name in carried]
    return pa.schema(list(table.copied_schema) + new + audit)


def bronze_columns(table: Table) -> list[DescribedColumn]:
    """The columns of `bronze_schema`, described."""
    return [
        DescribedColumn(f.name, str(f.type), describe(table, f.name)) for f in bronze_schema(table)
    ]
