"""`spotify-lakehouse verify`: bronze manifests, bronze files and Delta logs checked against each
other, layer by layer (an empty layer that should hold data is a fault).

Reads only what is cheap: manifests, parquet footers, Delta logs and their file statistics.
Row-by-row agreement of the layers is reconciliation's work (`resources/reconciler.py`).
"""

from __future__ import annotations

from resources.bronze_store import BronzeStore
from resources.delta_tables import exists, log_gaps, lost_files, partition_rows
from resources.lake import LakeFileError, LakeStorage
from spotify_assets.bronze.manifest import Manifest
from spotify_assets.catalog.counts import counted
from spotify_assets.catalog.lake_paths import gold_path, quarantine_path, silver_path
from spotify_assets.catalog.tables import Catalog, Table
from spotify_assets.consistency.faults import Fault, Layer


def verify(lake: LakeStorage, catalog: Catalog, tables: list[Table]) -> list[Fault]:
    """Everything wrong on the lake for `tables`, bronze first."""
    return [fault for table in tables for fault in _table_faults(lake, catalog, table)]


def _table_faults(lake: LakeStorage, catalog: Catalog, table: Table) -> list[Fault]:
    store = BronzeStore(lake, table)
    try:
        manifest = store.current()
    except LakeFileError as error:
        # Without its manifest bronze cannot say what it holds: nothing below can be judged.
        path = store.manifest_path(store.latest_version() or 0)
        return [Fault(Layer.BRONZE, table.name, path, error.problem)]
    faults = [
        Fault(Layer.BRONZE, table.name, f.path, problem, (f.partition,) if f.partition else None)
        for f, problem in store.damaged_files(manifest.files)
    ]
    faults += delta_faults(lake, catalog, table, manifest)
    if not manifest.files and not faults:
        faults += _emptied_bronze(lake, table, store.root)
    return faults + _lost_data_files(lake, catalog, table, {f.path for f in faults})


def _emptied_bronze(lake: LakeStorage, table: Table, root: str) -> list[Fault]:
    """Bronze holding nothing under a silver that holds rows: its manifests were lost, or set
    aside by a repair cut short before it re-extracted the table. For `verify` only: a `run`
    loads such a table again from its first day."""
    relative = silver_path(table)
    rows = partition_rows(lake, relative, None, None) if exists(lake, lake.path(relative)) else 0
    if not rows:
        return []
    problem = f"holds nothing while silver holds {counted(rows, 'row')} (its manifests lost?)"
    return [Fault(Layer.BRONZE, table.name, root, problem)]


def delta_faults(
    lake: LakeStorage, catalog: Catalog, table: Table, manifest: Manifest
) -> list[Fault]:
    """The faults of a table's silver and gold Delta tables (logs and emptiness only: cheap
    enough to check before every run)."""
    bronze_rows = sum(f.rows for f in manifest.files if f.live or f.window is None)
    silver = [silver_path(table), quarantine_path(table)]
    faults, silver_rows = _delta_faults(lake, table, Layer.SILVER, silver, bronze_rows)
    # Behind a damaged silver, what gold should hold is judged from bronze.
    below = bronze_rows if faults else silver_rows
    for name in catalog.gold_tables(table):
        faults += _delta_faults(lake, table, Layer.GOLD, [gold_path(name)], below)[0]
    return faults


def _lost_data_files(
    lake: LakeStorage, catalog: Catalog, table: Table, judged: set[str]
) -> list[Fault]:
    """Delta tables with an intact log whose data files are gone: a listing of each table, for
    `verify` only (not before every run)."""
    tables = [
        (Layer.SILVER, silver_path(table)),
        (Layer.SILVER, quarantine_path(table)),
        *((Layer.GOLD, gold_path(name)) for name in catalog.gold_tables(table)),
    ]
    faults = []
    for layer, relative in tables:
        if relative in judged or not exists(lake, lake.path(relative)):
            continue
        if lost := lost_files(lake, relative):
            problem = f"is missing {len(lost)} data file(s) its Delta log lists: {lost[0]}"
            faults.append(Fault(layer, table.name, relative, problem))
    return faults


def _delta_faults(
    lake: LakeStorage, table: Table, layer: Layer, relatives: list[str], rows_below: int
) -> tuple[list[Fault], int]:
    """Faults of the Delta tables holding one layer of a table (silver: valid and quarantined
    rows), and the rows they hold together; empty while the layer below holds rows is a fault."""
    faults, rows = [], 0
    for relative in relatives:
        if gaps := log_gaps(lake, lake.path(relative)):
            missing = ", ".join(f"{v:020d}.json" for v in gaps)
            faults.append(Fault(layer, table.name, relative, f"is missing log commit(s) {missing}"))
        elif exists(lake, lake.path(relative)):
            try:  # the log read once, with its file statistics
                rows += partition_rows(lake, relative, None, None)
            except LakeFileError as error:
                faults.append(Fault(layer, table.name, relative, error.problem))
    if not faults and rows_below and not rows:
        below = counted(rows_below, "row")
        problem = f"is empty while the layer below holds {below} (a lost Delta log?)"
        faults.append(Fault(layer, table.name, relatives[0], problem, empty=True))
    return faults, rows
