"""Reconciliation: which loaded partitions no longer match their upstream.

Every layer boundary is compared per day, each by what it costs:
- source ↔ bronze, over the lookback only (the source's side is a query on the source): a row
  count and a checksum per day of change time (`DayProfile`). A day that differs is stale: rows
  arrived late, were missed, or the lake holds what the source no longer has.
- bronze ↔ silver (+ quarantine) ↔ gold fact ↔ aggregates, over every loaded day, from what the
  bronze manifests and the Delta logs say of each partition (`PartitionStats`: rows and when its
  newest file was written), without reading the data;
- the dimensions' silver versions ↔ the point-in-time fact: the first fact day each version can
  change (`affects_from`, from a few columns of the versions) against when that day was built;
  and the days whose facts held a key no dimension row had yet, once gold's dimension has it
  (`members_arrived`: a late member's first version fills in facts of any earlier day).
A stale day is rebuilt from the first layer that differs (`Layer`), with everything below it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from enum import IntEnum

import pyarrow as pa
import pyarrow.compute as pc

from spotify_assets.bronze.profile import EMPTY, DayProfile
from spotify_assets.bronze.windows import Window, arrow_scalar, midnight
from spotify_assets.catalog.gold_spec import UNMATCHED_DIMENSION, UNMATCHED_KEY

AFFECTS_FROM = "_affects_from"


class Layer(IntEnum):
    """Where the rebuild of a stale partition starts; every layer below it follows."""

    BRONZE = 0  # re-extracted from the source
    SILVER = 1
    GOLD = 2  # the table's own gold table (the fact)
    AGGREGATES = 3  # the fact's daily aggregates


@dataclass(frozen=True)
class PartitionStats:
    """What a layer holds of one partition, as its manifest or Delta log tells (no scan)."""

    rows: int
    written: int | None = None  # when its newest file was written (ms); None: unknown, no file


ABSENT = PartitionStats(0)


def stale_days(source: Mapping[date, DayProfile], lake: Mapping[date, DayProfile]) -> list[date]:
    """Days whose profiles differ (a day missing on one side counts as empty there)."""
    days = set(source) | set(lake)
    return sorted(d for d in days if source.get(d, EMPTY) != lake.get(d, EMPTY))


def behind(upstream: PartitionStats, downstream: PartitionStats, one_to_one: bool) -> bool:
    """Whether a downstream partition was not built from its upstream partition as it is now.

    `one_to_one`: every upstream row gives exactly one downstream row (bronze to silver plus
    quarantine, where rows are never re-delivered). Otherwise downstream holds at most as many
    rows (re-deliveries collapse, expectations drop rows, aggregates group them) and holds rows
    exactly where upstream does (an empty partition that should hold data is a fault). Either
    way it was written no earlier than upstream's newest file (when both times are known): a
    run stopped between two layers leaves the lower one behind, whatever the counts."""
    if one_to_one and upstream.rows != downstream.rows:
        return True
    if downstream.rows > upstream.rows or (upstream.rows > 0) != (downstream.rows > 0):
        return True
    if upstream.written is None or downstream.written is None:
        return False
    return downstream.written < upstream.written


def stale_partitions(
    upstream: Mapping[date, PartitionStats],
    downstream: Mapping[date, PartitionStats],
    one_to_one: bool,
) -> set[date]:
    """Partitions `behind` their upstream (a partition missing on one side is `ABSENT`)."""
    days = set(upstream) | set(downstream)
    return {
        d for d in days if behind(upstream.get(d, ABSENT), downstream.get(d, ABSENT), one_to_one)
    }


def written_before(
    dependency: Mapping[date, PartitionStats], built: Mapping[date, PartitionStats]
) -> set[date]:
    """Partitions P of `built` older than some partition on or before P of `dependency`: what a
    point-in-time fact holds of day P depends on every dimension version up to P."""
    stale, newest = set(), None
    for day in sorted(set(dependency) | set(built)):
        changed = dependency.get(day, ABSENT).written
        if changed is not None:
            newest = changed if newest is None else max(newest, changed)
        written = built.get(day, ABSENT).written
        if written is not None and newest is not None and written < newest:
            stale.add(day)
    return stale


def affects_from(
    versions: pa.Table, key: Sequence[str], business_time: str, sequence: str, partition: str
) -> pa.Table:
    """`versions` (an SCD2 dimension's silver rows; returned in any order) with `_affects_from`:
    the first day of the point-in-time fact that each version can change.

    A version takes effect at its business time (never before: `Scd2Dimension`), so it changes
    the fact from its business day on (its partition's day, if earlier). But a fact older than
    its key's first version takes that first version (`PointInTimeFact`), and a change record at
    its key's earliest business time that is not the key's first change (an image, or a record
    earlier in the sequence, comes before it: an update keeping `updated_at`, a restore) can
    replace that version: it changes every day (`date.min`).

    Per key, from two sorts (not `group_by` and `join`: Acero imports pyarrow's dataset module
    and pandas, which an idle run does without): by time, the key's first row holds its
    earliest business time; by sequence with images first, its first row is an image or the
    key's first change record."""
    keys = list(key)
    by_key = [(k, "ascending") for k in keys]
    by_time = versions.take(pc.sort_indices(versions, [*by_key, (business_time, "ascending")]))
    rows = versions.take(pc.sort_indices(versions, [*by_key, (sequence, "ascending", "at_start")]))
    # Keys are numbered from 1 in both orders.
    number = pc.cumulative_sum(pc.cast(_key_starts(rows, keys), pa.int64()))
    earliest = _first_of_key(by_time, keys, business_time, number)
    first = _first_of_key(rows, keys, sequence, number)  # NULL: the key has an image
    follows = pc.or_kleene(pc.is_null(first), pc.greater(rows[sequence], first))
    at_earliest = pc.and_kleene(
        pc.is_valid(rows[sequence]), pc.equal(rows[business_time], earliest)
    )
    replaces_first = pc.and_kleene(at_earliest, follows)
    day = pc.min_element_wise(pc.cast(rows[business_time], pa.date32()), rows[partition])
    every_day = arrow_scalar((date.min - _EPOCH_DAY).days, pa.date32())
    # A NULL condition (no sequence, or no business time) is not a replacement: its own day.
    return rows.append_column(
        AFFECTS_FROM, pc.coalesce(pc.if_else(replaces_first, every_day, day), day)
    )


_EPOCH_DAY = date(1970, 1, 1)


def _first_of_key(
    rows: pa.Table, keys: list[str], column: str, number: pa.ChunkedArray
) -> pa.ChunkedArray:
    """`column` of the first row of each key of `rows` (sorted by `keys` first), taken for the
    key numbered `number` (from 1, in key order)."""
    values = rows[column].filter(_key_starts(rows, keys))
    return pa.chunked_array([pa.nulls(1, values.type), *values.chunks], values.type).take(number)


def _key_starts(rows: pa.Table, keys: list[str]) -> pa.ChunkedArray:
    """Whether each of `rows` (sorted by `keys`) is the first row of its key."""
    starts = None
    for k in keys:
        column = rows[k]
        before = pa.chunked_array(
            [pa.nulls(1, column.type), *column.slice(0, max(len(column) - 1, 0)).chunks],
            column.type,
        ).slice(0, len(column))
        differs = pc.not_equal(column, before)  # NULL on the first row
        starts = differs if starts is None else pc.or_kleene(starts, differs)
    assert starts is not None
    return pc.or_kleene(starts, pc.is_null(starts))


def newest_per_day(rows: pa.Table, day: str, written: str) -> dict[date, int]:
    """Per `day` of `rows`, the largest `written` (from a sort, not `group_by`, as in
    `affects_from`)."""
    ordered = rows.take(pc.sort_indices(rows, [(day, "ascending"), (written, "descending")]))
    first = ordered.filter(_key_starts(ordered, [day]))
    return dict(zip(first[day].to_pylist(), first[written].to_pylist(), strict=True))


def members_arrived(
    unmatched: pa.Table, present: Mapping[str, pa.Array], date_column: str
) -> set[date]:
    """Days of `unmatched` (what the fact's build found in no dimension row, per day) holding a
    key that a dimension now has (`present`: per dimension's source table name, the keys its
    gold holds, as text). `affects_from` dates a key's first version at its business day, but
    facts of any earlier day take it too."""
    days: set[date] = set()
    # Compared with the column's own values: an Arrow value built from a Python one imports
    # pandas, which an idle run does without.
    for dimension in pc.unique(unmatched[UNMATCHED_DIMENSION]):
        if (keys := present.get(dimension.as_py())) is None:
            continue
        rows = unmatched.filter(
            pc.and_(
                pc.equal(unmatched[UNMATCHED_DIMENSION], dimension),
                pc.is_in(unmatched[UNMATCHED_KEY], keys),
            )
        )
        days.update(rows[date_column].to_pylist())
    return days


def first_layers(stale: Iterable[tuple[Layer, Iterable[date]]]) -> dict[date, Layer]:
    """Per stale day, the first layer to rebuild it from."""
    first: dict[date, Layer] = {}
    for layer, days in stale:
        for day in days:
            first[day] = min(layer, first.get(day, layer))
    return first


def day_ranges(days: Iterable[date]) -> list[tuple[date, date]]:
    """Consecutive days merged into inclusive ranges: one refresh run each."""
    ranges: list[tuple[date, date]] = []
    for day in sorted(set(days)):
        if ranges and ranges[-1][1] + timedelta(days=1) == day:
            ranges[-1] = (ranges[-1][0], day)
        else:
            ranges.append((day, day))
    return ranges


def repair_ranges(first: Mapping[date, Layer]) -> list[tuple[Layer, date, date]]:
    """Consecutive days rebuilt from the same layer, merged: one run each."""
    return [
        (layer, start, end)
        for layer in sorted(set(first.values()))
        for start, end in day_ranges(d for d, at in first.items() if at is layer)
    ]


def lookback_window(
    watermark: datetime | None, lookback_days: int, first_day: date
) -> Window | None:
    """What reconciliation checks: the `lookback_days` before the watermark, never before the
    first partition and never past the watermark (later rows are not loaded yet, not missing)."""
    if watermark is None:
        return None
    start = max(midnight(watermark.date() - timedelta(days=lookback_days)), midnight(first_day))
    return Window(start, watermark) if start < watermark else None
