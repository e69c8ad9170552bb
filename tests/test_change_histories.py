"""Change histories through the source, the CLI and gold (DESIGN.md §11, "SCD2 order").

A loaded lakehouse (source, lake and Dagster home) is prepared once per source engine; each
history starts from a copy of it, edits the source with SQL as an application would — updates,
updates that keep `updated_at`, deletes, re-inserts of deleted keys, restores of a deleted row with
its original `updated_at`, key updates, new streams, several changes in one clock tick or at
equal timestamps — runs `spotify-lakehouse run` after each round, and then gold equals plain SQL
over the source: the current version of every key, every stream with its point-in-time user, and
every aggregate. Generated histories found the open case kept below as an expected failure.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa
import pyodbc
import pytest

from resources.source_db import SourceSession
from spotify_assets.bronze.dialects import Dialect
from spotify_assets.catalog.tables import CATALOG
from spotify_assets.orchestration.resources import source_database
from tests.conftest import Lakehouse, PostgresServer
from tests.test_end_to_end import assert_dimensions_equal_source
from tests.test_gold import HISTORY_DAYS, assert_gold_equals_source, keep_initial_dimensions

USERS = CATALOG["DimUser"]
STREAMS = CATALOG.fact
KEYS = (3, 4, 20)  # a few existing users, so that changes to one key pile up
NEW_KEY = 5000  # key updates move a user here and above (never allocated by the generator)
COUNTRIES = ("US", "GB", "SE")
PLANS = ("Free", "Premium", "Family")

# Every pattern at least once: a re-insert in the delete's
# tick, an update keeping updated_at, two updates at one timestamp, a restore with the original
# updated_at, a key update, and streams after the changes.
EVERY_PATTERN = [
    [("delete", 0, "US", "Free", 60), ("reinsert", 0, "SE", "Premium", 0),
     ("update_keeping_time", 0, "GB", "Family", 1), ("delete", 2, "US", "Free", 1),
     ("stream", 0, "US", "Free", 90)],
    [("restore", 0, "US", "Free", 1), ("rekey", 1, "US", "Free", 0),
     ("update", 0, "US", "Free", 60), ("update", 0, "GB", "Premium", 0),
     ("stream", 2, "US", "Free", 1)],
]  # fmt: skip


@dataclass
class SourceEditor:
    """Applies abstract changes to DimUser (and new streams) through SQL, tracking which keys
    are live and the last row of each deleted key; a change that does not apply is skipped."""

    session: SourceSession
    clock: datetime
    live: dict[int, dict[str, Any]] = field(default_factory=dict)
    deleted: dict[int, dict[str, Any]] = field(default_factory=dict)
    next_stream: int = 0
    next_key: int = NEW_KEY

    @classmethod
    def open(cls, session: SourceSession) -> SourceEditor:
        rows = session.read_table(USERS).to_pylist()
        live = {r["user_id"]: r for r in rows if r["user_id"] in KEYS}
        streams = session.scalar(f'SELECT MAX(stream_id) FROM "{STREAMS.name}"')
        return cls(session, session.clock(), live, next_stream=int(streams) + 1)

    def apply(self, kind: str, which: int, country: str, plan: str, tick: int) -> None:
        self.clock += timedelta(seconds=tick)
        self.session.set_clock(self.clock)
        known = sorted(self.deleted if kind in ("reinsert", "restore") else self.live)
        if not known:
            return
        key = known[which % len(known)]
        values = {"country": country, "subscription_type": plan}
        if kind == "update":
            self._update(key, values | {"updated_at": self.clock})
        elif kind == "update_keeping_time":
            self._update(key, values)
        elif kind == "delete":
            self.session.apply_deletes(USERS, pa.array([key]))
            self.deleted[key] = self.live.pop(key)
        elif kind == "reinsert":
            self._insert(self.deleted.pop(key) | values | {"updated_at": self.clock})
        elif kind == "restore":
            self._insert(self.deleted.pop(key))
        elif kind == "rekey":
            new = self.next_key
            self.next_key += 1
            self.session.execute(
                f'UPDATE "{USERS.name}" SET user_id = ? WHERE user_id = ?', [new, key]
            )
            self.live[new] = self.live.pop(key) | {"user_id": new}
        else:
            self._stream(key)

    def close_round(self) -> None:
        """Move the clock past the round's last change, so that the next run loads all of it."""
        self.clock += timedelta(seconds=1)
        self.session.set_clock(self.clock)

    def _update(self, key: int, values: dict[str, Any]) -> None:
        row = self.live[key] | values
        self.session.apply_updates(USERS, pa.Table.from_pylist([row], schema=USERS.arrow_schema))
        self.live[key] = row

    def _insert(self, row: dict[str, Any]) -> None:
        self.session.bulk_insert(USERS, pa.Table.from_pylist([row], schema=USERS.arrow_schema))
        self.live[row["user_id"]] = row

    def _stream(self, user: int) -> None:
        row = {
            "stream_id": self.next_stream,
            "user_id": user,
            "track_id": 1,
            "date_key": int(self.clock.strftime("%Y%m%d")),
            "listen_duration": 200,
            "device_type": "mobile",
            "stream_timestamp": self.clock,
        }
        self.next_stream += 1
        self.session.bulk_insert(STREAMS, pa.Table.from_pylist([row], schema=STREAMS.arrow_schema))


