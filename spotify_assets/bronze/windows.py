"""Load windows: half-open UTC time intervals `[start, end)` over a table's change time.

Half-open windows tile days exactly, so a partition (a UTC day) is a window and a window splits
into partitions without overlap or gap. Every query is bounded on both sides.
"""

from __future__ import annotations

import itertools
import math
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta

import pyarrow as pa
import pyarrow.compute as pc

DAY = timedelta(days=1)
Days = tuple[date, date]  # inclusive range of daily partitions
# The shortest slice a day holding more than a chunk's rows is cut into: rows stamped within one
# slice are read together however many they are.
SHORTEST_SLICE = timedelta(seconds=1)
# Behind the server's clock: longer than the longest write transaction plus CDC capture latency.
DEFAULT_SAFETY_LAG_SECONDS = 300.0
_EPOCH = datetime(1970, 1, 1)


@dataclass(frozen=True, order=True)
class Window:
    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        if self.start.tzinfo is not None or self.end.tzinfo is not None:
            raise ValueError("windows are naive UTC datetimes")
        if self.end < self.start:
            raise ValueError(f"window ends before it starts: [{self.start}, {self.end})")

    @classmethod
    def of_days(cls, first: date, last: date) -> Window:
        """The window covering the days `first`..`last` inclusive."""
        return cls(midnight(first), midnight(last) + DAY)

    @property
    def empty(self) -> bool:
        return self.end <= self.start

    def intersect(self, other: Window) -> Window | None:
        start, end = max(self.start, other.start), min(self.end, other.end)
        return Window(start, end) if start < end else None

    def covers(self, other: Window) -> bool:
        return self.start <= other.start and other.end <= self.end

    def holds(self, times: pa.ChunkedArray) -> pa.ChunkedArray:
        """Which of the timestamps `times` fall in the window."""
        start, end = _timestamp(self.start), _timestamp(self.end)
        return pc.and_(pc.greater_equal(times, start), pc.less(times, end))

    def days(self) -> Iterator[date]:
        """The UTC days (partitions) this window touches."""
        day = self.start.date()
        while midnight(day) < self.end:
            yield day
            day += DAY

    def split_by_day(self) -> Iterator[tuple[date, Window]]:
        for day in self.days():
            part = self.intersect(Window.of_days(day, day))
            if part:
                yield day, part

    def slices(self, count: int) -> list[Window]:
        """The window cut into `count` windows of equal length (whole milliseconds, the
        precision of the sources' timestamp literals), none shorter than `SHORTEST_SLICE`."""
        length = self.end - self.start
        count = max(1, min(count, length // SHORTEST_SLICE))
        milliseconds = length // timedelta(milliseconds=1)
        cuts = [
            self.start + timedelta(milliseconds=milliseconds * i // count) for i in range(1, count)
        ]
        bounds = [self.start, *cuts, self.end]
        return [Window(start, end) for start, end in itertools.pairwise(bounds)]

    def to_json(self) -> list[str]:
        return [self.start.isoformat(), self.end.isoformat()]

    @classmethod
    def from_json(cls, value: list[str]) -> Window:
        return cls(datetime.fromisoformat(value[0]), datetime.fromisoformat(value[1]))

    def __str__(self) -> str:
        return f"[{self.start.isoformat(sep=' ')}, {self.end.isoformat(sep=' ')})"


def midnight(day: date) -> datetime:
    return datetime.combine(day, time())


def as_date(value: object) -> date:
    """A day as the source's driver returns it: a date, or text beginning with one."""
    return value if isinstance(value, date) else date.fromisoformat(str(value)[:10])


def _timestamp(moment: datetime) -> pa.Scalar:
    """`moment` as an Arrow timestamp (microseconds)."""
    return arrow_scalar((moment - _EPOCH) // timedelta(microseconds=1), pa.timestamp("us"))


def arrow_scalar(value: int, kind: pa.DataType) -> pa.Scalar:
    """An Arrow scalar of a fixed-width integer-backed type (dates, timestamps, integers),
    built from its bytes: pyarrow converts a Python value through pandas' types, importing
    pandas (~0.4 CPU s), which an idle `run` does not otherwise need."""
    data = pa.py_buffer(value.to_bytes(kind.bit_width // 8, sys.byteorder, signed=True))
    return pa.Array.from_buffers(kind, 1, [None, data])[0]


def subtract(intervals: Iterable[Window], removed: Window) -> list[Window]:
    """`intervals` minus `removed`: what stays live once a newer extraction covers `removed`."""
    remaining: list[Window] = []
    for interval in intervals:
        if interval.start < removed.start:
            remaining.append(Window(interval.start, min(interval.end, removed.start)))
        if interval.end > removed.end:
            remaining.append(Window(max(interval.start, removed.end), interval.end))
    return [w for w in remaining if not w.empty]


def split_days(rows_per_day: Mapping[date, int], days: Days, chunk_rows: int) -> list[Days]:
    """`days` cut into consecutive ranges of at most `chunk_rows` rows each (a day holding more
    is a range of its own); days missing from `rows_per_day` hold no rows."""
    chunks: list[Days] = []
    start, rows, day = days[0], 0, days[0]
    while day <= days[1]:
        today = rows_per_day.get(day, 0)
        if rows and rows + today > chunk_rows:
            chunks.append((start, day - DAY))
            start, rows = day, 0
        rows += today
        day += DAY
    return [*chunks, (start, days[1])]


def split_window(window: Window, rows_per_day: Mapping[date, int], chunk_rows: int) -> list[Window]:
    """`window` (not empty) cut into consecutive half-open windows that tile it exactly, each
    holding at most `chunk_rows` of the rows counted per UTC day in `rows_per_day` (days
    missing hold none). A day holding more is cut into equal slices of its time, as many as
    its rows need were they spread evenly (no slice shorter than `SHORTEST_SLICE`)."""
    days = (window.start.date(), (window.end - timedelta(microseconds=1)).date())
    chunks: list[Window] = []
    for first, last in split_days(rows_per_day, days, chunk_rows):
        part = window.intersect(Window.of_days(first, last))
        assert part is not None  # every day of `days` meets the window
        big = [(day, n) for day in part.days() if (n := rows_per_day.get(day, 0)) > chunk_rows]
        if not big:
            chunks.append(part)
            continue
        # `split_days` gives such a day a range of its own, bar the empty days around it.
        ((day, rows),) = big
        inside = part.intersect(Window.of_days(day, day))
        assert inside is not None
        pieces = [
            Window(part.start, inside.start),
            *inside.slices(math.ceil(rows / chunk_rows)),
            Window(inside.end, part.end),
        ]
        chunks += [piece for piece in pieces if not piece.empty]
    return chunks
