"""The synthetic source the tests generate: its history, seed and scale, the simulation rates
they run, and its initial load."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from datetime import date, datetime, timedelta

from resources.source_db import SourceDatabase, SourceSession
from spotify_assets.source.generator import BASE_SHAPE, InitialData, generate
from spotify_assets.source.simulator import SimulationRates

# The generated history of the fixtures' sources (the generator's default length), whose first
# day is the partition start they are configured with.
HISTORY_END = date(2026, 4, 1)
HISTORY_START = HISTORY_END - timedelta(days=BASE_SHAPE.history_days)
CLOCK0 = datetime.combine(HISTORY_END, datetime.min.time())
# Three weeks of history: enough for every scenario, and each first load writes fewer partitions.
HISTORY_DAYS = 21

SCALE = 0.002
SEED = 7
# High rates so that a few days at a tiny scale exercise every kind of change on every table.
BUSY = SimulationRates(
    user_updates=0.05,
    artist_updates=0.05,
    track_updates=0.05,
    user_deletes=0.05,
    artist_deletes=0.05,
    track_deletes=0.05,
)
# Late streams are behind the watermark by design (reconciliation refreshes them): tests that
# compare bronze with the whole source after incremental runs simulate none.
ON_TIME = replace(BUSY, late_fraction=0.0)
DIRTY = replace(ON_TIME, dirty_fraction=0.2)
LATE = replace(DIRTY, late_fraction=0.3, late_max_days=2)
BUSY_DAY = replace(LATE, user_deletes=0.01, track_deletes=0.01, artist_deletes=0.01)


def initialise(source: SourceDatabase, data: InitialData | None = None) -> InitialData:
    data = data or generate(SCALE, SEED, HISTORY_END)
    with source.session() as session:
        session.load_initial(data, {"seed": SEED, "scale": SCALE})
    return data


def fill_own_calendar(session: SourceSession, first: date, days: int) -> None:
    """A user's own `DimDate` on PostgreSQL, `first` and the `days` after it, written by hand
    as a user would rather than by `source init`."""
    session.execute(
        f"""INSERT INTO "DimDate" SELECT CAST(to_char(d, 'YYYYMMDD') AS integer), d,
            trim(to_char(d, 'Day')), extract(day FROM d), extract(month FROM d),
            extract(year FROM d)
        FROM generate_series(CAST(? AS date), CAST(? AS date) + {int(days)}, interval '1 day')
            AS d""",
        [first, first],
    )


def without_constraints(conn: sqlite3.Connection, table: str) -> None:
    """A SQLite source's `table` recreated with its rows but no constraint (no NOT NULL, no
    key), as a source made by other tools may be."""
    conn.executescript(
        f"ALTER TABLE {table} RENAME TO {table}_old;"
        f"CREATE TABLE {table} AS SELECT * FROM {table}_old;"
        f"DROP TABLE {table}_old;"
    )