def copy_of(base: Lakehouse, postgres: PostgresServer | None) -> Lakehouse:
    """A new home holding a copy of `base`'s lake, Dagster home and source."""
    home = base.home.with_name(f"example-{uuid.uuid4().hex[:8]}")
    shutil.copytree(base.home, home)
    if postgres is None:
        return Lakehouse(home, f"Driver=SQLite3;Database={home / 'source.db'}")
    name = f"ex_{uuid.uuid4().hex[:12]}"
    base_name = base.source_odbc.split("Database=")[1].split(";")[0]  # type: ignore[union-attr]
    with pyodbc.connect(postgres.connection_string("postgres"), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{base_name}"')
    return Lakehouse(home, postgres.connection_string(name))


@pytest.fixture
def loaded(lakehouse_cli: Lakehouse, request: pytest.FixtureRequest) -> Callable[[], Lakehouse]:
    """A lakehouse loaded once (three weeks of history ending two days ago), then a fresh copy of
    it per call."""
    end = datetime.now(UTC).date() - timedelta(days=2)
    lakehouse_cli("source", "init", "--scale", "0.002", "--history-days", str(HISTORY_DAYS),
                  "--end-date", str(end))  # fmt: skip
    keep_initial_dimensions(lakehouse_cli.settings)
    lakehouse_cli("run")
    on_postgres = lakehouse_cli.settings.source_dialect is Dialect.POSTGRESQL
    postgres = request.getfixturevalue("postgres_server") if on_postgres else None
    return lambda: copy_of(lakehouse_cli, postgres)


def replay(cli: Lakehouse, history: list[list[tuple[str, int, str, str, int]]]) -> None:
    """Edit the source round by round, `spotify-lakehouse run` after each; then gold equals
    plain SQL over the source."""
    source = source_database(cli.settings)
    with source.session() as session:
        editor = SourceEditor.open(session)
        for round_ in history:
            for kind, which, country, plan, tick in round_:
                editor.apply(kind, which, country, plan, tick)
            editor.close_round()
            cli("run")
    assert_dimensions_equal_source(cli.settings)
    assert_gold_equals_source(cli.settings)


def test_gold_follows_every_change_pattern(loaded: Callable[[], Lakehouse]) -> None:
    replay(loaded(), EVERY_PATTERN)


# Found by generated histories: an update that keeps an old updated_at, after a restore of the
# same user, changes the user's version on fact days already built (stream 1386 on 2026-11-08
# keeps DE/Premium in gold; plain SQL gives GB/Free).
BACKDATED_VERSION = [
    [("reinsert", 2, "US", "Free", 1), ("rekey", 2, "GB", "Premium", 0),
     ("update", 0, "GB", "Premium", 1), ("delete", 1, "GB", "Premium", 0),
     ("restore", 2, "GB", "Premium", 0), ("update", 2, "GB", "Free", 1)],
    [("restore", 1, "GB", "Family", 0), ("stream", 1, "SE", "Free", 0),
     ("restore", 2, "GB", "Family", 0), ("stream", 2, "GB", "Free", 0),
     ("update_keeping_time", 1, "GB", "Free", 0), ("delete", 1, "SE", "Premium", 0)],
]  # fmt: skip


@pytest.mark.parametrize("lakehouse_cli", ["sqlite"], indirect=True)
@pytest.mark.xfail(
    strict=True,
    reason="open: a backdated version after a restore does not reach fact days already built",
)
def test_a_backdated_version_reaches_fact_days_already_built(
    loaded: Callable[[], Lakehouse],
) -> None:
    replay(loaded(), BACKDATED_VERSION)
