"""The Rust libraries' log filter the process gets before connectorx loads: errors only, and
nothing from r2d2 (its connection pool printed seven ERROR lines for a server that is down)."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pyarrow as pa
import pytest

from resources.rust_log import RUST_LOG_DEFAULT
from resources.source_reader import ReaderKind, read_arrow
from spotify_assets.bronze.dialects import Dialect


def read_one_row(tmp_path: Path) -> pa.Table:
    path = tmp_path / "source.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE t (id INTEGER)")
        db.execute("INSERT INTO t VALUES (1)")
    schema = pa.schema([("id", pa.int64())])
    batches = read_arrow(
        f"Driver=SQLite3;Database={path}", Dialect.SQLITE, "SELECT id FROM t", schema,
        ReaderKind.CONNECTORX,
    )  # fmt: skip
    return pa.Table.from_batches(list(batches), schema)


def test_connectorx_reads_with_r2d2_silenced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RUST_LOG", raising=False)
    assert read_one_row(tmp_path).num_rows == 1
    assert os.environ["RUST_LOG"] == RUST_LOG_DEFAULT


def test_a_users_rust_log_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUST_LOG", "debug")
    read_one_row(tmp_path)
    assert os.environ["RUST_LOG"] == "debug"
