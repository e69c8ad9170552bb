"""SCD2 on real change patterns (README: Gold), end to end through the CLI on
the embedded source: a loaded home, the source edited by hand, and after the next run the
current version of each key in gold equals the source's current row.

One home carries every pattern on its own users (a test each would cost a load each):
- a delete and a re-insert of a key in the same clock tick;
- a delete, then (a tick later) a restore of the row with its original `updated_at`;
- a change of the key (`user_id` -> 5000);
- updates that keep `updated_at`;
- an update backdated before the `updated_at` of the row the first load read.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from spotify_assets.catalog.gold_spec import END_AT, START_AT
from spotify_assets.catalog.reference import SUBSCRIPTIONS
from spotify_assets.catalog.tables import CATALOG
from spotify_assets.cli import main
from spotify_assets.orchestration.settings import Settings

DIM_USER = CATALOG["DimUser"]
NEW_KEY = 5000
UNBUMPED_UPDATE = "UPDATE DimUser SET subscription_type = ? WHERE user_id = ?"  # updated_at kept


def other_subscription(current: str) -> str:
    return next(s for s in SUBSCRIPTIONS if s != current)


class Source:
    """The embedded source, edited as an application would: every statement stamped by the
    simulated clock, which then moves on so that the next run's window holds the changes."""

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path, isolation_level=None)

    def clock(self) -> datetime:
        (value,) = self.db.execute("SELECT now_utc FROM source_clock").fetchone()
        return datetime.fromisoformat(value)

    def tick(self) -> str:
        """Move the clock one minute on; returns the new time as the source stores it."""
        now = self.stamp(self.clock() + timedelta(minutes=1))
        self.db.execute("UPDATE source_clock SET now_utc = ?", (now,))
        return now

    def stamp(self, moment: datetime) -> str:
        return moment.isoformat(sep=" ", timespec="milliseconds")

    def row(self, user_id: int) -> tuple:
        return self.db.execute("SELECT * FROM DimUser WHERE user_id = ?", (user_id,)).fetchone()

    def execute(self, sql: str, *parameters: object) -> None:
        self.db.execute(sql, parameters)

    def current(self) -> list[tuple]:
        return sorted(self.db.execute("SELECT user_id, subscription_type FROM DimUser"))


@pytest.fixture
def loaded(loaded_lakehouse: Settings) -> Iterator[tuple[Settings, Source]]:
    source = Source(loaded_lakehouse.embedded_source_path)
    yield loaded_lakehouse, source
    source.db.close()


def gold_users(settings: Settings) -> list[tuple]:
    from deltalake import DeltaTable

    table = DeltaTable(f"{settings.lake_url}/gold/{DIM_USER.lake_name}").to_pyarrow_table()
    columns = ["user_id", "subscription_type", START_AT, END_AT]
    return list(zip(*(table[c].to_pylist() for c in columns), strict=True))


def assert_gold_current_equals_source(settings: Settings, source: Source) -> None:
    rows = gold_users(settings)
    current = sorted((user, subscription) for user, subscription, _, end in rows if end is None)
    assert current == source.current()
    versions = [(user, start) for user, _, start, _ in rows]
    assert len(versions) == len(set(versions)), "two versions of a key start together"


@pytest.mark.timeout(600)  # a load and a run: minutes when the machine is busy
def test_current_gold_rows_follow_the_source_whatever_its_timestamps(
    loaded: tuple[Settings, Source],
) -> None:
    settings, source = loaded
    reinserted, restored, rekeyed, unbumped = (
        user
        for (user,) in source.db.execute("SELECT user_id FROM DimUser ORDER BY user_id LIMIT 4")
    )
    # A row the first load read, updated a few days before the clock's day.
    backdated, loaded_at = source.db.execute(
        "SELECT user_id, updated_at FROM DimUser WHERE user_id > ? AND updated_at < ? "
        "ORDER BY updated_at DESC LIMIT 1",
        (unbumped, source.stamp(source.clock() - timedelta(days=2))),
    ).fetchone()
    assert source.row(NEW_KEY) is None
    original = source.row(restored)
    columns = ", ".join("?" for _ in original)

    now = source.tick()
    row = source.row(reinserted)
    source.execute("DELETE FROM DimUser WHERE user_id = ?", reinserted)
    source.execute(f"INSERT INTO DimUser VALUES ({columns})", *row[:3], "Family", *row[4:6], now)
    source.execute("DELETE FROM DimUser WHERE user_id = ?", restored)
    source.execute("UPDATE DimUser SET user_id = ?, updated_at = ? WHERE user_id = ?",
                   NEW_KEY, now, rekeyed)  # fmt: skip
    source.execute(UNBUMPED_UPDATE, other_subscription(source.row(unbumped)[3]), unbumped)
    source.execute("UPDATE DimUser SET subscription_type = ?, updated_at = ? WHERE user_id = ?",
                   other_subscription(source.row(backdated)[3]),
                   source.stamp(datetime.fromisoformat(loaded_at) - timedelta(days=1)),
                   backdated)  # fmt: skip
    source.tick()
    source.execute(f"INSERT INTO DimUser VALUES ({columns})", *original)  # as it was, timestamp too
    source.execute(UNBUMPED_UPDATE, other_subscription(source.row(unbumped)[3]), unbumped)
    source.tick()
    assert main(["run"]) == 0
    assert_gold_current_equals_source(settings, source)
