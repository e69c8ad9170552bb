"""Bronze-shaped input for silver: a valid source row per table, and rows built from it with
exactly `bronze_schema(table)` and filled audit columns."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime
from typing import Any

import pyarrow as pa

from spotify_assets.bronze.schema import (
    EXTRACTED_AT,
    RUN_ID,
    WINDOW_END,
    WINDOW_START,
    bronze_schema,
)
from spotify_assets.catalog.tables import CHANGE_AT, CHANGE_OP, CHANGE_SEQ, CaptureMode, Table

Row = dict[str, Any]

T0 = datetime(2026, 3, 10, 12, 0)
EXTRACTED = datetime(2026, 3, 11, 1, 0)

# A valid source row per table; each case overrides a few columns.
BASE: dict[str, Row] = {
    "DimUser": {
        "user_id": 1,
        "user_name": "Ada Lovelace",
        "country": "GB",
        "subscription_type": "Premium",
        "start_date": date(2025, 6, 1),
        "end_date": None,
        "updated_at": T0,
    },
    "DimArtist": {
        "artist_id": 1,
        "artist_name": "The Band",
        "genre": "rock",
        "country": "US",
        "updated_at": T0,
    },
    "DimTrack": {
        "track_id": 1,
        "track_name": "Song",
        "artist_id": 1,
        "album_name": "Album",
        "duration_sec": 200,
        "release_date": date(2026, 2, 1),
        "updated_at": T0,
    },
    "DimDate": {
        "date_key": 20260310,
        "date": date(2026, 3, 10),
        "day": 10,
        "month": 3,
        "year": 2026,
        "weekday": "Tuesday",
    },
    "FactStream": {
        "stream_id": 1,
        "user_id": 1,
        "track_id": 1,
        "date_key": 20260310,
        "listen_duration": 120,
        "device_type": "mobile",
        "stream_timestamp": T0,
    },
}


def bronze_rows(table: Table, rows: Sequence[Row]) -> pa.Table:
    """Bronze-shaped rows: the table's base row with `rows`' overrides and filled audit columns
    (op 'S', no sequence, change time = cdc column, one extraction)."""
    schema = bronze_schema(table)
    records = []
    for row in rows:
        unknown = set(row) - set(schema.names)
        assert not unknown, f"not bronze columns of {table.name}: {unknown}"
        record = {**BASE[table.name], **row}
        record.setdefault(CHANGE_OP, "S")
        record.setdefault(CHANGE_SEQ, None)
        if table.mode is CaptureMode.CDC:
            assert table.cdc_column is not None
            record.setdefault(CHANGE_AT, record[table.cdc_column])
        record.setdefault(EXTRACTED_AT, EXTRACTED)
        record.setdefault(WINDOW_START, None)
        record.setdefault(WINDOW_END, None)
        record.setdefault(RUN_ID, "bronze-run-1")
        records.append(record)
    return pa.Table.from_pylist(records, schema=schema)
