"""Remote Spark: `run` with SPOTIFY_SPARK_REMOTE against a separate Spark Connect
server — Sail in local-cluster mode, a driver and its workers, reaching the lake by its URL —
builds the same gold as the embedded run, table by table."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from resources.delta_tables import delta_table
from resources.lake import LakeStorage
from spotify_assets.catalog.tables import CATALOG
from tests.helpers.processes import Lakehouse, cpu_seconds, sail_cluster

GOLD_TABLES = [name for table in CATALOG for name in CATALOG.gold_tables(table)]


@pytest.fixture
def spark_server(tmp_path: Path) -> Iterator[tuple[str, int]]:
    """A Sail Spark Connect server in local-cluster mode on 127.0.0.1: (sc:// URL, pid)."""
    with sail_cluster(tmp_path / "sail.log") as server:
        yield server


def gold_rows(home: Path, name: str) -> list[tuple[object, ...]]:
    table = delta_table(LakeStorage(url=str(home / "lake")), f"gold/{name}").to_pyarrow_table()
    columns = sorted(table.column_names)
    return sorted(zip(*(table[c].to_pylist() for c in columns), strict=True), key=repr)


@pytest.mark.timeout(600)  # two runs to gold: minutes when the machine is busy
def test_run_on_a_remote_spark_connect_server_builds_the_embedded_gold(
    tmp_path: Path, spark_server: tuple[str, int]
) -> None:
    url, server_pid = spark_server
    embedded = Lakehouse(tmp_path / "embedded")
    end = datetime.now(UTC).date() - timedelta(days=1)
    embedded("source", "init", "--scale", "0.002", "--history-days", "2", "--end-date", str(end))
    remote = Lakehouse(tmp_path / "remote", spark_remote=url)
    shutil.copytree(embedded.home, remote.home)  # the same source, before any run

    embedded("run")
    server_cpu = cpu_seconds(server_pid)
    remote("run")

    # The server did the Spark work (it is idle otherwise), and both lakes hold the same gold.
    assert cpu_seconds(server_pid) - server_cpu > 1.0
    for name in GOLD_TABLES:
        expected = gold_rows(embedded.home, name)
        assert expected, f"gold/{name} is empty"
        assert gold_rows(remote.home, name) == expected, f"gold/{name}"
