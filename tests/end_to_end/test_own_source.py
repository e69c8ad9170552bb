"""A user's own source (README: "Your own source"): the five tables created with the user's own
DDL and filled with their own INSERTs, no `source init`; `source attach`, then `run`, then the
user's changes and `run` again: gold equals plain SQL on the source."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from resources.source_db import SourceDatabase
from tests.helpers.gold_reference import (
    assert_dimensions_equal_source,
    gold,
    keep_initial_dimensions,
    source_reference,
    source_session,
)
from tests.helpers.processes import CLI, CLI_MEMORY_GIB, Lakehouse, run_bounded
from tests.helpers.source import fill_own_calendar

# The user's style: their own column order, text, timestamptz, bigint keys, a key without a
# primary key, a bigserial fact.
OWN_DDL = [
    """CREATE TABLE "DimUser" (user_id bigint PRIMARY KEY, updated_at timestamptz NOT NULL,
        user_name text, subscription_type varchar(30), country text, start_date date,
        end_date date)""",
    """CREATE TABLE "DimArtist" (artist_id integer PRIMARY KEY, artist_name text, country text,
        genre text, updated_at timestamp NOT NULL)""",
    """CREATE TABLE "DimTrack" (track_id integer, artist_id integer, track_name text,
        album_name text, duration_sec integer, release_date date, updated_at timestamp NOT NULL)""",
    """CREATE TABLE "DimDate" (date_key integer PRIMARY KEY, "date" date NOT NULL,
        weekday text NOT NULL, day int NOT NULL, month int NOT NULL, year int NOT NULL)""",
    """CREATE TABLE "FactStream" (stream_id bigserial PRIMARY KEY,
        stream_timestamp timestamp NOT NULL, user_id integer, track_id integer,
        date_key integer, listen_duration integer, device_type text)""",
]
STREAMS = """INSERT INTO "FactStream" (stream_timestamp, user_id, track_id, date_key,
        listen_duration, device_type)
    SELECT ts, 1 + i % 20, 1 + i % 30, CAST(to_char(ts, 'YYYYMMDD') AS integer), 30 + i % 200,
        (ARRAY['mobile', 'desktop', 'tv'])[1 + i % 3]
    FROM (SELECT i, CAST('{first}' AS timestamp) + i * interval '{step} minutes' AS ts
          FROM generate_series(0, {last}) AS i) AS s"""


def _fill(cli: Lakehouse, start: datetime) -> None:
    with source_session(cli.settings) as session:
        for statement in OWN_DDL:
            session.execute(statement)
        fill_own_calendar(session, start.date(), 40)
        at = start + timedelta(hours=1)
        session.execute(
            """INSERT INTO "DimUser" SELECT i, CAST(? AS timestamp) + i * interval '1 minute',
                'user ' || i, (ARRAY['Free', 'Premium', 'premium ', 'Free'])[1 + i % 4],
                (ARRAY['US', 'GB', 'DE', 'Sweden'])[1 + i % 4], DATE '2026-01-01' + i, NULL
            FROM generate_series(1, 20) AS i""",
            [at],
        )
        session.execute(
            """INSERT INTO "DimArtist" SELECT i, 'Artist ' || i, 'SE',
                (ARRAY['Pop', 'rock', 'Jazz'])[1 + i % 3], ? FROM generate_series(1, 5) AS i""",
            [at],
        )
        session.execute(
            """INSERT INTO "DimTrack" SELECT i, 1 + i % 5, 'Track-' || i, 'Album ' || (i % 3),
                100 + i * 10, DATE '2025-01-01' + i, ? FROM generate_series(1, 30) AS i""",
            [at],
        )
        first = start + timedelta(days=1)
        session.execute(STREAMS.format(first=first, step=20, last=1199))


def test_own_postgres_tables_attached_then_run(postgres_source: SourceDatabase, tmp_path) -> None:
    """Before `source attach`, `run` names it (it said the source held no tables, and to run
    `source init`, which would drop them); after it, gold equals the source, and again after
    the user's updates, new streams and streams of last week inserted late."""
    now = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
    start = datetime.combine(now.date() - timedelta(days=20), datetime.min.time())
    settings_env = {
        "SPOTIFY_PARTITION_START": start.date().isoformat(),
        "SPOTIFY_SAFETY_LAG_SECONDS": "0",
    }
    cli = Lakehouse(tmp_path, postgres_source.connection_string, settings_env=settings_env)
    _fill(cli, start)

    refused = run_bounded([CLI, "run"], CLI_MEMORY_GIB, env=cli.env)
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        "error: the source holds the catalog's tables but not the pipeline's clock and settings "
        'tables: run `spotify-lakehouse source attach` once (README "Your own source")'
    ]
    assert "DimUser_changes" in cli("source", "attach")
    assert '"added": []' in cli("source", "attach")
    keep_initial_dimensions(cli.settings)
    cli("run")
    assert gold(cli.settings) == source_reference(cli.settings)

    with source_session(cli.settings) as session:
        session.execute(
            """UPDATE "DimUser" SET subscription_type = 'Premium', updated_at = ?
            WHERE user_id = 4""",
            [now - timedelta(minutes=1)],
        )
        session.execute(STREAMS.format(first=now - timedelta(days=6), step=7, last=99))
        session.execute(STREAMS.format(first=now - timedelta(hours=3), step=1, last=99))
    cli("run")
    assert gold(cli.settings) == source_reference(cli.settings)
    assert_dimensions_equal_source(cli.settings)
