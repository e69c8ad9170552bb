"""Silver on Databricks: the job task that runs `SilverStore.refresh` next to the data.

Dagster submits it as a one-time run through Pipes (`resources/databricks_engines.py`), and the
asset bundle (`databricks.yml`) deploys it as the job `spotify_silver` for runs started in
Databricks. Both run the synced file with the same arguments:

    databricks_silver.py --repo-root <bundle files> --lake-url abfss://... --table FactStream
                         [--mode watermark] [--days 2026-03-01 2026-03-07] --run-id <run id>

It is a script as much as a module: Databricks runs the file from the bundle's synced files, not
an installed wheel (the project pins pyspark and Sail, which must not replace the runtime's
Spark), and may run it without `__file__`, so the project is imported only after `--repo-root` is
put on sys.path. Under Dagster it reports its result through Pipes; started any other way, it
prints it. Only the standard library is imported at module level: the Dagster side imports this
module for `SilverTask` and the result's metadata shape. Databricks runs it from its own folder,
which may come first on sys.path: no module of `resources/` is named like a package the task
imports (hence `databricks_engines.py`, not `databricks.py`, which would hide the SDK's).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING, Any, Protocol

from spotify_assets.catalog.counts import counted

if TYPE_CHECKING:
    from dagster_pipes import PipesContext
    from pyspark.sql import SparkSession

    from resources.silver_store import SilverResult

# Spark's session time zone of every engine: bronze and silver times are naive UTC.
SESSION_TIME_ZONE = "UTC"


@dataclass(frozen=True)
class SilverTask:
    """The task's arguments: which silver partitions to rebuild, from which lake, for which run."""

    repo_root: str  # the bundle's synced files (`${workspace.file_path}`)
    lake_url: str  # abfss:// URL of the lake root
    table: str  # a source table name of the catalog (`FactStream`)
    days: tuple[date, date] | None  # inclusive daily partitions; None: the whole snapshot table
    run_id: str  # the Dagster run id, written to the quarantine rows
    # The table's capture mode where the deployment overrides the catalog's
    # (SPOTIFY_CAPTURE_MODES): it decides the change time silver partitions by.
    mode: str | None = None

    def arguments(self) -> list[str]:
        """The command line that `parse` reads back (the job task's `parameters`)."""
        days = ["--days", *(d.isoformat() for d in self.days)] if self.days else []
        mode = ["--mode", self.mode] if self.mode else []
        return [
            "--repo-root", self.repo_root,
            "--lake-url", self.lake_url,
            "--table", self.table,
            *mode,
            *days,
            "--run-id", self.run_id,
        ]  # fmt: skip


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="databricks_silver.py", description="Rebuild silver partitions from bronze."
    )
    parser.add_argument("--repo-root", required=True, help="the bundle's synced files")
    parser.add_argument("--lake-url", required=True, help="abfss:// URL of the lake root")
    parser.add_argument("--table", required=True, help="source table name, e.g. FactStream")
    parser.add_argument("--mode", help="capture mode, where it differs from the catalog's")
    parser.add_argument(
        "--days",
        nargs=2,
        type=_day,
        metavar=("FIRST", "LAST"),
        help="inclusive daily partitions; omitted or empty: every partition (a snapshot table "
        "has none)",
    )
    parser.add_argument("--run-id", required=True, help="the Dagster run id")
    return parser


def parse(argv: Sequence[str]) -> SilverTask:
    """The task's arguments; Pipes' own (`--dagster-pipes-*`, appended on existing clusters) are
    left for its params loader."""
    parser = _parser()
    args, _ = parser.parse_known_args(list(argv))
    first, last = args.days or (None, None)
    if (first is None) != (last is None):
        parser.error("--days needs both days, or neither")
    if first and last and first > last:
        parser.error(f"--days {first} {last}: the first day is after the last")
    days = (first, last) if first and last else None
    return SilverTask(args.repo_root, args.lake_url, args.table, days, args.run_id, args.mode)


def _day(text: str) -> date | None:
    # The bundle's job passes its day parameters through even when they are left empty.
    return date.fromisoformat(text) if text else None


# --- the result, as Pipes metadata and back ---


