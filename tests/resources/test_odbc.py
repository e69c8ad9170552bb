"""Connection strings and bad configuration: clear messages, never a password."""

from __future__ import annotations

import time

import pytest

from resources.odbc import (
    SourceConfigError,
    SourceUnavailableError,
    dialect_of,
    odbc_connect,
    parse_connection_string,
    redact,
)
from resources.source_db import SourceDatabase
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
    ],
)
def test_redact_hides_every_secret(conn_str: str, shown: str) -> None:
    assert redact(conn_str) == shown


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
