"""Where silver and gold compute: the engines the assets call, picked once by `build_resources`.

The silver and gold assets take an engine, never a Spark session or a workspace, so the same
assets run on the embedded default (`LocalSilver`, `LocalGold`: Sail in this process) and on
Databricks (`resources/databricks_engines.py`: a job task through Dagster Pipes, a pipeline update).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import date
from typing import ClassVar

from dagster import (
    AssetExecutionContext,
    ConfigurableResource,
    MetadataValue,
    TableColumn,
    TableSchema,
)

from resources.dagster_resources import LakeResource
from resources.delta_tables import CHUNK_ROWS, Days
from resources.gold_runner import GoldRunner, PartitionBuild
from resources.lake import LakeStorage
from resources.silver_store import SilverResult, SilverStore
from resources.spark import SparkResource
from spotify_assets.catalog.columns import CARRIED, gold_columns
from spotify_assets.catalog.counts import counted
from spotify_assets.catalog.gold_spec import Aggregate
from spotify_assets.catalog.lake_paths import gold_path
from spotify_assets.catalog.tables import Catalog, Table

PREVIEW_ROWS = 5


class SilverEngine(ConfigurableResource, ABC):
    """Rebuilds silver partitions from bronze (README: Silver), wherever Spark runs."""

    lake: LakeResource

    @abstractmethod
    def refresh(
        self, context: AssetExecutionContext, table: Table, days: Days | None
    ) -> SilverResult:
        """Replace the silver partitions `days` (None: the whole snapshot table) of `table`."""


class LocalSilver(SilverEngine):
    """Silver on the Spark session of this process (Sail by default, or any `sc://` endpoint)."""

    spark: SparkResource
    chunk_rows: int = CHUNK_ROWS  # bronze rows a fact's query reads at most

    def refresh(
        self, context: AssetExecutionContext, table: Table, days: Days | None
    ) -> SilverResult:
        store = SilverStore(self.lake, self.spark.session(), table, self.chunk_rows)
        return store.refresh(days, context.run.run_id)


@dataclass(frozen=True)
class GoldOutcome:
    """What a gold build reports to its asset: a log line, metadata, and the check counts."""

    summary: str
    metadata: dict[str, MetadataValue]
    failures: dict[str, int] | None  # rows dropped per expectation; None: not counted here
    problems: dict[str, int] | None = None  # SCD2 invariants broken; None: not evaluated here
    not_evaluated: str = ""  # why `failures` or `problems` is None
    rows: int | None = None  # of the partitions built (or the table); None: not counted here
    rows_per_day: dict[date, int] = field(default_factory=dict)  # of those holding any
    # The fact: rows whose dimension member has not arrived yet, per dimension; None: not counted
    unmatched: dict[str, int] | None = None
    # The fact: per reference (the calendar), the keys it lacks and the rows holding each; None:
    # not counted
    unreferenced: dict[str, dict[str, int]] | None = None


class GoldEngine(ConfigurableResource, ABC):
    """Builds the gold tables (README: Gold) from their specs in the catalog."""

    lake: LakeResource
    # Whether gold is Delta tables at `gold/<table>` on the lake, for reconciliation to compare.
    tables_on_lake: ClassVar[bool] = True

    @abstractmethod
    def apply_dimension(self, catalog: Catalog, table: Table, full: bool) -> GoldOutcome:
        """Bring an SCD2 dimension up to silver; `full`: rebuild it from every silver version."""

    @abstractmethod
    def build_calendar(self, catalog: Catalog, table: Table) -> GoldOutcome: ...

    @abstractmethod
    def build_fact(self, catalog: Catalog, days: Days) -> GoldOutcome:
        """Rebuild the fact's partitions `days` (a backdated refresh when they are old)."""

    @abstractmethod
    def build_aggregate(self, catalog: Catalog, spec: Aggregate, days: Days) -> GoldOutcome: ...


