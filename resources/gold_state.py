"""What gold keeps on the lake besides its tables, read without Spark (by the gold runner, and by
reconciliation deciding whether a run has anything to do): which silver version each SCD2
dimension reflects, and the fact's dimension keys not matched yet.
"""

from __future__ import annotations

import pyarrow as pa

from resources.delta_tables import exists, read_delta
from resources.lake import LakeStorage
from spotify_assets.catalog.lake_paths import gold_state_path, unmatched_path
from spotify_assets.catalog.tables import Catalog, Table


def applied_version(lake: LakeStorage, table: Table) -> int | None:
    """The silver version gold/<dim> reflects; None before its first apply."""
    names = lake.list_names(gold_state_path(table))
    states = sorted(n for n in names if n.endswith(".json"))
    if not states:
        return None
    return int(lake.read_json(f"{gold_state_path(table)}/{states[-1]}")["silver_version"])


def unmatched_records(lake: LakeStorage, catalog: Catalog) -> pa.Table | None:
    """What gold/_unmatched/<fact> holds: per day, the dimension keys of facts no dimension row
    has yet (`unmatched`); None before the fact's first build. A small table, read whole."""
    relative = unmatched_path(catalog.fact)
    if not exists(lake, lake.path(relative)):
        return None
    return read_delta(lake, relative)
