"""What reconciliation compares of bronze with the source (§7): per day of change time, a row
count and a checksum, profiled exactly as the source's `daily_profile_query` profiles its rows —
watermark mode: every row, the checksum the sum of the key; cdc: the change records (not the
images), the checksum the sum of their sequence numbers.

Each bronze file's profile is computed from its rows as they are written and recorded in its
manifest entry (`FileProfile`), so reconciliation reads the manifest instead of the file.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime

import pyarrow as pa
import pyarrow.compute as pc

from spotify_assets.bronze.windows import Window
from spotify_assets.catalog.tables import CHANGE_SEQ, CaptureMode, Table


@dataclass(frozen=True)
class DayProfile:
    rows: int
    checksum: int

    def __add__(self, other: DayProfile) -> DayProfile:
        return DayProfile(self.rows + other.rows, self.checksum + other.checksum)


EMPTY = DayProfile(0, 0)


@dataclass(frozen=True)
class FileProfile:
    """A bronze file's `day_profiles` as written, and the earliest and latest change time of the
    rows profiled (None: none): it stands for the file in any window holding both."""

    days: tuple[tuple[date, DayProfile], ...]
    first: datetime | None
    last: datetime | None

    def within(self, window: Window) -> bool:
        """Whether every row profiled is in `window`: the file's profile is then its own."""
        if self.first is None or self.last is None:
            return True
        return window.start <= self.first and self.last < window.end

    def to_json(self) -> dict[str, object]:
        return {
            "days": {day.isoformat(): [p.rows, p.checksum] for day, p in self.days},
            "first": self.first.isoformat() if self.first else None,
            "last": self.last.isoformat() if self.last else None,
        }

    @classmethod
    def from_json(cls, value: dict) -> FileProfile:
        first, last = (value[k] and datetime.fromisoformat(value[k]) for k in ("first", "last"))
        days = tuple((date.fromisoformat(d), DayProfile(*p)) for d, p in value["days"].items())
        return cls(days, first, last)


def profiled_columns(table: Table) -> list[str]:
    """The columns `day_profiles` reads: the change time, the checksum and the sequence."""
    assert table.change_time_column is not None
    return list(dict.fromkeys([table.change_time_column, _checksum_column(table), CHANGE_SEQ]))


def day_profiles(
    rows: pa.Table, table: Table, window: Window | None = None
) -> dict[date, DayProfile]:
    """Per day of change time, the profile of `rows` (of bronze's schema, or just
    `profiled_columns`) whose change time is in `window` (any time, if None)."""
    return _profiles(_profiled(rows, table, window), table)


def file_profile(rows: pa.Table, table: Table) -> FileProfile:
    """The `FileProfile` of a bronze file holding `rows`."""
    profiled = _profiled(rows, table, None)
    assert table.change_time_column is not None
    span = pc.min_max(profiled[table.change_time_column]).as_py()
    days = tuple(sorted(_profiles(profiled, table).items()))
    return FileProfile(days, span["min"], span["max"])


def added(profiles: Iterable[Iterable[tuple[date, DayProfile]]]) -> dict[date, DayProfile]:
    """Per day, the sum of `profiles` (each one of files, as pairs of a day and its profile)."""
    total: dict[date, DayProfile] = {}
    for days in profiles:
        for day, held in days:
            total[day] = total.get(day, EMPTY) + held
    return total


def _profiled(rows: pa.Table, table: Table, window: Window | None) -> pa.Table:
    """What the source's profile counts of `rows`: a change time (in `window`), and in cdc
    mode a sequence number (change records, not images)."""
    assert table.change_time_column is not None
    rows = rows.select(profiled_columns(table))
    time = rows[table.change_time_column]
    counted = pc.is_valid(time) if window is None else window.holds(time)
    if table.mode is CaptureMode.CDC:
        counted = pc.and_(counted, pc.is_valid(rows[CHANGE_SEQ]))
    return rows.filter(counted)


def _profiles(rows: pa.Table, table: Table) -> dict[date, DayProfile]:
    assert table.change_time_column is not None
    days = pc.cast(rows[table.change_time_column], pa.date32())
    # Summed exactly, as the source sums it (no 64-bit wrap-around on large sequences).
    sums = pc.cast(rows[_checksum_column(table)], pa.decimal128(38, 0))
    # A day at a time (a file's one, the lookback's few), not with `group_by`: its engine,
    # Acero, imports pyarrow's dataset module and pandas, ~0.4 CPU s of an idle `run`.
    profile = {}
    for day in pc.unique(days):
        held = sums.filter(pc.equal(days, day))
        # Every row, as COUNT(*): a NULL key (a source without the constraint) is a row too.
        rows_held = pc.count(held, mode="all").as_py()
        profile[day.as_py()] = DayProfile(rows_held, int(pc.sum(held).as_py() or 0))
    return profile


def _checksum_column(table: Table) -> str:
    return CHANGE_SEQ if table.mode is CaptureMode.CDC else table.key[0]
