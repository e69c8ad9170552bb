"""Connection strings and bad configuration: clear messages, never a password."""

from __future__ import annotations

import time

import pyarrow as pa
import pytest

from resources.odbc import (
    SourceConfigError,
    SourceUnavailableError,
    dialect_of,
    in_utc,
    odbc_connect,
    parse_connection_string,
    redact,
)
from resources.source_db import SourceDatabase
from resources.source_reader import ReaderKind, read_arrow, read_as_text
from spotify_assets.bronze.dialects import Dialect
from tests.helpers.servers import PostgresServer, free_port

SECRET = "hunter2-XyZ"


def test_parse_handles_braces_semicolons_and_escaped_braces() -> None:
    parsed = parse_connection_string(
        "Driver={PostgreSQL Unicode};Server=db;Pwd={a;b}}c};Port=5432;"
    )
    assert parsed == {
        "Driver": "PostgreSQL Unicode",
        "Server": "db",
        "Pwd": "a;b}c",
        "Port": "5432",
    }


@pytest.mark.parametrize(
    "conn_str",
    [
        "",
        "   ",
        "this is not a connection string",
        f"Driver={{SQLite3;Pwd={SECRET};Database=x",
        f"Driver=SQLite3;Pwd={SECRET};Database={{unterminated",
        f"Pwd={SECRET};Pwd=again",
        f"postgresql://app:{SECRET}@127.0.0.1:5432/music",
    ],
)
def test_malformed_connection_string_is_rejected_without_the_secret(conn_str: str) -> None:
    with pytest.raises(SourceConfigError) as excinfo:
        dialect_of(conn_str)
    message = str(excinfo.value)
    assert SECRET not in message
    assert "connection string" in message


@pytest.mark.parametrize(
    ("conn_str", "shown"),
    [
        (f"Driver=x;PWD={SECRET};Uid=u", "Driver=x;PWD=***;Uid=u"),
        (f"Driver=x;Password = {{{SECRET};x}};Uid=u", "Driver=x;Password = ***;Uid=u"),
        (f"AccountKey={SECRET}", "AccountKey=***"),
        (f"postgresql://app:{SECRET}@db:5432/music", "postgresql://app:***@db:5432/music"),
    ],
)
def test_redact_hides_every_secret(conn_str: str, shown: str) -> None:
    assert redact(conn_str) == shown


def test_a_url_is_refused_naming_the_odbc_form() -> None:
    """A newcomer's first try, the URL their other tools take: refused in one line that says
    what to write instead (it printed the URL, password included)."""
    with pytest.raises(SourceConfigError) as excinfo:
        dialect_of(f"postgresql://app:{SECRET}@127.0.0.1:5432/music")
    assert str(excinfo.value) == (
        "SPOTIFY_SOURCE_ODBC takes an ODBC connection string, not a URL ('postgresql://app:***@"
        "127.0.0.1:5432/music'): e.g. Driver={PostgreSQL Unicode};Server=<host>;Port=5432;"
        "Database=<db>;Uid=<user>;Pwd=<password>"
    )


@pytest.mark.parametrize(
    ("driver", "dialect"),
    [
        ("SQLite3", Dialect.SQLITE),
        ("{PostgreSQL Unicode}", Dialect.POSTGRESQL),
        ("{ODBC Driver 18 for SQL Server}", Dialect.TSQL),
    ],
)
def test_dialect_follows_the_driver(driver: str, dialect: Dialect) -> None:
    assert dialect_of(f"Driver={driver};Database=x") is dialect


def test_unknown_driver_names_the_supported_ones() -> None:
    with pytest.raises(SourceConfigError, match="unsupported ODBC driver 'Oracle 19'") as excinfo:
        dialect_of(f"Driver={{Oracle 19}};Pwd={SECRET}")
    assert SECRET not in str(excinfo.value)


def test_missing_driver_is_rejected_before_connecting() -> None:
    conn_str = f"Driver={{ODBC Driver 18 for SQL Server}};Server=x;Uid=u;Pwd={SECRET}"
    with pytest.raises(SourceConfigError, match="is not installed") as excinfo:  # noqa: SIM117
        with odbc_connect(conn_str):
            pass
    assert SECRET not in str(excinfo.value)


