"""Reconciliation (DESIGN.md §7): which loaded partitions no longer match the source.

Per day of change time, the source and the lake each give a profile — rows and a checksum. A day
whose profiles differ is stale: rows arrived late, were missed, or the lake holds what the source
no longer has. The days are then refreshed (bronze, and everything downstream of it).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from spotify_assets.windows import Window, midnight


@dataclass(frozen=True)
class DayProfile:
    rows: int
    checksum: int


EMPTY = DayProfile(0, 0)


def stale_days(source: Mapping[date, DayProfile], lake: Mapping[date, DayProfile]) -> list[date]:
    """Days whose profiles differ (a day missing on one side counts as empty there)."""
    days = set(source) | set(lake)
    return sorted(d for d in days if source.get(d, EMPTY) != lake.get(d, EMPTY))


def day_ranges(days: Iterable[date]) -> list[tuple[date, date]]:
    """Consecutive days merged into inclusive ranges: one refresh run each."""
    ranges: list[tuple[date, date]] = []
    for day in sorted(set(days)):
        if ranges and ranges[-1][1] + timedelta(days=1) == day:
            ranges[-1] = (ranges[-1][0], day)
        else:
            ranges.append((day, day))
    return ranges


def lookback_window(
    watermark: datetime | None, lookback_days: int, first_day: date
) -> Window | None:
    """What reconciliation checks: the `lookback_days` before the watermark, never before the
    first partition and never past the watermark (later rows are not loaded yet, not missing)."""
    if watermark is None:
        return None
    start = max(midnight(watermark.date() - timedelta(days=lookback_days)), midnight(first_day))
    return Window(start, watermark) if start < watermark else None
