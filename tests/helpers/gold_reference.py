"""Gold as plain SQL on the source: the reference the pipeline's gold must equal (README: Gold).

Written by hand in SQL that SQLite and PostgreSQL both run, straight from the source through
ODBC: its tables as they were created (copied aside, since the change tables start after them)
and its change tables, with the same cleaning and validity rules silver applies, each stream's
user and track as they were at stream time (versions ordered by business time, then change
sequence, a change never taking effect before one committed before it; a stream older than a
row's first known version takes that version), then the four daily aggregates; and the current
state of every dimension.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from resources.delta_tables import delta_table
from resources.lake import LakeStorage
from resources.source_db import SourceSession
from spotify_assets.catalog.gold_spec import END_AT
from spotify_assets.catalog.reference import COUNTRY_NAMES, DEVICES, SUBSCRIPTIONS
from spotify_assets.catalog.tables import CATALOG
from spotify_assets.cli.commands import source_init
from spotify_assets.orchestration.resources import source_database
from spotify_assets.orchestration.settings import Settings
from tests.helpers.source import HISTORY_DAYS, SEED


def _values(items: list[str]) -> str:
    return ", ".join(f"'{v}'" for v in items)


COUNTRY = (
    "COALESCE((SELECT code FROM country_names WHERE name = upper(trim({0}))), upper(trim({0})))"
)
INITCAP = "upper(substr(trim({0}), 1, 1)) || lower(substr(trim({0}), 2))"
COUNTRY_NAMES_CTE = (
    "country_names(name, code) AS (VALUES "
    + ", ".join(f"('{name.upper()}', '{code}')" for code, name in COUNTRY_NAMES.items())
    + ")"
)
# A dimension's changes: the rows as created (kept aside, `keep_initial_dimensions`; they come
# before every change record) and its change records, each at its business time (a delete's is
# its change time, as is that of a row without updated_at).
VERSIONS = """SELECT {columns}, updated_at AS business_at, 0 AS seq, 'S' AS op
    FROM "initial_{table}"
    UNION ALL SELECT {columns},
        CASE WHEN "_op" = 'D' THEN "_changed_at" ELSE COALESCE(updated_at, "_changed_at") END,
        "_seq", "_op"
    FROM "{table}_changes" """
# When each change takes effect: at its business time, but never before a change preceding it
# in the sequence (a restore with its original updated_at, and what follows it; an update
# backdated before the row as created).
TIMED = """SELECT v.*, CASE WHEN seq = 0 THEN business_at ELSE MAX(business_at)
        OVER (PARTITION BY {key} ORDER BY seq ROWS UNBOUNDED PRECEDING) END AS effective_at
    FROM {changes} v"""
# The versions a stream can see: upserts, except those a delete supersedes at their own instant.
VISIBLE = """SELECT * FROM {timed} v WHERE op <> 'D' AND NOT EXISTS (
    SELECT 1 FROM {timed} d
    WHERE d.{key} = v.{key} AND d.op = 'D' AND d.effective_at = v.effective_at AND d.seq > v.seq)"""
# The version a stream sees: the last one at or before its time, else the first visible one.
AT_STREAM = """COALESCE(
    (SELECT v.seq FROM {versions} v WHERE v.{key} = s.{key} AND v.effective_at <= s.stream_timestamp
     ORDER BY v.effective_at DESC, v.seq DESC LIMIT 1),
    (SELECT v.seq FROM {versions} v WHERE v.{key} = s.{key}
     ORDER BY v.effective_at, v.seq DESC LIMIT 1))"""

# Standard SQL that SQLite and PostgreSQL both run: gold's fact, straight from the source.
REFERENCE = f"""
WITH {COUNTRY_NAMES_CTE},
valid_users AS (
    SELECT * FROM (
        SELECT user_id, business_at, seq, op, {COUNTRY.format("country")} AS country,
               {INITCAP.format("subscription_type")} AS subscription_type
        FROM ({VERSIONS.format(table="DimUser", columns="user_id, country, subscription_type")})
            AS versions
    ) AS cleaned
    WHERE country IN ({_values(list(COUNTRY_NAMES))})
      AND subscription_type IN ({_values(list(SUBSCRIPTIONS))})
),
timed_users AS ({TIMED.format(changes="valid_users", key="user_id")}),
users AS ({VISIBLE.format(timed="timed_users", key="user_id")}),
valid_tracks AS (
    SELECT * FROM ({VERSIONS.format(table="DimTrack", columns="track_id, artist_id, duration_sec")})
        AS versions
    WHERE artist_id IS NOT NULL AND duration_sec > 0
),
timed_tracks AS ({TIMED.format(changes="valid_tracks", key="track_id")}),
tracks AS ({VISIBLE.format(timed="timed_tracks", key="track_id")}),
streams AS (
    SELECT stream_id, user_id, track_id, listen_duration, stream_timestamp,
           date(stream_timestamp) AS stream_date, lower(trim(device_type)) AS device_type
    FROM "FactStream"
    WHERE user_id IS NOT NULL AND track_id IS NOT NULL
      AND listen_duration BETWEEN 0 AND 86400
      AND lower(trim(device_type)) IN ({_values(list(DEVICES))})
),
picked AS (
    SELECT s.*, {AT_STREAM.format(versions="users", key="user_id")} AS user_seq,
           {AT_STREAM.format(versions="tracks", key="track_id")} AS track_seq
    FROM streams s
)
SELECT p.stream_id, p.stream_date, p.user_id, p.track_id, p.device_type, p.listen_duration,
       u.country, u.subscription_type, t.artist_id
