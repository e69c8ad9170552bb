"""A build over a range of daily partitions runs a chunk of days at a time: the chunks tile the
range, in order, each within the row budget unless a single day exceeds it."""

from __future__ import annotations

import itertools
from datetime import date, timedelta

from hypothesis import given
from hypothesis import strategies as st

from resources.delta_tables import split_days

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
