"""Arrow-native bulk reads from the source, typed exactly as the catalog declares.

Row-by-row pyodbc fetches run at 48k-112k rows/s; these paths read columnar batches:
- connectorx (Rust) where its URL form fits: SQLite and PostgreSQL;
- arrow-odbc over the configured ODBC connection string for everything else (SQL Server /
  Azure SQL), with the schema forced so no type is guessed (psqlODBC would turn float8 into
  float32, SQLite has no declared text sizes).
"""

from __future__ import annotations

from collections.abc import Iterator
from enum import StrEnum
from urllib.parse import quote

import pyarrow as pa
import pyodbc

from resources.odbc import (
    SourceConfigError,
    SourceUnavailableError,
    attribute,
    in_utc,
    odbc_connect,
    one_line,
    parse_connection_string,
    redact,
)
from resources.rust_log import quiet_rust_logs
from spotify_assets.bronze.dialects import DIALECTS, Dialect

# Text columns are bounded for arrow-odbc's buffers; SQLite declares no lengths.
_MAX_TEXT = 4000
# Rows a text read fetches at a time: its memory follows this, not the window.
_TEXT_BATCH_ROWS = 10_000


class ReaderKind(StrEnum):
    AUTO = "auto"
    CONNECTORX = "connectorx"
    ARROW_ODBC = "arrow-odbc"


def resolve_reader(kind: ReaderKind, dialect: Dialect) -> ReaderKind:
    if kind is not ReaderKind.AUTO:
        return kind
    return ReaderKind.CONNECTORX if dialect is not Dialect.TSQL else ReaderKind.ARROW_ODBC


def connectorx_url(conn_str: str, dialect: Dialect) -> str:
    """The connectorx URL equivalent to an ODBC connection string (SQLite, PostgreSQL)."""
    attrs = parse_connection_string(conn_str)
    if dialect is Dialect.SQLITE:
        return "sqlite://" + quote(attribute(attrs, "Database") or "", safe="/")
    if dialect is Dialect.POSTGRESQL:
        user = quote(attribute(attrs, "Uid", "User", "Username") or "", safe="")
        password = quote(attribute(attrs, "Pwd", "Password") or "", safe="")
        host = attribute(attrs, "Server", "Servername", "Host") or "localhost"
        port = attribute(attrs, "Port") or "5432"
        database = quote(attribute(attrs, "Database") or "", safe="")
        # The session in UTC, as `in_utc` sets the ODBC ones (a startup option of libpq's).
        return (
            f"postgresql://{user}:{password}@{host}:{port}/{database}?cxprotocol=binary"
            "&options=-c%20TimeZone%3DUTC"
        )
    raise SourceConfigError(f"connectorx cannot read {dialect} sources: use the arrow-odbc reader")


def read_arrow(
    conn_str: str,
    dialect: Dialect,
    query: str,
    schema: pa.Schema,
    reader: ReaderKind = ReaderKind.AUTO,
) -> Iterator[pa.RecordBatch]:
    """Run `query` and yield record batches cast to `schema`."""
    kind = resolve_reader(reader, dialect)
    try:
        if kind is ReaderKind.CONNECTORX:
            yield from _connectorx(conn_str, dialect, query, schema)
        else:
            yield from _arrow_odbc(conn_str, query, schema)
    except (SourceConfigError, SourceUnavailableError):
        raise
    except Exception as exc:
        raise SourceUnavailableError(
            f"reading the source ({redact(conn_str)}) with {kind} failed: "
            f"{redact(one_line(str(exc)))}\nquery:\n{query}"
        ) from None


def _connectorx(
    conn_str: str, dialect: Dialect, query: str, schema: pa.Schema
) -> Iterator[pa.RecordBatch]:
    quiet_rust_logs()
    import connectorx

    table = connectorx.read_sql(connectorx_url(conn_str, dialect), query, return_type="arrow")
    yield from conform(table, schema).to_batches()


def _arrow_odbc(conn_str: str, query: str, schema: pa.Schema) -> Iterator[pa.RecordBatch]:
    from arrow_odbc import read_arrow_batches_from_odbc

    batches = read_arrow_batches_from_odbc(
        query=query, connection_string=in_utc(conn_str), schema=schema, max_text_size=_MAX_TEXT
    )
    for batch in batches:
        yield conform(pa.Table.from_batches([batch]), schema).combine_chunks().to_batches()[0]


def read_as_text(conn_str: str, dialect: Dialect, query: str, schema: pa.Schema) -> pa.Table:
    """The rows of `query`, each string column of `schema` as the source's text of its values:
    a read no value can fail. SQL Server's texts have declared lengths, which size arrow-odbc's
    buffers; SQLite's and PostgreSQL's have none (a text over the buffer stopped the read), so
    there pyodbc fetches them, whatever their length. SQLite's come as the bytes it holds
    (binary columns), which need not be UTF-8."""
    if dialect is Dialect.TSQL:
        batches = read_arrow(conn_str, dialect, query, schema, ReaderKind.ARROW_ODBC)
        return pa.Table.from_batches(list(batches), schema=schema)
    text = [f.name for f in schema if pa.types.is_string(f.type)]
    if DIALECTS[dialect].text_as_bytes:
        schema = pa.schema(pa.field(f.name, pa.binary()) if f.name in text else f for f in schema)
    batches = []
    with odbc_connect(conn_str) as conn:
        try:
            cursor = conn.cursor()
            cursor.execute(DIALECTS[dialect].as_text(query, schema.names, text))
            while rows := cursor.fetchmany(_TEXT_BATCH_ROWS):
                values = zip(*rows, strict=True)
                arrays = [_array(v, f.type) for v, f in zip(values, schema, strict=True)]
                batches.append(pa.record_batch(arrays, schema=schema))
        except pyodbc.Error as exc:
            raise SourceUnavailableError(
                f"reading the source ({redact(conn_str)}) as text failed: "
                f"{redact(one_line(str(exc)))}\nquery:\n{query}"
            ) from None
    return pa.Table.from_batches(batches, schema=schema)


def _array(values: tuple, to: pa.DataType) -> pa.Array:
    return pa.array(values, to) if pa.types.is_binary(to) else pa.array(values).cast(to)


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Select and cast the columns of `schema`, by name; a missing column is an error."""
    missing = [f.name for f in schema if f.name not in table.column_names]
    if missing:
        raise SourceConfigError(f"the source returned no column(s) {', '.join(missing)}")
    columns = [table[f.name].cast(f.type) for f in schema]
    return pa.Table.from_arrays(columns, schema=schema)
