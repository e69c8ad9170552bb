"""Settings from the environment (README: Embedded default versus Azure), read once at load time."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from enum import StrEnum
from pathlib import Path
from typing import TypeVar

from resources.delta_tables import CHUNK_ROWS, CHUNK_SETTING
from resources.lease import DEFAULT_WAIT_SECONDS, WAIT_SETTING
from resources.odbc import dialect_of
from resources.spark_memory import DEFAULT_MEMORY_POOL_GIB, MEMORY_SETTING
from spotify_assets.bronze.dialects import Dialect
from spotify_assets.bronze.windows import DEFAULT_SAFETY_LAG_SECONDS
from spotify_assets.catalog.tables import Catalog, configured_catalog


class Environment(StrEnum):
    LOCAL = "local"
    AZURE = "azure"


# How far back of the watermark reconciliation looks for late or missing rows: longer than
# streams arrive late (the simulator: up to 5 days) plus the longest pause between runs.
DEFAULT_RECONCILE_LOOKBACK_DAYS = 10
# The setting that names the first daily partition, and the file under SPOTIFY_HOME where
# `source init` records the first day of the history it generates (the variable wins).
PARTITION_START_VARIABLE = "SPOTIFY_PARTITION_START"
PARTITION_START_FILE = "partition_start"


@dataclass(frozen=True)
class Settings:
    home: Path
    source_odbc: str | None  # None: the embedded SQLite source under `home`
    env: Environment
    capture_modes: str
    lake_url: str
    safety_lag_seconds: float
    spark_remote: str  # empty: Sail in process
    reconcile_lookback_days: int = DEFAULT_RECONCILE_LOOKBACK_DAYS
    databricks_silver_cluster: str = ""  # azure: an existing cluster for silver; empty: new ones
    writer_wait_seconds: float = DEFAULT_WAIT_SECONDS  # for another writer of the lake
    partition_start_override: date | None = None  # SPOTIFY_PARTITION_START
    spark_memory_gib: float = DEFAULT_MEMORY_POOL_GIB  # Sail in process: its queries' memory
    chunk_rows: int = CHUNK_ROWS  # rows one bronze, silver or gold query over days reads

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Settings:
        home = Path(environ.get("SPOTIFY_HOME") or ".data").expanduser().resolve()
        env = (environ.get("SPOTIFY_ENV") or Environment.LOCAL.value).strip().lower()
        if env not in set(Environment):
            raise ValueError(f"SPOTIFY_ENV={env!r} is not one of: local, azure")
        safety_lag = _number(environ, "SPOTIFY_SAFETY_LAG_SECONDS", DEFAULT_SAFETY_LAG_SECONDS)
        lookback = _number(
            environ, "SPOTIFY_RECONCILE_LOOKBACK_DAYS", DEFAULT_RECONCILE_LOOKBACK_DAYS, minimum=1
        )
        writer_wait = _number(environ, WAIT_SETTING, DEFAULT_WAIT_SECONDS)
        spark_memory = _number(environ, MEMORY_SETTING, DEFAULT_MEMORY_POOL_GIB, minimum=0.25)
        chunk_rows = _number(environ, CHUNK_SETTING, CHUNK_ROWS, minimum=1)
        override = environ.get(PARTITION_START_VARIABLE)
        if env == Environment.AZURE:
            _require_azure(environ)
        return cls(
            home=home,
            source_odbc=environ.get("SPOTIFY_SOURCE_ODBC") or None,
            env=Environment(env),
            capture_modes=environ.get("SPOTIFY_CAPTURE_MODES", ""),
            lake_url=environ.get("SPOTIFY_LAKE_URL") or str(home / "lake"),
            safety_lag_seconds=safety_lag,
            spark_remote=environ.get("SPOTIFY_SPARK_REMOTE", ""),
            reconcile_lookback_days=lookback,
            databricks_silver_cluster=environ.get("SPOTIFY_DATABRICKS_SILVER_CLUSTER_ID", ""),
            writer_wait_seconds=writer_wait,
            partition_start_override=_day(override, PARTITION_START_VARIABLE) if override else None,
            spark_memory_gib=spark_memory,
            chunk_rows=chunk_rows,
        )

    @property
    def partition_start_file(self) -> Path:
        return self.home / PARTITION_START_FILE

    @property
    def partition_start(self) -> date:
        """The first daily partition of every partitioned table: SPOTIFY_PARTITION_START, else
        what `source init` recorded under SPOTIFY_HOME, else today (UTC): a source nobody
        described has no history yet. Read on use, so `source init` then `run` just works."""
        if self.partition_start_override:
            return self.partition_start_override
        path = self.partition_start_file
        if path.is_file():
            return _day(path.read_text().strip(), str(path))
        return datetime.now(UTC).date()

    def record_partition_start(self, start: date) -> None:
        """What `source init` does: the history it generated starts the partitions."""
        self.home.mkdir(parents=True, exist_ok=True)
        self.partition_start_file.write_text(f"{start.isoformat()}\n")

    @property
    def catalog(self) -> Catalog:
        """The table catalog as these settings configure it (capture modes, partition start)."""
        return configured_catalog(self.capture_modes, self.partition_start)

    @property
    def gold_on_lake(self) -> bool:
        """Whether gold is Delta tables on the lake, for reconciliation to compare: locally; on
        Azure, Databricks' pipeline publishes gold to its catalog (`GoldEngine.tables_on_lake`
        of the environment's engine)."""
        return self.env is Environment.LOCAL

    @property
    def embedded_source_path(self) -> Path:
        return self.home / "source.db"

    @property
    def dagster_home(self) -> Path:
        return self.home / "dagster"

    @property
    def source_dialect(self) -> Dialect:
        return dialect_of(self.source_odbc) if self.source_odbc else Dialect.SQLITE


def _day(text: str, origin: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{origin}={text!r} is not a day (YYYY-MM-DD)") from None


N = TypeVar("N", int, float)


def _number(environ: Mapping[str, str], name: str, default: N, minimum: N | None = None) -> N:
    """A numeric setting of the type of its default: finite, at least `minimum` (default 0)."""
    text = environ.get(name, "").strip()
    if not text:
        return default
    kind = type(default)
    low = kind(0) if minimum is None else minimum
    what = "a whole number" if kind is int else "a number"
    try:
        value = kind(text)
    except ValueError:
        value = None
    if value is None or not math.isfinite(value) or value < low:
        raise ValueError(f"{name}={text!r} must be {what} >= {low:g} (default {default:g})")
    return value


def _require_azure(environ: Mapping[str, str]) -> None:
    """The Azure environment has no embedded defaults: the source and the lake must be named."""
    if not environ.get("SPOTIFY_SOURCE_ODBC"):
        raise ValueError("SPOTIFY_ENV=azure needs SPOTIFY_SOURCE_ODBC (the Azure SQL connection)")
    lake = environ.get("SPOTIFY_LAKE_URL", "")
    if not lake.startswith("abfss://"):
        raise ValueError(
            f"SPOTIFY_ENV=azure needs SPOTIFY_LAKE_URL="
            f"abfss://<file system>@<account>.dfs.core.windows.net/<root>; got {lake!r}"
        )
