"""The lake side of reconciliation: per-day profiles of the source, bronze and silver.

`reconcile` finds the loaded days of a table that no longer match the source (bronze stale), and
the days whose silver no longer matches bronze (silver stale: one row per bronze row, valid or
quarantined, for tables without re-deliveries). Refreshing those days repairs both.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import pyarrow as pa
import pyarrow.compute as pc

from resources.copy_runner import LocalCopyRunner
from resources.delta_tables import rows_by_partition
from spotify_assets.catalog import CHANGE_DATE, CHANGE_SEQ, CaptureMode, Table
from spotify_assets.reconcile import DayProfile, lookback_window, stale_days
from spotify_assets.windows import Window


@dataclass(frozen=True)
class Reconciliation:
    table: str
    window: Window | None  # what was compared; None: nothing loaded yet, or a snapshot
    source: dict[date, DayProfile]
    bronze: dict[date, DayProfile]
    stale: tuple[date, ...]  # days to refresh: bronze or silver differ

    def describe(self) -> str:
        if self.window is None:
            return f"{self.table}: nothing to reconcile"
        if not self.stale:
            return f"{self.table}: {len(self.source)} days match the source in {self.window}"
        diffs = ", ".join(
            f"{d} (source {self.source.get(d, DayProfile(0, 0)).rows}, "
            f"bronze {self.bronze.get(d, DayProfile(0, 0)).rows})"
            for d in self.stale
        )
        return f"{self.table}: stale {diffs}"


def reconcile(runner: LocalCopyRunner, table: Table, lookback_days: int) -> Reconciliation:
    """Compare the days within `lookback_days` before the table's watermark."""
    manifest = runner.store(table).current()
    window = None
    if table.mode is not CaptureMode.SNAPSHOT:
        window = lookback_window(manifest.watermark, lookback_days, table.first_partition)
    if window is None:
        return Reconciliation(table.name, None, {}, {}, ())
    with runner.source.session() as session:
        rows = session.query(session.sql.daily_profile_query(table, window))
    source = {_as_date(day): DayProfile(int(n), int(total or 0)) for day, n, total in rows}
    bronze = bronze_profile(runner, table, window)
    stale = set(stale_days(source, bronze))
    if table.mode is CaptureMode.WATERMARK:
        stale |= _silver_stale(runner, table, bronze)
    return Reconciliation(table.name, window, source, bronze, tuple(sorted(stale)))


def bronze_profile(runner: LocalCopyRunner, table: Table, window: Window) -> dict[date, DayProfile]:
    """What bronze holds of `window`, profiled exactly as the source's `daily_profile_query`."""
    store = runner.store(table)
    manifest = store.current()
    days = [p for p in manifest.partitions() if window.start.date() <= p <= window.end.date()]
    rows = pa.concat_tables([store.read(d, manifest) for d in days]) if days else store.empty()
    time = rows[table.change_time_column]
    inside = pc.and_(pc.greater_equal(time, window.start), pc.less(time, window.end))
    if table.mode is CaptureMode.CDC:
        inside = pc.and_(inside, pc.is_valid(rows[CHANGE_SEQ]))  # change records, not images
    checksum = CHANGE_SEQ if table.mode is CaptureMode.CDC else table.key[0]
    rows = rows.filter(inside)
    profile = pa.table(
        {"day": pc.cast(rows[table.change_time_column], pa.date32()), "sum": rows[checksum]}
    )
    grouped = profile.group_by("day").aggregate([("sum", "count"), ("sum", "sum")])
    return {
        day: DayProfile(int(n), int(total or 0))
        for day, n, total in zip(
            grouped["day"].to_pylist(),
            grouped["sum_count"].to_pylist(),
            grouped["sum_sum"].to_pylist(),
            strict=True,
        )
    }


def _silver_stale(
    runner: LocalCopyRunner, table: Table, bronze: dict[date, DayProfile]
) -> set[date]:
    """Days where silver's rows (valid plus quarantined) are not bronze's rows one for one."""
    valid = rows_by_partition(runner.lake, f"silver/{table.lake_name}", CHANGE_DATE)
    if not valid:
        return set()  # silver not built yet: nothing to compare
    quarantined = rows_by_partition(
        runner.lake, f"silver/_quarantine/{table.lake_name}", CHANGE_DATE
    )
    return {
        day
        for day, profile in bronze.items()
        if valid.get(day, 0) + quarantined.get(day, 0) != profile.rows
    }


def _as_date(value: object) -> date:
    return value if isinstance(value, date) else date.fromisoformat(str(value)[:10])
