"""ODBC connection strings: parsing, redaction, dialect detection and connecting with clear errors.

Connection strings carry secrets, so every message built here goes through `redact` first.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

import pyodbc

from spotify_assets.bronze.dialects import Dialect

SECRET_KEYS = frozenset({"pwd", "password", "accountkey", "sharedaccesskey", "secret", "token"})


class SourceConfigError(ValueError):
    """The source configuration is wrong (malformed string, unknown driver, bad setting)."""


class SourceUnavailableError(ConnectionError):
    """The source is configured correctly but cannot be reached or refuses the login."""


# Substrings of an ODBC driver name, matched case-insensitively, that identify the dialect.
_DRIVER_DIALECTS = (
    ("sqlite", Dialect.SQLITE),
    ("postgres", Dialect.POSTGRESQL),
    ("psql", Dialect.POSTGRESQL),
    ("sql server", Dialect.TSQL),
)

# A URL such as postgresql://user:password@host/db: the form other tools take, never ODBC's.
_URL = re.compile(r"^\s*[A-Za-z][A-Za-z0-9+.-]*://")
_URL_PASSWORD = re.compile(r"(://[^:/@;]*:)[^@;]*(@)")

_ATTRIBUTE = re.compile(r"\s*([^=;{}]+?)\s*=\s*(\{(?:[^}]|\}\})*\}|[^;{}]*)\s*(?:;|$)")


def parse_connection_string(conn_str: str) -> dict[str, str]:
    """Parse `Key=value;Key={value; with braces}` into an ordered dict (keys as written)."""
    if not conn_str or not conn_str.strip():
        raise SourceConfigError("the ODBC connection string is empty")
    if _URL.match(conn_str):
        raise SourceConfigError(
            "SPOTIFY_SOURCE_ODBC takes an ODBC connection string, not a URL "
            f"({redact(conn_str.strip())!r}): e.g. Driver={{PostgreSQL Unicode}};Server=<host>;"
            "Port=5432;Database=<db>;Uid=<user>;Pwd=<password>"
        )
    attributes: dict[str, str] = {}
    pos = 0
    text = conn_str.strip()
    while pos < len(text):
        match = _ATTRIBUTE.match(text, pos)
        if not match or match.end() == pos:
            raise SourceConfigError(
                "malformed ODBC connection string near character "
                f"{pos}: expected Key=value pairs separated by ';' (got {redact(conn_str)!r})"
            )
        key, value = match.group(1), match.group(2).strip()
        if value.startswith("{"):
            value = value[1:-1].replace("}}", "}")
        if key.lower() in (k.lower() for k in attributes):
            raise SourceConfigError(f"ODBC connection string sets {key!r} twice")
        attributes[key] = value
        pos = match.end()
    return attributes


def attribute(attributes: dict[str, str], *names: str) -> str | None:
    """Case-insensitive lookup of the first of `names` present."""
    lowered = {k.lower(): v for k, v in attributes.items()}
    for name in names:
        if name.lower() in lowered:
            return lowered[name.lower()]
    return None


def redact(conn_str: str) -> str:
    """The connection string with every secret value replaced by ***; safe for logs and errors."""
    pattern = r"(?i)(\b(?:{})\s*=\s*)(\{{(?:[^}}]|\}}\}})*\}}|[^;]*)".format(
        "|".join(sorted(SECRET_KEYS))
    )
    return _URL_PASSWORD.sub(r"\1***\2", re.sub(pattern, r"\1***", conn_str))


def one_line(message: str) -> str:
    """A driver's message on one line (drivers break theirs over several): a user-facing error
    is one line, and the CLI prints only its first."""
    return " ".join(message.split())


def dialect_of(conn_str: str) -> Dialect:
    """The SQL dialect of the configured driver; unknown or missing drivers fail clearly."""
    driver = attribute(parse_connection_string(conn_str), "Driver")
    if not driver:
        raise SourceConfigError(
            f"the ODBC connection string names no Driver= ({redact(conn_str)!r}); use e.g. "
            "Driver=SQLite3, Driver={PostgreSQL Unicode} or Driver={ODBC Driver 18 for SQL Server}"
        )
    for fragment, dialect in _DRIVER_DIALECTS:
        if fragment in driver.lower():
            return dialect
    raise SourceConfigError(
        f"unsupported ODBC driver {driver!r}: supported are SQLite3, PostgreSQL (psqlODBC) and "
        "Microsoft ODBC Driver 18 for SQL Server"
    )


# PostgreSQL reads a naive literal against a timestamptz, and prints a timestamptz, in the
# session's zone (the server's, database's or role's default): our windows and times are UTC.
_UTC_SESSION = "SET TIME ZONE 'UTC'"


def in_utc(conn_str: str) -> str:
    """The connection string whose sessions keep UTC time: on PostgreSQL, psqlODBC's
    ConnSettings runs `SET TIME ZONE 'UTC'` after the user's own settings on every connect."""
    if dialect_of(conn_str) is not Dialect.POSTGRESQL:
        return conn_str
    attributes = parse_connection_string(conn_str)
    key = next((k for k in attributes if k.lower() in ("connsettings", "a6")), "ConnSettings")
    own = attributes.get(key, "").strip().rstrip(";")
    attributes[key] = f"{own};{_UTC_SESSION}" if own else _UTC_SESSION
    return ";".join(f"{k}={_value(v)}" for k, v in attributes.items())


def _value(value: str) -> str:
    """A value as a connection string writes it: braced where it holds ; { } or edge spaces."""
    if any(c in value for c in ";{}") or value != value.strip():
        return "{" + value.replace("}", "}}") + "}"
    return value


def ensure_driver_installed(conn_str: str) -> None:
    driver = attribute(parse_connection_string(conn_str), "Driver") or ""
    installed = pyodbc.drivers()
    if driver not in installed:
        hint = {
            Dialect.SQLITE: "apt-get install libsqliteodbc",
            Dialect.POSTGRESQL: "apt-get install odbc-postgresql",
            Dialect.TSQL: "install Microsoft's msodbcsql18 package",
        }[dialect_of(conn_str)]
        raise SourceConfigError(
            f"ODBC driver {driver!r} is not installed (installed: {', '.join(installed) or 'none'}"
            f"); {hint}, or run `make demo`, which installs the embedded default's driver"
        )


@contextmanager
def odbc_connect(conn_str: str, login_timeout_s: int = 5) -> Iterator[pyodbc.Connection]:
    """A pyodbc connection that is always closed; errors name the source but never its secrets."""
    dialect_of(conn_str)
    ensure_driver_installed(conn_str)
    try:
        conn = pyodbc.connect(in_utc(conn_str), timeout=login_timeout_s)
    except pyodbc.Error as exc:
        detail = redact(one_line(" ".join(str(a) for a in exc.args)))
        raise SourceUnavailableError(
            f"cannot connect to the source ({redact(conn_str)}): {detail}. Check that the server "
            "is running and reachable, and the credentials in SPOTIFY_SOURCE_ODBC."
        ) from None
    try:
        yield conn
    finally:
        conn.close()