FROM picked p
LEFT JOIN users u ON u.user_id = p.user_id AND u.seq = p.user_seq
LEFT JOIN tracks t ON t.track_id = p.track_id AND t.seq = p.track_seq
"""

MEASURES = "count(*), count(DISTINCT user_id), sum(listen_duration)"
AGGREGATES = {
    "agg_daily_track": f"SELECT stream_date, track_id, {MEASURES} FROM fact GROUP BY 1, 2",
    "agg_daily_artist": f"SELECT stream_date, artist_id, {MEASURES} FROM fact GROUP BY 1, 2",
    "agg_daily_country_device": f"SELECT stream_date, country, device_type, subscription_type, "
    f"{MEASURES} FROM fact GROUP BY 1, 2, 3, 4",
    "agg_daily_user": "SELECT stream_date, user_id, count(*), count(DISTINCT track_id), "
    "sum(listen_duration) FROM fact GROUP BY 1, 2",
}
FACT_COLUMNS = [
    "stream_id",
    "stream_date",
    "user_id",
    "track_id",
    "device_type",
    "listen_duration",
    "country",
    "subscription_type",
    "artist_id",
]


def normalised(rows: Any) -> list[tuple[Any, ...]]:
    """Rows in a total order, dates as ISO text (SQLite has no date type), whole numbers as int
    (PostgreSQL sums to NUMERIC)."""
    as_text = [
        tuple(
            v.isoformat() if isinstance(v, date) else int(v) if isinstance(v, Decimal) else v
            for v in r
        )
        for r in rows
    ]
    return sorted(as_text, key=lambda r: tuple((v is not None, str(v)) for v in r))


@contextmanager
def source_session(settings: Settings) -> Iterator[SourceSession]:
    """The source through ODBC, as the pipeline reads it, whichever database it is."""
    source = source_database(settings)
    with source.connect() as conn:
        yield source.session_on(conn)


def keep_initial_dimensions(settings: Settings) -> None:
    """Copy the dimensions as created (`initial_<table>`, which the pipeline never reads):
    every version after them is in the change tables."""
    with source_session(settings) as session:
        for table in ("DimUser", "DimTrack"):
            session.execute(f'CREATE TABLE "initial_{table}" AS SELECT * FROM "{table}"')


def source_reference(settings: Settings) -> dict[str, list[tuple[Any, ...]]]:
    with source_session(settings) as session:
        session.execute(f"CREATE TEMPORARY TABLE fact AS {REFERENCE}")
        expected = {
            "fact_stream": normalised(session.query(f"SELECT {', '.join(FACT_COLUMNS)} FROM fact"))
        }
        for name, sql in AGGREGATES.items():
            expected[name] = normalised(session.query(sql))
    return expected


def gold(settings: Settings) -> dict[str, list[tuple[Any, ...]]]:
    """The gold tables, read with delta-rs (any Delta reader must open them) given the lake's
    storage options (none for a local lake, the account of the environment on Azure)."""
    lake = LakeStorage(url=settings.lake_url)
    result = {}
    columns = {"fact_stream": FACT_COLUMNS} | {
        a.name: [*a.group_by, *(m.name for m in a.measures)] for a in CATALOG.aggregates
    }
    for name in ["fact_stream", *AGGREGATES]:
        table = delta_table(lake, f"gold/{name}").to_pyarrow_table()
        result[name] = normalised(zip(*(table[c].to_pylist() for c in columns[name]), strict=True))
    return result


def assert_gold_equals_source(settings: Settings) -> None:
    expected, actual = source_reference(settings), gold(settings)
    assert len(expected["fact_stream"]) > 1000
    for name in expected:
        assert actual[name] == expected[name], name


def small_source(home: Path) -> Settings:
    """A tiny embedded source under `home`, its history ending four days ago, with the
    dimensions as created kept aside for the reference SQL."""
    settings = Settings.from_env({"SPOTIFY_HOME": str(home)})
    end = datetime.now(UTC).date() - timedelta(days=4)
    source_init(settings, 0.002, SEED, end, history_days=HISTORY_DAYS)
    keep_initial_dimensions(settings)
    return settings


# Current state per dimension, by plain SQL: (key, tracked columns as silver cleans them).
CURRENT = {
    "dim_user": f"WITH {COUNTRY_NAMES_CTE} SELECT user_id, {COUNTRY.format('country')}, "
    f'{INITCAP.format("subscription_type")} FROM "DimUser"',
    "dim_artist": f"WITH {COUNTRY_NAMES_CTE} SELECT artist_id, lower(trim(genre)), "
    f'{COUNTRY.format("country")} FROM "DimArtist"',
    # Tracks failing a silver rule keep their last valid version current: compare valid ones.
    "dim_track": 'SELECT track_id, artist_id, duration_sec FROM "DimTrack" '
    "WHERE artist_id IS NOT NULL AND duration_sec > 0",
}
GOLD_CURRENT = {
    "dim_user": ["user_id", "country", "subscription_type"],
    "dim_artist": ["artist_id", "genre", "country"],
    "dim_track": ["track_id", "artist_id", "duration_sec"],
}


def assert_dimensions_equal_source(settings: Settings) -> None:
    """The current version of each key in gold is the source's current row."""
    lake = LakeStorage(url=settings.lake_url)
    with source_session(settings) as session:
        for name, sql in CURRENT.items():
            expected = sorted(session.query(sql))
            table = delta_table(lake, f"gold/{name}").to_pyarrow_table()
            current = table.filter(table[END_AT].is_null())
            columns = [current[c].to_pylist() for c in GOLD_CURRENT[name]]
            actual = sorted(zip(*columns, strict=True))
            if name == "dim_track":  # only tracks whose source row is valid are compared
                valid = {row[0] for row in expected}
                actual = [row for row in actual if row[0] in valid]
            else:
                assert len(actual) == len({row[0] for row in actual}), f"{name}: two current"
            assert actual == [tuple(row) for row in expected], name
