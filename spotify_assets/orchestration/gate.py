"""Whether `run` has anything to do, decided before Dagster or Spark is loaded: from the source's
change feeds, the bronze manifests and the Delta logs, on the plain objects of `resources.py`.
The rules it applies (which tables are intact, which have changes, what reconciliation finds
stale) are the ones the runs plan with (`ingest.py` uses them from here).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from resources.copy_runner import (
    ChangeTimeNotATime,
    CopyRunner,
    LocalCopyRunner,
    RowsWithoutChangeTime,
    Waiting,
)
from resources.lake import REPAIR_COMMAND, LakeFileError
from resources.lake_check import delta_faults
from resources.reconciler import gold_behind_silver, reconcile_all, snapshot_behind
from spotify_assets.catalog.gold_spec import Scd2Dimension
from spotify_assets.catalog.tables import Catalog, Table
from spotify_assets.orchestration.resources import copy_runner
from spotify_assets.orchestration.settings import Settings


@dataclass(frozen=True)
class Selection:
    """The selected tables whose bronze manifest and Delta logs can be read (`intact`) and
    whose source rows each have a partition (`timed`), and one line for each of the others.
    `run` checks them once for its gate, its incremental run and the repair after it: no run
    leaves a table unreadable (each of its writes commits whole)."""

    tables: list[Table]
    failures: list[str]


def checked(runner: CopyRunner, tables: Sequence[str] = ()) -> Selection:
    """The tables named (every table if none), checked with `intact`, then with `timed`."""
    readable, damaged = intact(runner, select_tables(runner.source.catalog, tables))
    loadable, untimed = timed(runner, readable)
    return Selection(loadable, damaged + untimed)


def up_to_date(settings: Settings, selection: Selection | None = None) -> bool:
    """Whether `run` has nothing to do: every selected table (every table if no `selection`)
    `caught_up` and no day stale in any layer. Decided from the source's change feeds, the
    bronze manifests and the Delta logs alone — no Dagster instance, no run, no Spark session —
    and False when in doubt (a damaged table, gold not on the lake): the runs then find out."""
    if not settings.gold_on_lake:
        return False
    runner = copy_runner(settings)
    selection = selection or checked(runner)
    if selection.failures:
        return False
    selected = selection.tables
    try:
        if not all(caught_up(runner, t) for t in selected):
            return False
        lookback = settings.reconcile_lookback_days
        found = reconcile_all(runner, selected, lookback, gold_on_lake=True)
    except LakeFileError:
        return False
    return all(table.consistent for table in found)


def caught_up(runner: LocalCopyRunner, table: Table) -> bool:
    """Whether an incremental run of `table` would change nothing, with gold on the lake: the
    source holds no change since its load, and no run stopped part-way left behind a layer
    that the per-day reconciliation cannot see (a snapshot's silver or gold; an SCD2
    dimension's gold, which applies what silver gained since its last apply)."""
    if runner.has_changes(table):
        return False
    if not table.change_time_column:
        return not snapshot_behind(runner, table, gold_on_lake=True)
    return not (isinstance(table.gold, Scd2Dimension) and gold_behind_silver(runner, table))


def not_loaded_yet(runner: CopyRunner, tables: Iterable[Table]) -> dict[str, Waiting]:
    """Per partitioned table of `tables`, the source rows past what a load may take now
    (`load_bound`), where there are any: reported by a `run` with nothing to do as well."""
    bound = runner.load_bound()
    waiting = {t.name: runner.not_loaded_yet(t, bound) for t in tables if t.change_time_column}
    return {name: rows for name, rows in waiting.items() if rows.rows}


def require_partitions(runner: CopyRunner, tables: Iterable[Table]) -> None:
    """`RowsBeforePartitionStart` if a partitioned table holds a row older than its first
    partition: checked before any run, since the change feed from the watermark never sees it."""
    for table in tables:
        if table.change_time_column:
            runner.first_change(table)


def intact(runner: CopyRunner, tables: Sequence[Table]) -> tuple[list[Table], list[str]]:
    """The tables whose bronze manifest and Delta logs can be read, and one line for each of the
    others: a damaged table blocks only itself. (An emptied table with an intact log is not
    blocked: reconciliation compares the layers and rebuilds it; `verify` names it.)"""
    tables_intact, failures = [], []
    catalog = runner.source.catalog
    for table in tables:
        try:
            manifest = runner.store(table).current()
        except LakeFileError as error:
            failures.append(str(error))
            continue
        faults = [f for f in delta_faults(runner.lake, catalog, table, manifest) if not f.empty]
        failures += [f"{f.describe()}; run `{REPAIR_COMMAND}`" for f in faults]
        if not faults:
            tables_intact.append(table)
    return tables_intact, failures


def timed(runner: CopyRunner, tables: Sequence[Table]) -> tuple[list[Table], list[str]]:
    """The tables whose source rows each have a partition, and one line for each of the others:
    rows without a change time (or with one that is not a time) hold back only their own table
    until the source is corrected. A row older than the partition start stops every load
    (`RowsBeforePartitionStart`: the setting is wrong), as it is never skipped."""
    tables_timed, failures = [], []
    for table in tables:
        try:
            if table.change_time_column:
                runner.first_change(table)
        except (RowsWithoutChangeTime, ChangeTimeNotATime) as error:
            failures.append(str(error))
            continue
        tables_timed.append(table)
    return tables_timed, failures


def select_tables(catalog: Catalog, tables: Sequence[str]) -> list[Table]:
    return [catalog[name] for name in tables] if tables else list(catalog)
