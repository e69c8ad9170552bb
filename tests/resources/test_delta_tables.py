"""A Delta log holding no commit (a write killed, or out of disk, during a table's first commit)
is no table: readers see none, and the next write creates version 0 from its own rows alone."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake.exceptions import TableNotFoundError
from pyspark.sql import SparkSession

from resources.delta_tables import (
    check_log,
    delta_table,
    exists,
    log_gaps,
    partition_stats,
    read_delta,
    table_stats,
)
from resources.delta_writes import declare_not_null, replace_partitions
from resources.lake import LakeFileError, LakeStorage
from spotify_assets.consistency.reconcile import ABSENT

RELATIVE = "silver/t"
DAY = date(2026, 11, 2)


def lake_at(tmp_path: Path) -> LakeStorage:
    return LakeStorage(url=str(tmp_path / "lake"))


def log_of(lake: LakeStorage) -> Path:
    return Path(lake.path(RELATIVE)) / "_delta_log"


@pytest.fixture(params=["missing", "empty log", "temporary commit"])
def unborn(request: pytest.FixtureRequest, tmp_path: Path) -> LakeStorage:
    """A lake whose table at RELATIVE was never committed: no folder at all, or what a killed
    first write leaves (its data file, an empty log, maybe its commit not yet renamed)."""
    lake = lake_at(tmp_path)
    if request.param != "missing":
        log_of(lake).mkdir(parents=True)
        leftover = Path(lake.path(RELATIVE)) / f"day={DAY}" / "part-00000-leftover.parquet"
        leftover.parent.mkdir()
        pq.write_table(pa.table({"n": [99]}), leftover)
    if request.param == "temporary commit":
        (log_of(lake) / "_commit_0b6c8f3e.json.tmp").write_text('{"commitInfo":{}}\n')
    return lake


def test_a_log_without_commits_is_no_table_to_its_readers(unborn: LakeStorage) -> None:
    path = unborn.path(RELATIVE)
    assert not exists(unborn, path)
    assert log_gaps(unborn, path) == []
    check_log(unborn, path)
    assert table_stats(unborn, RELATIVE) == ABSENT
    assert partition_stats(unborn, RELATIVE, "day") == {}
    with pytest.raises(TableNotFoundError):
        delta_table(unborn, RELATIVE)


def test_the_next_write_creates_version_0_from_its_own_rows(
    unborn: LakeStorage, sail_spark: SparkSession
) -> None:
    rows = sail_spark.createDataFrame([(DAY, 1), (DAY, 2)], "day date, n long")
    replace_partitions(unborn, rows, unborn.path(RELATIVE), "day", (DAY, DAY))
    assert exists(unborn, unborn.path(RELATIVE))
    assert delta_table(unborn, RELATIVE).version() == 0
    assert sorted(read_delta(unborn, RELATIVE)["n"].to_pylist()) == [1, 2]


def test_a_declared_not_null_is_recorded_kept_and_widened_on_request(
    tmp_path: Path, sail_spark: SparkSession
) -> None:
    """A column declared NOT NULL is recorded so whatever the plan proves, and a NULL in it
    fails the write naming it (nothing committed); declared nullable, a table's NOT NULL is
    dropped (a table written when its input declared NOT NULL)."""
    lake, path = lake_at(tmp_path), lake_at(tmp_path).path(RELATIVE)
    rows = sail_spark.createDataFrame([(DAY, 1)], "day date, n long")
    replace_partitions(lake, declare_not_null(rows, path, ["n"]), path, "day", (DAY, DAY))

    def allows_null() -> bool:
        return next(
            f for f in delta_table(lake, RELATIVE).schema().fields if f.name == "n"
        ).nullable

    assert not allows_null()

    missing = sail_spark.createDataFrame([(DAY, None)], "day date, n long")
    with pytest.raises(Exception, match=r"silver/t: a row without n, which the table declares"):
        replace_partitions(lake, declare_not_null(missing, path, ["n"]), path, "day", (DAY, DAY))
    assert read_delta(lake, RELATIVE)["n"].to_pylist() == [1]

    replace_partitions(lake, missing, path, "day", (DAY, DAY), nullable=["n"])
    assert allows_null()
    assert read_delta(lake, RELATIVE)["n"].to_pylist() == [None]


@pytest.mark.parametrize(
    "entry",
    [f"{1:020d}.json", f"{0:020d}.crc"],
    ids=["commit before the newest", "only commit, checksum kept"],
)
def test_a_log_that_lost_a_commit_is_a_damaged_table_to_repair(tmp_path: Path, entry: str) -> None:
    lake = lake_at(tmp_path)
    log_of(lake).mkdir(parents=True)
    (log_of(lake) / entry).write_text('{"commitInfo":{}}\n')
    assert exists(lake, lake.path(RELATIVE))
    with pytest.raises(LakeFileError, match=r"commit 0 .* verify --repair"):
        delta_table(lake, RELATIVE)


def test_a_log_commit_truncated_to_nothing_is_a_damaged_table_to_repair(
    tmp_path: Path, sail_spark: SparkSession
) -> None:
    """An emptied commit (by hand, a tool, a sync gone wrong): delta-rs read the table as empty
    (its protocol from the checksum file) and Spark failed every write with "Cannot load table
    state without protocol"; now it is a lost commit, to repair."""
    lake = lake_at(tmp_path)
    rows = sail_spark.createDataFrame([(DAY, 1)], "day date, n long")
    replace_partitions(lake, rows, lake.path(RELATIVE), "day", (DAY, DAY))
    (log_of(lake) / f"{0:020d}.json").write_bytes(b"")
    assert log_gaps(lake, lake.path(RELATIVE)) == [0]
    with pytest.raises(LakeFileError, match=r"commit 0 .* is missing or empty; run .*--repair"):
        delta_table(lake, RELATIVE)
