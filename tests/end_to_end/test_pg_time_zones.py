"""A PostgreSQL source whose sessions default to a far time zone (the database's TimeZone):
its `timestamptz` columns are read as UTC instants, each row copied once into its UTC day,
and its `timestamp` columns are taken as UTC wall times, as on any other server."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from resources.source_db import SourceDatabase
from spotify_assets.bronze.dialects import DIALECTS, Dialect
from spotify_assets.bronze.windows import Window
from spotify_assets.catalog.tables import DIM_ARTIST, FACT_STREAM
from spotify_assets.orchestration.resources import source_database
from tests.helpers.bronze import runner_for
from tests.helpers.gold_reference import (
    assert_dimensions_equal_source,
    gold,
    keep_initial_dimensions,
    source_reference,
    source_session,
)
from tests.helpers.processes import Lakehouse
from tests.helpers.source import fill_own_calendar

STREAM, ARTIST = FACT_STREAM, DIM_ARTIST
# The user's own tables: the fact's time and a dimension's as timestamptz, the others plain.
DDL = [
    """CREATE TABLE "DimUser" (user_id bigint PRIMARY KEY, updated_at timestamptz NOT NULL,
        user_name text, subscription_type text, country text, start_date date, end_date date)""",
    """CREATE TABLE "DimArtist" (artist_id integer PRIMARY KEY, artist_name text, country text,
        genre text, updated_at timestamp NOT NULL)""",
    """CREATE TABLE "DimTrack" (track_id integer PRIMARY KEY, artist_id integer,
        track_name text, album_name text, duration_sec integer, release_date date,
        updated_at timestamp NOT NULL)""",
    """CREATE TABLE "DimDate" (date_key integer PRIMARY KEY, "date" date NOT NULL,
        weekday text NOT NULL, day int NOT NULL, month int NOT NULL, year int NOT NULL)""",
    """CREATE TABLE "FactStream" (stream_id bigserial PRIMARY KEY,
        stream_timestamp timestamptz NOT NULL, user_id integer, track_id integer,
        date_key integer, listen_duration integer, device_type text)""",
]
# Streams every `step` minutes from the UTC wall time `first`: some within minutes of every
# midnight UTC, where a window read in the session's zone would cut.
STREAMS = """INSERT INTO "FactStream" (stream_timestamp, user_id, track_id, date_key,
        listen_duration, device_type)
    SELECT ts AT TIME ZONE 'UTC', 1 + i % 20, 1 + i % 30, CAST(to_char(ts, 'YYYYMMDD') AS int),
        30 + i % 200, (ARRAY['mobile', 'desktop', 'tv'])[1 + i % 3]
    FROM (SELECT i, CAST(? AS timestamp) + i * CAST(? AS interval) AS ts
          FROM generate_series(0, ?) AS i) AS s"""


def _fill(cli: Lakehouse, zone: str, start: datetime, now: datetime) -> None:
    with source_session(cli.settings) as session:
        session.execute(
            f"DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET timezone = %L', "
            f"current_database(), '{zone}'); END $$"
        )
        for statement in DDL:
            session.execute(statement)
        fill_own_calendar(session, start.date(), 30)
        session.execute(
            """INSERT INTO "DimUser" SELECT i,
                (CAST(? AS timestamp) + i * interval '1 minute') AT TIME ZONE 'UTC',
                'user ' || i, (ARRAY['Free', 'Premium'])[1 + i % 2], 'US', DATE '2026-01-01',
                NULL FROM generate_series(1, 20) AS i""",
            [start + timedelta(hours=23, minutes=50)],
        )
        session.execute(
            """INSERT INTO "DimArtist" SELECT i, 'Artist ' || i, 'SE', 'Pop',
                CAST(? AS timestamp) + i * interval '10 minutes' FROM generate_series(1, 5) AS i""",
            [start + timedelta(hours=23, minutes=30)],
        )
        session.execute(
            """INSERT INTO "DimTrack" SELECT i, 1 + i % 5, 'Track-' || i, 'Album', 100 + i,
                DATE '2025-01-01', ? FROM generate_series(1, 30) AS i""",
            [start + timedelta(hours=1)],
        )
        # Up to a few minutes before now: the first run's watermark sits mid-day after them.
        first = start + timedelta(days=1, minutes=10)
        session.execute(STREAMS, [first, "20 minutes", int((now - first).total_seconds() // 1200)])


def _assert_bronze_is_utc(cli: Lakehouse) -> None:
    """Bronze holds each stream once, at the source's UTC instant, and the source's profile
    counts per day what bronze holds per UTC day; plain timestamps are copied as written."""
    runner = runner_for(source_database(cli.settings), Path(cli.settings.lake_url))
    with source_session(cli.settings) as session:
        instants = dict(
            session.query("""SELECT stream_id, stream_timestamp AT TIME ZONE 'UTC'
                FROM "FactStream" """)
        )
        artists = dict(session.query('SELECT artist_id, updated_at FROM "DimArtist"'))
        days = sorted({t.date() for t in instants.values()})
        query = DIALECTS[Dialect.POSTGRESQL].daily_profile_query(
            STREAM, Window.of_days(days[0], days[-1])
        )
        profile = {day: n for day, n, _ in session.query(query)}
    streams = runner.store(STREAM).read_all()
    ids = streams["stream_id"].to_pylist()
    assert len(ids) == len(set(ids)), "a stream copied twice"
    copied = dict(zip(ids, streams["stream_timestamp"].to_pylist(), strict=True))
    assert {k: v.replace(tzinfo=None) for k, v in copied.items()} == instants
    assert profile == Counter(t.date() for t in instants.values())
    bronze_artists = runner.store(ARTIST).read_all()
    latest = dict(
        zip(
            bronze_artists["artist_id"].to_pylist(),
            bronze_artists["updated_at"].to_pylist(),
            strict=True,
        )
    )
    assert {k: v.replace(tzinfo=None) for k, v in latest.items()} == artists
    assert bronze_artists.num_rows == len(artists)


@pytest.mark.parametrize("zone", ["Asia/Tokyo", "America/Los_Angeles"])
def test_postgres_sessions_in_a_far_time_zone(
    postgres_source: SourceDatabase, tmp_path: Path, zone: str
) -> None:
    """Chunked first copy, an incremental one from a mid-day watermark, the user's update
    stamped minutes after midnight UTC: bronze at the UTC instants, gold equal to plain SQL, and
    the next `run` idle (a profile counted on the zone's days would repair days every run)."""
    now = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
    start = datetime.combine(now.date() - timedelta(days=3), datetime.min.time())
    settings_env = {
        "SPOTIFY_PARTITION_START": start.date().isoformat(),
        "SPOTIFY_SAFETY_LAG_SECONDS": "0",
        "SPOTIFY_CHUNK_ROWS": "50",
    }
    cli = Lakehouse(tmp_path, postgres_source.connection_string, settings_env=settings_env)
    _fill(cli, zone, start, now - timedelta(minutes=5))
    cli("source", "attach")
    keep_initial_dimensions(cli.settings)
    cli("run")
    first_run_done = datetime.now(UTC).replace(tzinfo=None)
    _assert_bronze_is_utc(cli)
    assert gold(cli.settings) == source_reference(cli.settings)

    # New streams after the first run's watermark (mid-day), late ones before it.
    later = datetime.now(UTC).replace(tzinfo=None)
    midnight = datetime.combine(now.date(), datetime.min.time())
    with source_session(cli.settings) as session:
        session.execute(
            """UPDATE "DimUser" SET subscription_type = 'Premium',
                updated_at = CAST(? AS timestamp) AT TIME ZONE 'UTC' WHERE user_id = 4""",
            [min(midnight + timedelta(minutes=30), now - timedelta(minutes=1))],
        )
        session.execute(STREAMS, [now - timedelta(minutes=4), "1 second", 100])
        step = (later - first_run_done) / 100
        session.execute(STREAMS, [first_run_done, f"{step.total_seconds()} seconds", 99])
    cli("run")
    _assert_bronze_is_utc(cli)
    assert gold(cli.settings) == source_reference(cli.settings)
    assert_dimensions_equal_source(cli.settings)
    assert json.loads(cli("run")) == {"incremental": [], "repaired": []}
