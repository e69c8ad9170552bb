"""A build over a range of daily partitions runs a chunk of days at a time, and a copy reads its
window a chunk of about so many rows at a time: the chunks tile the range, in order, each within
the row budget unless a single day exceeds it (a copy then reads that day in slices)."""

from __future__ import annotations

import itertools
import math
from datetime import date, datetime, time, timedelta

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from spotify_assets.bronze.windows import Window, split_days, split_window

FIRST = date(2026, 1, 1)


@given(
    st.lists(st.integers(0, 50), min_size=1, max_size=60),
    st.integers(1, 120),
)
def test_chunks_tile_the_days_within_the_row_budget(rows: list[int], budget: int) -> None:
    days = (FIRST, FIRST + timedelta(days=len(rows) - 1))
    per_day = {FIRST + timedelta(days=i): n for i, n in enumerate(rows) if n}
    chunks = split_days(per_day, days, budget)

    assert chunks[0][0] == days[0] and chunks[-1][1] == days[1]
    for (_, end), (start, _) in itertools.pairwise(chunks):
        assert start == end + timedelta(days=1)
    for start, end in chunks:
        assert start <= end
        span = [per_day.get(start + timedelta(days=i), 0) for i in range((end - start).days + 1)]
        assert sum(span) <= budget or len([n for n in span if n]) == 1
    # no two neighbours would fit together: the chunks are as few as the budget allows
    for a, b in itertools.pairwise(chunks):
        total = sum(n for d, n in per_day.items() if a[0] <= d <= b[1])
        assert total > budget


def test_one_chunk_when_the_range_fits() -> None:
    days = (FIRST, FIRST + timedelta(days=9))
    assert split_days({FIRST: 5}, days, 10) == [days]
    assert split_days({}, days, 10) == [days]


_WINDOW_START = datetime.combine(FIRST, time())


@settings(max_examples=300, deadline=None)
@given(
    rows=st.lists(st.one_of(st.integers(0, 50), st.integers(0, 2000)), min_size=1, max_size=40),
    budget=st.integers(20, 400),
    start_cut=st.timedeltas(timedelta(0), timedelta(days=1) - timedelta(milliseconds=1)),
    end_cut=st.timedeltas(timedelta(0), timedelta(days=1) - timedelta(milliseconds=1)),
)
def test_copy_windows_tile_the_window_within_the_row_budget(
    rows: list[int], budget: int, start_cut: timedelta, end_cut: timedelta
) -> None:
    """The copy's query windows tile its window exactly, half-open and in order: no row is read
    twice or never. Each holds at most `budget` rows, but a single day holding more, cut into
    equal slices of its time, as many as it needs were its rows spread evenly."""
    end = _WINDOW_START + timedelta(days=len(rows) - 1) + end_cut
    window = Window(_WINDOW_START + start_cut, max(end, _WINDOW_START + start_cut))
    assume(not window.empty)
    per_day = {FIRST + timedelta(days=i): n for i, n in enumerate(rows) if n}
    chunks = split_window(window, per_day, budget)

    assert chunks[0].start == window.start and chunks[-1].end == window.end
    for a, b in itertools.pairwise(chunks):
        assert a.end == b.start
    sliced: dict[date, list[Window]] = {}
    for chunk in chunks:
        assert not chunk.empty
        days = list(chunk.days())
        if sum(per_day.get(day, 0) for day in days) > budget:
            (day,) = days  # only a single day holding more than the budget is over it
            sliced.setdefault(day, []).append(chunk)
    for day, slices in sliced.items():
        held = per_day[day]
        day_part = window.intersect(Window.of_days(day, day))
        assert day_part is not None and slices == [c for c in chunks if day_part.covers(c)]
        assert len(slices) == min(
            math.ceil(held / budget), (day_part.end - day_part.start) // timedelta(seconds=1) or 1
        )
        lengths = {c.end - c.start for c in slices}
        assert max(lengths) - min(lengths) < timedelta(milliseconds=2)


def test_a_day_is_cut_into_equal_slices_of_its_time() -> None:
    day = Window.of_days(FIRST, FIRST)
    assert split_window(day, {FIRST: 4}, 1) == [
        Window(_WINDOW_START + timedelta(hours=h), _WINDOW_START + timedelta(hours=h + 6))
        for h in range(0, 24, 6)
    ]
    assert split_window(
        Window(_WINDOW_START, _WINDOW_START + timedelta(milliseconds=3)), {FIRST: 9}, 1
    ) == [Window(_WINDOW_START, _WINDOW_START + timedelta(milliseconds=3))]