@pytest.mark.postgres
def test_unreachable_server_fails_fast_with_a_clear_message() -> None:
    closed = PostgresServer(port=free_port(), user="spotify", password=SECRET)
    source = SourceDatabase(connection_string=closed.connection_string("spotify"))
    started = time.perf_counter()
    with pytest.raises(SourceUnavailableError, match="cannot connect to the source") as excinfo:  # noqa: SIM117
        with source.connect():
            pass
    assert time.perf_counter() - started < 10
    assert SECRET not in str(excinfo.value)
    assert "Pwd=***" in str(excinfo.value)
    assert excinfo.value.__cause__ is None and excinfo.value.__suppress_context__
    # One line, what to do included: the driver breaks its message over two, and the CLI
    # prints a source error's first line only (a PostgreSQL server stopped mid-run).
    assert "\n" not in str(excinfo.value)
    assert str(excinfo.value).endswith("the credentials in SPOTIFY_SOURCE_ODBC.")


@pytest.mark.postgres
def test_wrong_password_is_reported_without_it(postgres_server: PostgresServer) -> None:
    source = SourceDatabase(connection_string=postgres_server.connection_string("postgres", SECRET))
    with pytest.raises(SourceUnavailableError, match="password authentication failed") as excinfo:  # noqa: SIM117
        with source.connect():
            pass
    assert SECRET not in str(excinfo.value)
    assert postgres_server.password not in str(excinfo.value)


def test_postgres_sessions_keep_utc_after_the_users_own_settings(
    postgres_server: PostgresServer,
) -> None:
    """A user's ConnSettings (here a zone of their own) still run, then the session's zone is
    UTC: our windows are naive UTC literals, which PostgreSQL reads in the session's zone."""
    own = "ConnSettings={SET TIME ZONE 'Asia/Tokyo';SET application_name = 'mine'}"
    conn_str = f"{postgres_server.connection_string('postgres')};{own}"
    assert parse_connection_string(in_utc(conn_str)) == parse_connection_string(conn_str) | {
        "ConnSettings": "SET TIME ZONE 'Asia/Tokyo';SET application_name = 'mine';"
        "SET TIME ZONE 'UTC'"
    }
    with odbc_connect(conn_str) as conn:
        zone, name = conn.execute(
            "SELECT current_setting('TimeZone'), current_setting('application_name')"
        ).fetchone()
    assert (zone, name) == ("UTC", "mine")


@pytest.mark.parametrize("reader", [ReaderKind.CONNECTORX, ReaderKind.ARROW_ODBC, "text"])
def test_every_reader_reads_a_far_zoned_database_in_utc(
    postgres_source: SourceDatabase, reader: ReaderKind | str
) -> None:
    """The database's own zone is Tokyo: each reader's session is in UTC all the same, so a
    naive literal is the UTC instant (a window bound) and a timestamptz prints as UTC."""
    conn_str = postgres_source.connection_string
    with odbc_connect(conn_str) as conn:
        conn.execute(
            "DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET timezone = %L', "
            "current_database(), 'Asia/Tokyo'); END $$"
        )
        conn.commit()
    query = (
        "SELECT current_setting('TimeZone') AS zone, CAST(TIMESTAMPTZ '2026-11-20 23:30:00+00' "
        "AS text) AS instant, TIMESTAMPTZ '2026-11-20 00:00:00+00' = TIMESTAMP '2026-11-20' "
        "AS same"
    )
    schema = pa.schema([("zone", pa.string()), ("instant", pa.string()), ("same", pa.bool_())])
    if reader == "text":
        table = read_as_text(conn_str, Dialect.POSTGRESQL, query, schema)
    else:
        table = pa.Table.from_batches(
            list(read_arrow(conn_str, Dialect.POSTGRESQL, query, schema, ReaderKind(reader)))
        )
    assert table.to_pylist() == [{"zone": "UTC", "instant": "2026-11-20 23:30:00+00", "same": True}]


def test_other_sources_connection_strings_are_left_as_written() -> None:
    conn_str = "Driver=SQLite3;Database=/tmp/x.db"
    assert in_utc(conn_str) == conn_str