class LocalGold(GoldEngine):
    """The local gold runner (`resources/gold_runner.py`) on this process's Spark session."""

    spark: SparkResource
    chunk_rows: int = CHUNK_ROWS  # rows of its source a fact's or aggregate's query reads at most

    def _runner(self, catalog: Catalog) -> GoldRunner:
        return GoldRunner(self.lake, self.spark.session(), catalog, self.chunk_rows)

    def apply_dimension(self, catalog: Catalog, table: Table, full: bool) -> GoldOutcome:
        runner = self._runner(catalog)
        result = runner.apply_dimension(table, full=full)
        how = "rebuilt from all" if result.full else "applied"
        return GoldOutcome(
            summary=f"{table.lake_name}: {how} "
            f"{counted(result.versions_read, 'silver version')} of "
            f"{counted(result.changed_keys, 'key')} (silver v{result.silver_version}); "
            f"{counted(result.rows, 'row')}, {result.current:,} current",
            metadata={
                "dagster/row_count": MetadataValue.int(result.rows),
                "current_rows": MetadataValue.int(result.current),
                "changed_keys": MetadataValue.int(result.changed_keys),
                "versions_applied": MetadataValue.int(result.versions_read),
                "full_rebuild": MetadataValue.bool(result.full),
                "silver_version": MetadataValue.int(result.silver_version),
                **table_metadata(runner, self.lake, table.lake_name),
            },
            failures=result.failures,
            problems=result.problems,
        )

    def build_calendar(self, catalog: Catalog, table: Table) -> GoldOutcome:
        runner = self._runner(catalog)
        return self._outcome(runner, runner.build_calendar(table))

    def build_fact(self, catalog: Catalog, days: Days) -> GoldOutcome:
        runner = self._runner(catalog)
        return self._outcome(runner, runner.build_fact(days))

    def build_aggregate(self, catalog: Catalog, spec: Aggregate, days: Days) -> GoldOutcome:
        runner = self._runner(catalog)
        return self._outcome(runner, runner.build_aggregate(spec, days))

    def _outcome(self, runner: GoldRunner, result: PartitionBuild) -> GoldOutcome:
        days = f"{result.days[0]} .. {result.days[1]}" if result.days else "whole table"
        return GoldOutcome(
            summary=f"{result.table}: {counted(result.rows, 'row')} in {days}",
            metadata={
                "run_dropped_by_expectation": MetadataValue.json(result.failures),
                **(
                    {"rows_awaiting_member": MetadataValue.json(result.unmatched)}
                    if result.unmatched is not None
                    else {}
                ),
                **table_metadata(runner, self.lake, result.table),
            },
            failures=result.failures,
            rows=result.rows,
            rows_per_day=result.rows_per_day,
            unmatched=result.unmatched,
            unreferenced=result.unreferenced,
        )


def table_metadata(runner: GoldRunner, lake: LakeStorage, name: str) -> dict[str, MetadataValue]:
    """Schema (described as the catalog describes the table), a few rows and the path of a gold
    table, for the asset's page in the UI."""
    table = runner.read(name)
    described = {c.name: c.description for c in gold_columns(runner.catalog, name)}
    schema = TableSchema(
        columns=[
            TableColumn(
                f.name, f.dataType.simpleString(), description=described.get(f.name, CARRIED)
            )
            for f in table.schema.fields
        ]
    )
    rows = table.limit(PREVIEW_ROWS).collect()
    header = [f.name for f in table.schema.fields]
    preview = "\n".join(
        [
            "| " + " | ".join(header) + " |",
            "|" + " --- |" * len(header),
            *["| " + " | ".join("" if v is None else str(v) for v in row) + " |" for row in rows],
        ]
    )
    return {
        "dagster/column_schema": MetadataValue.table_schema(schema),
        "preview": MetadataValue.md(preview),
        "path": MetadataValue.path(lake.uri(gold_path(name))),
    }