def result_metadata(result: SilverResult) -> dict[str, Any]:
    """Pipes metadata of a silver result (a dict value must name its type in Pipes)."""
    return {
        "table": result.table,
        "days": {"raw_value": [d.isoformat() for d in result.days or ()], "type": "json"},
        "bronze_rows": result.bronze_rows,
        "silver_rows": result.silver_rows,
        "quarantined": result.quarantined,
        "failures_by_rule": {"raw_value": dict(result.failures), "type": "json"},
        **{
            name: {"raw_value": {d.isoformat(): n for d, n in per_day.items()}, "type": "json"}
            for name, per_day in (
                ("rows_per_day", result.rows_per_day),
                ("quarantined_per_day", result.quarantined_per_day),
            )
        },
    }


def result_from_metadata(values: Mapping[str, Any]) -> SilverResult:
    """The silver result from the reported metadata's values (`result_metadata` inverted)."""
    from resources.silver_store import SilverResult

    days = [date.fromisoformat(d) for d in values["days"]]
    return SilverResult(
        table=values["table"],
        days=(days[0], days[1]) if days else None,
        bronze_rows=int(values["bronze_rows"]),
        silver_rows=int(values["silver_rows"]),
        quarantined=int(values["quarantined"]),
        failures={rule: int(count) for rule, count in values["failures_by_rule"].items()},
        rows_per_day=_per_day(values["rows_per_day"]),
        quarantined_per_day=_per_day(values["quarantined_per_day"]),
    )


def _per_day(counts: Mapping[str, Any]) -> dict[date, int]:
    return {date.fromisoformat(day): int(n) for day, n in counts.items()}


# --- running ---


class Refresher(Protocol):
    def refresh(self, days: tuple[date, date] | None, run_id: str) -> SilverResult: ...


class StoreFactory(Protocol):
    """`SilverStore`'s constructor, or a stand-in for it in tests."""

    def __call__(self, lake: Any, spark: SparkSession, table: Any) -> Refresher: ...


def run(task: SilverTask, spark: SparkSession, store: StoreFactory | None = None) -> SilverResult:
    """Rebuild the task's silver partitions with the same `SilverStore` the local engine uses."""
    from resources.lake import LakeStorage
    from resources.silver_store import SilverStore
    from spotify_assets.catalog.tables import CATALOG

    catalog = CATALOG.with_modes({task.table: task.mode}) if task.mode else CATALOG
    make = store or SilverStore
    return make(LakeStorage(url=task.lake_url), spark, catalog[task.table]).refresh(
        task.days, task.run_id
    )


def main(argv: Sequence[str] | None = None) -> None:
    task = parse(sys.argv[1:] if argv is None else argv)
    if task.repo_root not in sys.path:
        sys.path.insert(0, task.repo_root)
    from dagster_pipes import (
        PipesCliArgsParamsLoader,
        PipesDbfsContextLoader,
        PipesDbfsMessageWriter,
        PipesEnvVarParamsLoader,
        open_dagster_pipes,
    )
    from pyspark.sql import SparkSession

    # Pipes' parameters arrive as arguments on an existing cluster (no environment can be set
    # there) and as environment variables on a new job cluster.
    cli = PipesCliArgsParamsLoader()
    params = cli if cli.is_dagster_pipes_process() else PipesEnvVarParamsLoader()
    with open_dagster_pipes(
        context_loader=PipesDbfsContextLoader(),
        message_writer=PipesDbfsMessageWriter(),
        params_loader=params,
    ) as pipes:
        spark = SparkSession.builder.getOrCreate()
        spark.conf.set("spark.sql.session.timeZone", SESSION_TIME_ZONE)
        report(pipes, run(task, spark))


def report(pipes: PipesContext, result: SilverResult) -> None:
    """Send the result to Dagster (a no-op outside Pipes) and print it for the job run's output."""
    pipes.log.info(
        f"{result.table}: {counted(result.bronze_rows, 'bronze row')} -> {result.silver_rows:,} "
        f"silver, {result.quarantined:,} quarantined"
    )
    metadata = result_metadata(result)
    pipes.report_asset_materialization(metadata=metadata)
    print(json.dumps(metadata))


if __name__ == "__main__":
    main()
