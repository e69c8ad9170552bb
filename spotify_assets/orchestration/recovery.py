"""`spotify-lakehouse verify [--repair]`: what is missing or damaged on the lake, and rebuilding
it from the layer below — bronze by re-extracting its days from the source, silver from bronze,
gold from silver — with the pipeline's own runs (README, "When something goes wrong").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime

from dagster import DagsterInstance

from resources.bronze_store import BronzeStore
from resources.lake import LakeFileError
from resources.lake_check import verify as verify_lake
from spotify_assets.catalog.gold_spec import Scd2Dimension
from spotify_assets.catalog.lake_paths import gold_state_path
from spotify_assets.catalog.tables import Table
from spotify_assets.consistency.faults import Fault, Layer
from spotify_assets.consistency.reconcile import Layer as RebuildFrom
from spotify_assets.consistency.reconcile import day_ranges
from spotify_assets.orchestration.gate import select_tables
from spotify_assets.orchestration.ingest import (
    PlannedRun,
    RunFailed,
    execute,
    plan_refresh,
    runner_and_resources,
)
from spotify_assets.orchestration.settings import Settings


@dataclass(frozen=True)
class Repair:
    found: list[str]
    runs: list[str]
    remaining: list[str]  # what verify still finds afterwards
    loads: list[dict[str, object]] = field(default_factory=list)


def verify(settings: Settings, tables: Sequence[str] = ()) -> list[Fault]:
    runner, _ = runner_and_resources(settings)
    catalog = runner.source.catalog
    return verify_lake(runner.lake, catalog, select_tables(catalog, tables))


def repair(settings: Settings, instance: DagsterInstance, tables: Sequence[str] = ()) -> Repair:
    """Rebuild what `verify` finds, then verify again."""
    runner, resources = runner_and_resources(settings)
    catalog = runner.source.catalog
    selected = select_tables(catalog, tables)
    faults = verify_lake(runner.lake, catalog, selected)
    every_day = {t.name: (t.partition_start, datetime.now(UTC).date()) for t in selected}
    runs: list[PlannedRun] = []
    for table in selected:
        found = [f for f in faults if f.table == table.name]
        if not found:
            continue
        if any(f.layer is Layer.BRONZE and f.days is None for f in found):
            _set_aside_damaged_manifests(runner.store(table))
        bronze = [f for f in found if f.layer is Layer.BRONZE]
        runs += _bronze_runs(table, bronze, every_day[table.name])
        deeper = [f for f in found if f.layer is not Layer.BRONZE]
        for fault in deeper:
            runner.lake.remove_tree(fault.path)  # rebuilt whole below: a damaged log must go
        if deeper:
            silver = any(f.layer is Layer.SILVER for f in deeper)
            start = RebuildFrom.SILVER if silver else RebuildFrom.GOLD
            if silver and isinstance(table.gold, Scd2Dimension):
                # Its apply state names versions of the silver table deleted above: re-apply all.
                runner.lake.remove_tree(gold_state_path(table))
            days = every_day[table.name] if table.change_time_column else None
            runs.append(PlannedRun((table.name,), days, False, "", start))
    loads, failures = [], []
    try:
        loads = execute(runs, runner, resources, instance)
    except RunFailed as failed:
        loads, failures = failed.loads, failed.failures
    remaining = [f.describe() for f in verify_lake(runner.lake, catalog, selected)]
    return Repair(
        found=[f.describe() for f in faults],
        runs=[r.describe() for r in runs],
        remaining=failures + remaining,
        loads=[asdict(load) for load in loads],
    )


def _set_aside_damaged_manifests(store: BronzeStore) -> None:
    """Newest first, until the current manifest reads (or none is left: a first load)."""
    while True:
        try:
            store.current()
            return
        except LakeFileError:
            store.set_aside_latest()


def _bronze_runs(
    table: Table, faults: list[Fault], every_day: tuple[date, date]
) -> list[PlannedRun]:
    """Re-extractions from the source: the damaged days, or the whole table when its manifest
    was damaged (or it is a snapshot)."""
    if not faults:
        return []
    whole = any(f.days is None for f in faults)
    if not table.change_time_column:
        return [PlannedRun((table.name,), None, True)]
    if whole:
        return plan_refresh([table], *every_day)
    days = {d for f in faults for d in f.days or ()}
    return [PlannedRun((table.name,), r, False) for r in day_ranges(days)]
