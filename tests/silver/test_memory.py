"""Memory bounds: silver on inputs that once made Sail pass 20 GiB on six rows, each run in a
subprocess whose whole process tree is SIGKILLed over the bound (far below the blow-up).

The cause was a query shape: a CASE nested in the ELSE of another, one level per country name.
Sail (DataFusion 54) copies a CASE's body whenever it rebuilds it, so n nested levels cost 2^n;
the rebuild happens when a filter over the CASE is pushed into the parquet scan and rewritten per
file, which a column constant in the file's statistics (min = max) sets off. The probe below
covers that trigger for every column of every table.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from deltalake import DeltaTable

from resources.delta_tables import CHUNK_SETTING
from spotify_assets.catalog.gold_spec import END_AT
from spotify_assets.catalog.lake_paths import gold_path, silver_path
from spotify_assets.catalog.tables import CATALOG, DIM_USER, ColumnType, Table
from spotify_assets.cli.commands import source_init
from spotify_assets.orchestration.settings import Settings
from tests.helpers.paths import REPO
from tests.helpers.processes import BoundedRun
from tests.helpers.silver_input import BASE, bronze_rows
from tests.helpers.source import SEED

BOUND_GIB = 1.5


def _other(value: Any, type_: ColumnType) -> Any:
    """A value of the same type, different from `value`."""
    if type_ in (ColumnType.INT, ColumnType.BIGINT):
        return value + 1
    if type_ is ColumnType.DATE:
        return date(2026, 3, 1) if value is None else value + timedelta(days=1)
    if type_ is ColumnType.TIMESTAMP:
        return datetime(2026, 3, 1) if value is None else value + timedelta(hours=1)
    return "Germany" if value is None else f"{value} x"


def write_probe_files(directory: Path, table: Table) -> None:
    """One bronze file per column: two rows of one key, equal in every column but that one, so
    in each file every other column is constant in the statistics."""
    base = BASE[table.name]
    directory.mkdir(parents=True)
    for n, column in enumerate(table.columns):
        key = {k: 100 + n for k in table.key}
        varied = {column.name: _other(base[column.name], column.type)}
        rows = bronze_rows(table, [key, {**key, **varied}])
        pq.write_table(rows, directory / f"{n:02d}-{column.name}.parquet")


def silver_probe(directory: str) -> None:
    """Subprocess entry: silver of every table over its probe files, counts as JSON."""
    from resources.spark import SparkResource
    from spotify_assets.silver.transform import transform

    spark = SparkResource().session()
    counts = {}
    for table in CATALOG:
        # One scan per file, as silver reads a day's bronze: one scan of the whole directory
        # did not set the blow-up off.
        files = sorted(str(f) for f in Path(directory, table.name).iterdir())
        bronze = spark.read.parquet(files[0])
        for file in files[1:]:
            bronze = bronze.unionByName(spark.read.parquet(file))
        frames = transform(table, bronze, "probe")
        counts[table.name] = [frames.valid.count(), frames.quarantine.count()]
    print(json.dumps(counts))


def test_silver_of_every_table_stays_bounded_whatever_column_varies(
    tmp_path: Path, bounded: Callable[..., BoundedRun]
) -> None:
    for table in CATALOG:
        write_probe_files(tmp_path / table.name, table)
    code = f"import sys; from {__name__} import silver_probe; silver_probe(sys.argv[1])"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = bounded([sys.executable, "-c", code, str(tmp_path)], BOUND_GIB, env=env)
    assert not result.killed_for_memory, f"silver passed {BOUND_GIB} GiB on two-row files"
    assert result.returncode == 0, result.stderr
    counts = json.loads(result.stdout.splitlines()[-1])
    for table in CATALOG:
        valid, quarantined = counts[table.name]
        assert valid + quarantined >= len(table.columns), table.name  # a row per file at least


# The two inputs, as one day of source changes each: (user, country, subscription, time).
# Each day's bronze file holds the change records and the images of the same versions, with one
# subscription for all rows (constant in the file's statistics) and several countries.
DIMENSION_CHANGES = (
    ((1, "US", "Free", time(12)), (2, "GB", "Free", time(12))),
    ((3, "US", "Premium", time(1, 27)), (4, "ES", "Premium", time(1, 39)),
     (5, "DE", "Premium", time(22, 28))),
)  # fmt: skip


def _at(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S.000")


def change_users(source: Path, day: date, changes: tuple[tuple[int, str, str, time], ...]) -> None:
    """Update the users at their times of `day`, the source clock following, as a user would."""
    db = sqlite3.connect(source)
    try:
        for user, country, subscription, at in changes:
            moment = _at(datetime.combine(day, at))
            db.execute("UPDATE source_clock SET now_utc = ?", (moment,))
            db.execute(
                "UPDATE DimUser SET country = ?, subscription_type = ?, updated_at = ? "
                "WHERE user_id = ?",
                (country, subscription, moment, user),
            )
        db.execute(
            "UPDATE source_clock SET now_utc = ?",
            (_at(datetime.combine(day, time(23)) + timedelta(hours=1)),),
        )
        db.commit()
    finally:
        db.close()


def current_users(settings: Settings, users: list[int]) -> dict[int, tuple[str, str]]:
    gold = DeltaTable(f"{settings.lake_url}/gold/{DIM_USER.lake_name}").to_pyarrow_table()
    rows = gold.filter(gold[END_AT].is_null()).to_pylist()
    return {
        r["user_id"]: (r["country"], r["subscription_type"]) for r in rows if r["user_id"] in users
    }


def test_runs_after_dimension_updates_stay_bounded(
    tmp_path: Path, bounded: Callable[..., BoundedRun]
) -> None:
    settings = Settings.from_env({"SPOTIFY_HOME": str(tmp_path)})
    end = datetime.now(UTC).date() - timedelta(days=4)
    source_init(settings, 0.002, SEED, end, history_days=3)
    env = {**os.environ, "SPOTIFY_HOME": str(tmp_path), "PYTHONPATH": str(REPO)}
    run = [str(Path(sys.executable).with_name("spotify-lakehouse")), "run"]
    for day, changes in enumerate(((), *DIMENSION_CHANGES)):
        change_users(settings.embedded_source_path, end + timedelta(days=day), changes)
        result = bounded(run, BOUND_GIB, env=env)
        assert not result.killed_for_memory, f"run passed {BOUND_GIB} GiB after {changes}"
        assert result.returncode == 0, result.stderr[-3000:]
        expected = {user: (country, plan) for user, country, plan, _ in changes}
        assert current_users(settings, list(expected)) == expected


def test_a_first_load_builds_the_fact_a_chunk_of_days_at_a_time(
    tmp_path: Path, bounded: Callable[..., BoundedRun]
) -> None:
    # Memory follows a chunk of days only if the fact's silver and gold are written a chunk at
    # a time: with chunks a third of the source, each takes a Delta commit per chunk.
    settings = Settings.from_env({"SPOTIFY_HOME": str(tmp_path)})
    source_init(settings, 0.002, SEED, datetime.now(UTC).date() - timedelta(days=2), 6)
    with sqlite3.connect(settings.embedded_source_path) as db:
        (streams,) = db.execute(f"SELECT COUNT(*) FROM {CATALOG.fact.name}").fetchone()
    env = {
        **os.environ,
        "SPOTIFY_HOME": str(tmp_path),
        "PYTHONPATH": str(REPO),
        CHUNK_SETTING: str(streams // 3),
    }
    run = [str(Path(sys.executable).with_name("spotify-lakehouse")), "run"]
    result = bounded(run, BOUND_GIB, env=env)
    assert not result.killed_for_memory, f"the first load passed {BOUND_GIB} GiB"
    assert result.returncode == 0, result.stderr[-3000:]
    for path in (silver_path(CATALOG.fact), gold_path(CATALOG.fact.lake_name)):
        # The first chunk's write creates the table.
        history = DeltaTable(f"{settings.lake_url}/{path}").history()
        assert len(history) >= 3, f"{path}: {[c['operation'] for c in history]}"


def test_a_first_load_gives_memory_back_between_steps(
    tmp_path: Path, bounded: Callable[..., BoundedRun]
) -> None:
    # Sail's allocator (mimalloc) kept freed pages by default: RSS grew step by step and a first
    # load at scale 0.3 peaked at 2.0 GiB (3.1-3.9 GiB at scale 1); returning them at once keeps
    # it near 0.8 GiB (resources/spark.py).
    settings = Settings.from_env({"SPOTIFY_HOME": str(tmp_path)})
    source_init(settings, 0.3, SEED, datetime.now(UTC).date() - timedelta(days=2))
    env = {**os.environ, "SPOTIFY_HOME": str(tmp_path), "PYTHONPATH": str(REPO)}
    run = [str(Path(sys.executable).with_name("spotify-lakehouse")), "run"]
    result = bounded(run, BOUND_GIB, env=env)
    assert not result.killed_for_memory, f"the first load passed {BOUND_GIB} GiB"
    assert result.returncode == 0, result.stderr[-3000:]


def high_cardinality_aggregation(home: str, rows: int) -> None:
    """Subprocess entry: one aggregation with a group per row, on the Spark session the
    settings give silver (SPOTIFY_SPARK_MEMORY_GIB from the environment)."""
    from pyspark.sql import functions as F

    from spotify_assets.orchestration.run_resources import build_resources

    settings = Settings.from_env({**os.environ, "SPOTIFY_HOME": home})
    spark = build_resources(settings)["silver_engine"].spark.session()
    key = (F.col("id") * 7919 % rows).alias("key")
    groups = spark.range(rows).groupBy(key).agg(F.count("*").alias("n"))
    print(groups.where("n != 1").count())


def test_sail_in_process_keeps_its_queries_in_the_configured_memory(
    tmp_path: Path, bounded: Callable[..., BoundedRun]
) -> None:
    # Unbounded, this aggregation's hash table grows with its 8M groups (~0.95 GiB at peak); in
    # a 0.25-GiB pool it spills to disk and the process stays near 0.5 GiB.
    code = (
        f"import sys; from {__name__} import high_cardinality_aggregation; "
        "high_cardinality_aggregation(sys.argv[1], 8_000_000)"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "SPOTIFY_SPARK_MEMORY_GIB": "0.25"}
    result = bounded([sys.executable, "-c", code, str(tmp_path)], 0.75, env=env)
    assert not result.killed_for_memory, "Sail passed 0.75 GiB with a 0.25-GiB memory pool"
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["0"]
