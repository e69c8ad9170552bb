"""The lake side of reconciliation: what each layer holds per day, boundary by boundary.

- source ↔ bronze, over the lookback: the source's per-day profile query against bronze's live
  rows of those days, profiled the same way;
- bronze ↔ silver (+ quarantine) ↔ gold fact ↔ aggregates, over every loaded day: partition
  statistics from the bronze manifest and the Delta logs (no data read, no Spark), and the fact's
  days against the dimension versions that can change them (the fact's point-in-time lookups:
  `affects_from`, over the key, time and sequence columns of the dimensions' silver versions
  written since the fact's oldest day was built and the older versions of their keys, the
  files the Delta log names read one by one), and the days whose facts held a key no
  dimension row had yet, once the dimension's gold has it (from gold/_unmatched/<fact>,
  usually empty).

`reconcile_all` gives, per table, the stale days and the layer each must be rebuilt from.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import astuple, dataclass, replace
from datetime import date

import pyarrow as pa
import pyarrow.compute as pc

from resources.bronze_store import BronzeStore
from resources.copy_runner import CopyRunner
from resources.delta_tables import (
    Days,
    add_actions,
    delta_table,
    exists,
    partition_stats,
    read_delta,
    table_stats,
)
from resources.gold_state import applied_version, unmatched_records
from resources.lake import LakeStorage
from spotify_assets.bronze.manifest import Manifest
from spotify_assets.bronze.profile import DayProfile, added, day_profiles, profiled_columns
from spotify_assets.bronze.windows import Window, as_date
from spotify_assets.catalog.gold_spec import UNMATCHED_DIMENSION, PointInTimeFact, Scd2Dimension
from spotify_assets.catalog.lake_paths import bronze_path, gold_path, quarantine_path, silver_path
from spotify_assets.catalog.tables import (
    CHANGE_DATE,
    CHANGE_SEQ,
    VERSION_AT,
    CaptureMode,
    Catalog,
    Table,
)
from spotify_assets.consistency.reconcile import (
    ABSENT,
    AFFECTS_FROM,
    Layer,
    PartitionStats,
    affects_from,
    behind,
    first_layers,
    lookback_window,
    members_arrived,
    newest_per_day,
    stale_days,
    stale_partitions,
    written_before,
)

Partitions = dict[date, PartitionStats]


@dataclass(frozen=True)
class Reconciliation:
    table: str
    window: Window | None  # compared with the source; None: nothing loaded yet, or a snapshot
    source: dict[date, DayProfile]
    bronze: dict[date, DayProfile]
    lake: dict[str, Partitions]  # per lake table (its path in the lake), what it holds per day
    stale: dict[date, Layer]  # stale day -> the first layer to rebuild it from
    rebuild_gold: bool = False  # its unpartitioned gold table is empty while silver is not

    @property
    def consistent(self) -> bool:
        """Nothing of the table to rebuild: no stale day, gold not missing."""
        return not self.stale and not self.rebuild_gold

    def evidence(self, first: date, last: date) -> dict[str, dict[str, list[int | None]]]:
        """What each side holds of the stale days `first`..`last` (a repair's identity)."""
        sides = {"source": self.source, "bronze profile": self.bronze, **self.lake}
        return {
            str(day): {
                name: list(astuple(held[day])) for name, held in sides.items() if day in held
            }
            for day in sorted(self.stale)
            if first <= day <= last
        }

    def describe(self) -> str:
        gold = "; gold empty while silver holds rows" if self.rebuild_gold else ""
        if not self.stale:
            return f"{self.table}: every loaded day matches its upstream{gold}"
        days = ", ".join(
            f"{day} (from {layer.name.lower()})" for day, layer in sorted(self.stale.items())
        )
        return f"{self.table}: stale {days}{gold}"


def reconcile_all(
    runner: CopyRunner, tables: Sequence[Table], lookback_days: int, gold_on_lake: bool
) -> list[Reconciliation]:
    """Every table of `tables`; the fact's days on and after a dimension day rebuilt (all of
    them when a dimension's gold is rebuilt whole) are rebuilt from gold too, once the
    dimension is (after it, in the catalog's order of `tables`)."""
    found = [reconcile(runner, t, lookback_days, gold_on_lake) for t in tables]
    fact = runner.source.catalog.fact
    spec = fact.gold
    if not gold_on_lake or not isinstance(spec, PointInTimeFact):
        return found
    lookups = {lookup.dimension for lookup in spec.lookups}
    rebuilt = [day for r in found if r.table in lookups for day in r.stale]
    rebuilt += [date.min for r in found if r.table in lookups and r.rebuild_gold]
    return [
        _with_gold_from(r, min(rebuilt)) if r.table == fact.name and rebuilt else r for r in found
    ]


def _with_gold_from(found: Reconciliation, first: date) -> Reconciliation:
    days = {day for held in found.lake.values() for day, stats in held.items() if stats.rows}
    later = [(Layer.GOLD, [day for day in days if day >= first])]
    stale = first_layers([*((layer, [day]) for day, layer in found.stale.items()), *later])
    return replace(found, stale=stale)


def reconcile(
    runner: CopyRunner, table: Table, lookback_days: int, gold_on_lake: bool = True
) -> Reconciliation:
    """The days of `table` stale in some layer: bronze against the source within
    `lookback_days` before the watermark; the lake's layers against each other on every day.
    `gold_on_lake`: gold is Delta tables on the lake (not with Databricks' pipeline, which
    publishes to its catalog)."""
    if table.mode is CaptureMode.SNAPSHOT:
        return Reconciliation(table.name, None, {}, {}, {}, {})
    manifest = runner.store(table).current()
    window, source, bronze = _source_and_bronze(runner, table, manifest, lookback_days)
    live = runner.store(table).partition_stats(manifest)
    lake, boundaries = _lake_layers(runner, table, live, gold_on_lake)
    stale = first_layers([(Layer.BRONZE, stale_days(source, bronze)), *boundaries])
    # An SCD2 dimension applies what silver gained since its last apply: emptied, it would stay
    # empty, so it is rebuilt whole.
    silver_rows = sum(s.rows for s in lake[silver_path(table)].values())
    empty_gold = (
        gold_on_lake
        and isinstance(table.gold, Scd2Dimension)
        and silver_rows > 0
        and table_stats(runner.lake, gold_path(table.lake_name)).rows == 0
    )
    return Reconciliation(table.name, window, source, bronze, lake, stale, empty_gold)


def late_days(runner: CopyRunner, table: Table, lookback_days: int) -> list[date]:
    """The loaded days within `lookback_days` before the watermark where the source holds
    other rows than bronze (late rows): the source ↔ bronze part of `reconcile` alone."""
    if table.mode is CaptureMode.SNAPSHOT:
        return []
    manifest = runner.store(table).current()
    _, source, bronze = _source_and_bronze(runner, table, manifest, lookback_days)
    return stale_days(source, bronze)


def _source_and_bronze(
    runner: CopyRunner, table: Table, manifest: Manifest, lookback_days: int
) -> tuple[Window | None, dict[date, DayProfile], dict[date, DayProfile]]:
    """The lookback window before the watermark, and the source's and bronze's profile of it."""
    window = lookback_window(manifest.watermark, lookback_days, table.first_partition)
    if window is None:
        return None, {}, {}
    with runner.source.session() as session:
        rows = session.query(session.sql.daily_profile_query(table, window))
    source = {as_date(day): DayProfile(int(n), int(total or 0)) for day, n, total in rows}
    return window, source, bronze_profile(runner, table, window, manifest)


def _lake_layers(
    runner: CopyRunner, table: Table, bronze: Partitions, gold_on_lake: bool
) -> tuple[dict[str, Partitions], list[tuple[Layer, set[date]]]]:
    """What each lake layer of `table` holds per day, and the days each boundary finds stale
    (tagged with the layer to rebuild them from)."""
    lake, catalog = runner.lake, runner.source.catalog
    names = [silver_path(table), quarantine_path(table)]
    silver, quarantine = (partition_stats(lake, name, CHANGE_DATE) for name in names)
    held = {bronze_path(table.name): bronze, names[0]: silver, names[1]: quarantine}
    boundaries = [(Layer.SILVER, _silver_stale(table, bronze, silver, quarantine))]
    spec = table.gold
    if gold_on_lake and isinstance(spec, PointInTimeFact):
        fact_name = gold_path(table.lake_name)
        fact = held[fact_name] = partition_stats(lake, fact_name, spec.date_column)
        built = min((s.written for s in fact.values() if s.written is not None), default=None)
        dimensions = _newest(
            _versions_by_first_day(lake, catalog[lookup.dimension], built)
            for lookup in spec.lookups
        )
        stale = stale_partitions(silver, fact, False) | written_before(dimensions, fact)
        stale |= _members_arrived(lake, catalog)
        boundaries.append((Layer.GOLD, stale))
        for aggregate in catalog.aggregates:
            name = gold_path(aggregate.name)
            held[name] = partition_stats(lake, name, spec.date_column)
            boundaries.append((Layer.AGGREGATES, stale_partitions(fact, held[name], False)))
    return held, boundaries


def _silver_stale(
    table: Table, bronze: Partitions, silver: Partitions, quarantine: Partitions
) -> set[date]:
    """The partitions whose silver and quarantine were not built from bronze as it is now."""
    # Every bronze row is a silver or a quarantined row, once each where no row is delivered
    # twice (watermark mode); change feeds may deliver a version as a record and as an image.
    cleaned = {
        day: _cleaned(silver.get(day, ABSENT), quarantine.get(day, ABSENT))
        for day in set(silver) | set(quarantine)
    }
    return stale_partitions(bronze, cleaned, table.mode is CaptureMode.WATERMARK)


def silver_behind(lake: LakeStorage, table: Table, days: Days) -> list[date]:
    """The partitions of `days` whose silver is behind bronze (the bronze ↔ silver boundary of
    `reconcile`), from the manifest and the Delta logs."""
    bronze = BronzeStore(lake, table).partition_stats()
    silver, quarantine = (
        partition_stats(lake, name, CHANGE_DATE)
        for name in (silver_path(table), quarantine_path(table))
    )
    stale = _silver_stale(table, bronze, silver, quarantine)
    return sorted(day for day in stale if days[0] <= day <= days[1])


def _members_arrived(lake: LakeStorage, catalog: Catalog) -> set[date]:
    """The fact's days holding a key that no dimension row had when they were built and that
    the dimension's gold has now (`members_arrived`)."""
    unmatched = unmatched_records(lake, catalog)
    if unmatched is None or unmatched.num_rows == 0:
        return set()
    spec = catalog.fact.gold
    assert isinstance(spec, PointInTimeFact)
    present = {}
    for dimension in set(unmatched[UNMATCHED_DIMENSION].to_pylist()):
        table = catalog[dimension]
        (key,) = table.key
        relative = gold_path(table.lake_name)
        if exists(lake, lake.path(relative)):
            held = read_delta(lake, relative, [key])
            present[dimension] = pc.cast(held[key], pa.string())
    return members_arrived(unmatched, present, spec.date_column)


def _versions_by_first_day(lake: LakeStorage, dimension: Table, built: int | None) -> Partitions:
    """Per first day of the fact that some silver versions of `dimension` can change
    (`affects_from`), when the newest file holding such versions was written: of the files
    written after `built` (when the fact's oldest day was built; None: no day built), as an
    older file cannot make a day stale (`written_before`). Their versions and the older
    versions of the same keys are read, not the dimension's whole history."""
    relative = silver_path(dimension)
    if built is None or not exists(lake, lake.path(relative)):
        return {}
    actions = add_actions(delta_table(lake, relative))
    newer = [i for i, at in enumerate(actions["modification_time"].to_pylist()) if at > built]
    if not newer:
        return {}
    changed = pa.concat_tables(_versions(lake, dimension, actions, newer))
    # A version's first day depends on every version of its key (`affects_from`).
    keys = {k: pc.unique(changed[k]) for k in dimension.key}
    older = sorted(set(range(actions.num_rows)) - set(newer))
    versions = pa.concat_tables([changed, *_versions(lake, dimension, actions, older, keys)])
    days = affects_from(versions, dimension.key, VERSION_AT, CHANGE_SEQ, CHANGE_DATE)
    newest = newest_per_day(days.filter(pc.is_valid(days[_WRITTEN])), AFFECTS_FROM, _WRITTEN)
    return {day: PartitionStats(0, at) for day, at in newest.items()}


_WRITTEN = "_written"  # when the version's file was written; NULL: a file older than the fact


def _versions(
    lake: LakeStorage,
    dimension: Table,
    actions: pa.Table,
    files: Sequence[int],
    keys: Mapping[str, pa.Array] | None = None,
) -> list[pa.Table]:
    """Per file of silver's add `actions` numbered in `files`, the key, time and sequence of its
    versions (of the `keys` only, if given), their partition and, unless `keys` are given, when
    the file was written. Each file is read on its own and its values come from the log's Arrow
    columns: pyarrow's datasets, and any Arrow value built from a Python one, import pandas,
    which an idle run does without."""
    relative = silver_path(dimension)
    paths, days = actions["path"].to_pylist(), actions[f"partition.{CHANGE_DATE}"]
    columns = [*dimension.key, VERSION_AT, CHANGE_SEQ]
    parts = []
    for i in files:
        rows = lake.read_parquet([f"{relative}/{paths[i]}"], columns)
        if keys is not None:
            rows = rows.filter(
                functools.reduce(pc.and_, (pc.is_in(rows[k], v) for k, v in keys.items()))
            )
        written = (
            pa.nulls(rows.num_rows, pa.int64())
            if keys is not None
            else pa.repeat(actions["modification_time"][i], rows.num_rows)
        )
        rows = rows.append_column(CHANGE_DATE, pa.repeat(days[i], rows.num_rows))
        parts.append(rows.append_column(_WRITTEN, written))
    return parts


def _cleaned(silver: PartitionStats, quarantine: PartitionStats) -> PartitionStats:
    """What silver made of a bronze partition: its rows and its quarantined rows."""
    times = [t for t in (silver.written, quarantine.written) if t is not None]
    return PartitionStats(silver.rows + quarantine.rows, max(times, default=None))


def snapshot_behind(runner: CopyRunner, table: Table, gold_on_lake: bool) -> bool:
    """Whether silver (or gold, when on the lake) of a snapshot table was not built from the
    snapshot bronze holds now: the same comparison as a day's, over the whole table."""
    bronze = runner.store(table).partition_stats().get(None, ABSENT)
    lake, name = runner.lake, table.lake_name
    silver = table_stats(lake, silver_path(table))
    cleaned = _cleaned(silver, table_stats(lake, quarantine_path(table)))
    if behind(bronze, cleaned, one_to_one=True):
        return True
    return gold_on_lake and behind(silver, table_stats(lake, gold_path(name)), one_to_one=False)


def gold_behind_silver(runner: CopyRunner, table: Table) -> bool:
    """Whether an SCD2 dimension's gold has not applied silver's latest version (a run stopped
    between the two): it applies what silver gained since, so its next run catches up."""
    silver = silver_path(table)
    if not exists(runner.lake, runner.lake.path(silver)):
        return False
    return applied_version(runner.lake, table) != delta_table(runner.lake, silver).version()


def _newest(tables: Iterable[Partitions]) -> Partitions:
    """Per day, when some table's partition of it was last written."""
    newest: Partitions = {}
    for partitions in tables:
        for day, stats in partitions.items():
            before = newest.get(day, ABSENT).written
            if stats.written is not None and (before is None or stats.written > before):
                newest[day] = PartitionStats(0, stats.written)
    return newest


def bronze_profile(
    runner: CopyRunner, table: Table, window: Window, manifest: Manifest | None = None
) -> dict[date, DayProfile]:
    """What bronze holds of `window`, profiled exactly as the source's `daily_profile_query`:
    the profiles the manifest recorded of its files as they were written, added up. Only the
    files it cannot answer for are read: written before profiles were recorded, partly
    superseded by a newer extraction, holding rows outside `window`, or no longer of the size
    written (a missing or damaged file, read, fails in one line naming it)."""
    store = runner.store(table)
    manifest = manifest or store.current()
    first, last = window.start.date(), window.end.date()
    files = [f for f in manifest.files if f.partition and first <= f.partition <= last]
    usable = [f for f in files if f.fully_live and f.profile and f.profile.within(window)]
    intact = store.as_written(usable)
    profiles = [f.profile.days for f in usable if f.profile and f.path in intact]
    if unread := [f for f in files if f.path not in intact]:
        rows = store.read_files(unread, profiled_columns(table))
        profiles.append(tuple(day_profiles(rows, table, window).items()))
    return added(profiles)
