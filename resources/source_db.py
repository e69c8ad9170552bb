"""The source system: an operational SQL database reached through ODBC.

`SourceDatabase` is its configuration and connections (in Dagster, `SourceResource`).
`SourceSession` holds one open DB-API connection and the catalog-driven operations on it: create
the schema with its change capture, bulk-load rows, apply simulated change batches, read the
simulator's state, and report statistics. The same code serves SQLite, PostgreSQL and SQL
Server; only `SqlDialect` differs.
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import date, datetime, time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyodbc
from pydantic import BaseModel, Field

from resources.odbc import (
    SourceConfigError,
    SourceUnavailableError,
    attribute,
    dialect_of,
    odbc_connect,
    one_line,
    parse_connection_string,
    redact,
)
from spotify_assets.bronze.dialects import (
    CLOCK_COLUMN,
    CLOCK_TABLE,
    DIALECTS,
    META_TABLE,
    Dialect,
    SqlDialect,
)
from spotify_assets.bronze.windows import as_date
from spotify_assets.catalog.tables import (
    CHANGE_SEQ,
    CaptureMode,
    Catalog,
    ColumnType,
    Table,
    TableRole,
    configured_catalog,
)
from spotify_assets.source.generator import InitialData
from spotify_assets.source.schema import (
    SourceSchemaError,
    compare_columns,
    table_spelled_otherwise,
)
from spotify_assets.source.simulator import ChangeBatch, SourceState

# PostgreSQL's SQLSTATE for "cannot drop table … because other objects depend on it", and the
# driver message's part naming those objects.
_DEPENDENT_OBJECTS = "2BP01"
_DETAIL = re.compile(r"DETAIL:\s*(.*?);?\s*(?:\nError while|$)", re.S)

# What Python's sqlite3 raises on a text that is not UTF-8 (SQLite keeps any bytes).
_NOT_UTF8 = re.compile(r"Could not decode to UTF-8 column ('[^']*')")

# Servers cap bound parameters per statement (SQL Server: 2100) and rows per VALUES list (1000).
_MAX_PARAMS = 2000
_MAX_VALUES_ROWS = 1000


def sqlite_connection_string(path: Path) -> str:
    """The embedded default: a SQLite file through the SQLite3 ODBC driver."""
    # The SQLite driver takes Database= verbatim (no {} quoting), so ';' cannot be escaped.
    if any(c in str(path) for c in ";{}"):
        raise SourceConfigError(f"the SQLite source path may not contain ';', '{{' or '}}': {path}")
    # Timeout is the driver's busy timeout (ms): readers wait for a simulator commit, never fail.
    return f"Driver=SQLite3;Database={path};Timeout=30000"


class SourceDatabase(BaseModel):
    """The operational database the lakehouse ingests from (SQLite, PostgreSQL or Azure SQL); in
    Dagster, `SourceResource`."""

    connection_string: str = Field(
        description="ODBC connection string; secrets are redacted from every message and log."
    )
    capture_modes: str = Field(
        default="",
        description="Overrides of the catalog's capture modes, e.g. 'DimUser=watermark'.",
    )
    partition_start: str = Field(
        default="",
        description="First daily partition, YYYY-MM-DD (SPOTIFY_PARTITION_START, or what "
        "`source init` recorded); empty where only the source is administered.",
    )
    login_timeout_s: int = Field(default=5, description="Seconds to wait for a login.")

    @property
    def dialect(self) -> Dialect:
        return dialect_of(self.connection_string)

    @property
    def catalog(self) -> Catalog:
        start = date.fromisoformat(self.partition_start) if self.partition_start else None
        return configured_catalog(self.capture_modes, start)

    @contextmanager
    def connect(self) -> Iterator[Any]:
        """A pyodbc connection: the path every pipeline read takes."""
        with odbc_connect(self.connection_string, self.login_timeout_s) as conn:
            yield conn

    @contextmanager
    def session(self) -> Iterator[SourceSession]:
        """A session for administering the source (create, bulk load, simulate, stats).

        SQLite is embedded, so its session uses the engine in-process on the same file (the bulk
        path); servers are administered through the same ODBC connection as the pipeline.
        """
        if self.dialect is Dialect.SQLITE:
            conn = sqlite3.connect(self.sqlite_path(), isolation_level=None, timeout=30)
            try:
                yield SourceSession(conn, DIALECTS[Dialect.SQLITE], self.catalog)
            finally:
                conn.close()
        else:
            with self.connect() as conn:
                yield self.session_on(conn)

    def session_on(self, conn: Any) -> SourceSession:
        """A session over an open pyodbc connection (from `connect`), in autocommit mode."""
        conn.autocommit = True
        return SourceSession(conn, DIALECTS[self.dialect], self.catalog)

    def sqlite_path(self) -> Path:
        database = attribute(parse_connection_string(self.connection_string), "Database")
        if not database:
            raise SourceConfigError("a SQLite ODBC connection string needs Database=<file path>")
        return Path(database)

    def exists(self) -> bool:
        """Whether the source has been initialised (it holds the catalog's tables)."""
        if self.dialect is Dialect.SQLITE and not self.sqlite_path().exists():
            return False
        try:
            with self.session() as session:
                return session.is_initialised()
        except (sqlite3.Error, pyodbc.Error) as error:
            advice = (
                "Another process holds it (a long write, a sqlite3 shell): run again once it "
                "lets go"
                if "database is locked" in str(error)
                else "Check that it is the database `source init` created."
            )
            raise SourceUnavailableError(
                f"cannot read the source ({redact(self.connection_string)}): "
                f"{redact(one_line(str(error)))}. {advice}"
            ) from error

    def generated(self) -> bool:
        """Whether `source init` made it: it set the simulated clock, which a user's own tables
        prepared by `source attach` leave empty."""
        if not self.exists():
            return False
        with self.session() as session:
            return session.clock() is not None

    def holds_own_tables(self) -> bool:
        """Whether it holds tables of the catalog that `source init` did not make: a user's
        rows, which no command may drop unasked."""
        return self.holds_catalog_table() and not self.generated()

    def require_initialised(self) -> None:
        if not self.exists():
            if self.holds_catalog_table():
                raise SourceUnavailableError(
                    "the source holds the catalog's tables but not the pipeline's clock and "
                    "settings tables: run `spotify-lakehouse source attach` once (README "
                    '"Your own source")'
                )
            if self.dialect is Dialect.SQLITE:
                home = "SPOTIFY_HOME defaults to ./.data of the current directory"
                looked = f"{self.sqlite_path()}; {home}"
            else:
                with self.session() as session:
                    where = session.outside_search_path([t.name for t in self.catalog])
                if where:
                    raise SourceUnavailableError(f"the source's tables are {where}")
                looked = f"{redact(self.connection_string)}, set by SPOTIFY_SOURCE_ODBC"
            raise SourceUnavailableError(
                f"the source holds no Spotify tables yet (looked in {looked}): run "
                "`spotify-lakehouse source init`"
            )

    def holds_catalog_table(self) -> bool:
        """Whether any table of the catalog exists (made by `source init` or by a user)."""
        if self.dialect is Dialect.SQLITE and not self.sqlite_path().exists():
            return False  # connecting would create the file
        with self.session() as session:
            return any(session.query(session.sql.columns_query(t.name)) for t in self.catalog)


class SourceSession:
    """Catalog-driven operations on one open DB-API connection (qmark parameters, autocommit)."""

    def __init__(self, conn: Any, sql: SqlDialect, catalog: Catalog) -> None:
        self.conn = conn
        self.sql = sql
        self.catalog = catalog

    # --- schema ---

    def is_initialised(self) -> bool:
        """Whether the settings table exists (a catalog read: any error is a real one)."""
        return bool(self.query(self.sql.columns_query(META_TABLE)))

    def attach(self) -> dict[str, list[str]]:
        """Prepare tables a user created and filled for the pipeline: check their columns against
        the catalog, then add what `source init` adds around its load, the clock and settings
        tables and the change capture of the tables in cdc mode. Existing rows are the snapshot
        an initial load copies. Returns the change tables it added and those whose triggers it
        replaced (made by an older version); run again, it changes nothing."""
        if self.sql.dialect is Dialect.TSQL:
            raise SourceConfigError(
                "source attach: SQL Server records changes by its native CDC: enable it with "
                "sys.sp_cdc_enable_db and sys.sp_cdc_enable_table on each cdc-mode table"
            )
        for table in self.catalog:
            compare_columns(table, self.columns_of(table), exact_case=self.sql.exact_case_engine)
        added: list[str] = []
        updated: list[str] = []
        with self.transaction():
            if not self.is_initialised():
                for statement in self.sql.support_tables():
                    self.execute(statement)
                added += [CLOCK_TABLE, META_TABLE]
            recorded = self.meta()
            for table in self.catalog:
                if table.mode is not CaptureMode.CDC:
                    continue
                if not self.query(self.sql.columns_query(table.change_table)):
                    # The image in the source's own types: the triggers then never fail the
                    # user's writes (a key as text), and copies read both tables alike.
                    types = dict(self.query(self.sql.column_types_query(table.name)))
                    for statement in self.sql.change_capture(table, types):
                        self.execute(statement)
                    added.append(table.change_table)
                elif recorded.get(_capture_version(table)) != self._capture_fingerprint(table):
                    # Only our triggers, by name: the user's own on the table stay.
                    for statement in self.sql.drop_capture_triggers(table):
                        self.execute(statement)
                    for statement in self.sql.capture_triggers(table):
                        self.execute(statement)
                    updated.append(table.change_table)
                else:
                    continue
                self._record_capture(table)
        return {"added": added, "updated": updated}

    def _capture_fingerprint(self, table: Table) -> str:
        """What identifies the triggers this version makes for `table`: `attach` replaces
        triggers recorded with another one (or none, made before it was recorded)."""
        triggers = "\n".join(self.sql.capture_triggers(table))
        return hashlib.sha256(triggers.encode()).hexdigest()

    def _record_capture(self, table: Table) -> None:
        self.set_meta({_capture_version(table): self._capture_fingerprint(table)})

    def columns_of(self, table: Table) -> list[str]:
        """The source's columns of `table` (none: no such table). A table whose name differs
        in case only, where the engine tells case apart (`factstream`, created unquoted on
        PostgreSQL), is named in one line with the rename."""
        found = [name for (name,) in self.query(self.sql.columns_query(table.name))]
        engine = self.sql.exact_case_engine
        if not found and engine and (spellings := self.query(self.sql.spellings_query(table.name))):
            raise table_spelled_otherwise(table, spellings[0][0], engine)
        if not found and (where := self.outside_search_path([table.name])):
            raise SourceSchemaError(f"{table.name}: the source's table is {where}")
        return found

    def outside_search_path(self, names: Sequence[str]) -> str | None:
        """Where tables named `names` are only in schemas the connection does not search
        (PostgreSQL): where they are, and the setting that reaches them."""
        if self.sql.dialect is not Dialect.POSTGRESQL:
            return None
        rows = self.query(self.sql.schemas_holding_query(names))
        if not rows:
            return None
        schemas = [schema for schema, _, _ in rows]
        _, current, user = rows[0]
        return (
            f"in schema {', '.join(schemas)}, not on the connection's search_path "
            f"({current or 'no schema of it exists'}): add ConnSettings={{SET search_path TO "
            f"{schemas[0]}}} to SPOTIFY_SOURCE_ODBC, or run ALTER ROLE {user} SET search_path TO "
            f"{schemas[0]}"
        )

    def drop_all(self) -> None:
        """Drops what `source init` made, all or nothing: an object of the user's depending on
        one of those tables (a view) stops it, named in one line."""
        try:
            with self.transaction():
                for statement in self.sql.drop_schema(list(self.catalog)):
                    self.execute(statement)
        except pyodbc.Error as error:
            if error.args[0] != _DEPENDENT_OBJECTS:
                raise
            message = str(error.args[-1])
            detail = _DETAIL.search(message)
            depends = "; ".join(detail.group(1).split("\n")) if detail else one_line(message)
            raise SourceConfigError(
                f"cannot drop the source's tables: {depends}: drop it first (and create it "
                "again after `source init`); nothing was dropped"
            ) from None

    def create_schema(self) -> None:
        """Tables without indexes or capture: `finish_schema` adds those after the bulk load."""
        with self.transaction():
            for statement in self.sql.support_tables():
                self.execute(statement)
            for table in self.catalog:
                self.execute(self.sql.create_table(table))

    def finish_schema(self) -> None:
        """Indexes and change capture, created after the bulk load so it is not captured."""
        for statement in self.sql.index_build_settings():
            self.execute(statement)
        with self.transaction():
            for table in self.catalog:
                for statement in self.sql.create_indexes(table):
                    self.execute(statement)
                if table.mode is CaptureMode.CDC:
                    for statement in self.sql.change_capture(table):
                        self.execute(statement)
                    self._record_capture(table)

    # --- writes ---

    def bulk_insert(self, table: Table, rows: pa.Table) -> int:
        """Insert an Arrow table in as few round trips as the engine allows."""
        rows = rows.select(list(table.column_names))
        values = _python_rows(rows, text_temporal=self.sql.dialect is Dialect.SQLITE)
        if self.sql.dialect is Dialect.SQLITE:
            self.conn.executemany(self.sql.insert(table.name, table.column_names), values)
            return rows.num_rows
        per_statement = max(1, min(_MAX_VALUES_ROWS, _MAX_PARAMS // len(table.column_names)))
        cursor = self.conn.cursor()
        for start in range(0, len(values), per_statement):
            chunk = values[start : start + per_statement]
            statement = self.sql.insert(table.name, table.column_names, rows=len(chunk))
            cursor.execute(statement, [v for row in chunk for v in row])
        return rows.num_rows

    def apply_updates(self, table: Table, rows: pa.Table) -> int:
        others = [c for c in table.column_names if c not in table.key]
        ordered = rows.select([*others, *table.key])
        values = _python_rows(ordered, text_temporal=self.sql.dialect is Dialect.SQLITE)
        self._executemany(self.sql.update(table), values)
        return rows.num_rows

    def apply_deletes(self, table: Table, keys: pa.Array) -> int:
        self._executemany(self.sql.delete(table), [(k,) for k in keys.to_pylist()])
        return len(keys)

    def set_clock(self, at: datetime) -> None:
        *clear, insert = self.sql.set_clock()
        for statement in clear:
            self.execute(statement)
        self.execute(insert, [self._temporal(at)])

    def set_meta(self, values: dict[str, object]) -> None:
        for name, value in values.items():
            self.execute(self.sql.delete_meta(), [name])
            self.execute(self.sql.insert(META_TABLE, ("name", "value")), [name, str(value)])

    def load_initial(
        self,
        data: InitialData,
        meta: dict[str, object],
        on_rows: Callable[[int], None] = lambda n: None,
    ) -> int:
        """Create the schema and bulk-load a generated source in one transaction.

        Change capture is switched on only after the load: the initial rows are the snapshot that
        bronze's initial load copies, not changes.
        """
        self.create_schema()
        loaded = 0
        with self.transaction():
            for name, rows in data.dims.items():
                loaded += self.bulk_insert(self.catalog[name], rows)
                on_rows(rows.num_rows)
            (fact,) = self.catalog.by_role(TableRole.FACT)
            for batch in data.stream_batches():
                loaded += self.bulk_insert(fact, batch)
                on_rows(batch.num_rows)
            self.set_clock(datetime.combine(data.end, time()))
            self.set_meta(meta)
            self.set_meta({_next_id(t.name): n for t, n in self._next_ids_of(data).items()})
        self.finish_schema()
        return loaded

    def _next_ids_of(self, data: InitialData) -> dict[Table, int]:
        ids = {
            self.catalog[name]: _max_key(self.catalog[name], rows) + 1
            for name, rows in data.dims.items()
            if name in self._keyed_tables()
        }
        (fact,) = self.catalog.by_role(TableRole.FACT)
        ids[fact] = data.shape.streams + 1
        return ids

    def apply(
        self,
        batches: Iterable[ChangeBatch],
        on_batch: Callable[[ChangeBatch], None] = lambda b: None,
    ) -> int:
        """Apply simulator change batches, each in one transaction.

        The changes are stamped with the clock as it was (the slice start) and the clock moves
        to the slice end in the same commit: whoever reads the clock sees every change stamped
        before it, so the copy can use it as its upper bound with no lag.
        """
        applied = 0
        for batch in batches:
            with self.transaction():
                self.apply_batch(batch)
            applied += batch.row_count()
            on_batch(batch)
        return applied

    def apply_batch(self, batch: ChangeBatch) -> None:
        """One batch's changes, then the clock; the caller holds the transaction."""
        for name, rows in batch.inserts.items():
            table = self.catalog[name]
            self.bulk_insert(table, rows)
            if name in self._keyed_tables():
                self._raise_next_id(table, _max_key(table, rows) + 1)
        for name, rows in batch.updates.items():
            self.apply_updates(self.catalog[name], rows)
        for name, keys in batch.deletes.items():
            self.apply_deletes(self.catalog[name], keys)
        self.set_clock(batch.at)

    def _keyed_tables(self) -> set[str]:
        """Tables whose keys the simulator allocates (and must never reuse)."""
        return {t.name for t in self.catalog if t.role is not TableRole.CALENDAR}

    def _raise_next_id(self, table: Table, candidate: int) -> None:
        current = int(self.meta().get(_next_id(table.name), 1))
        if candidate > current:
            self.set_meta({_next_id(table.name): candidate})

    def read_state(self) -> SourceState:
        """What the simulator needs to continue from the source's current content."""
        clock = self.clock()
        if clock is None:
            raise SourceConfigError(
                "source simulate: the source has no simulated clock (source_clock is empty: "
                "`source init` did not create it): it simulates only a source `source init` made"
            )
        meta = self.meta()
        dims = {t.name: self._dimension_state(t) for t in self.catalog.by_role(TableRole.DIMENSION)}
        (calendar,) = self.catalog.by_role(TableRole.CALENDAR)
        day = next(c for c in calendar.columns if c.type is ColumnType.DATE)
        first_day, last_day = self.query(self.sql.range_of(calendar.name, day.name))[0]
        return SourceState(
            clock=clock,
            dims=dims,
            next_ids={name: self._next_free_id(name, meta) for name in self._keyed_tables()},
            date_keys_until=as_date(last_day),
            date_keys_from=as_date(first_day),
        )

    def _dimension_state(self, table: Table) -> pa.Table:
        try:
            return self.read_table(table)
        except sqlite3.OperationalError as error:
            undecodable = _NOT_UTF8.search(str(error))
            if not undecodable:
                raise
            raise SourceConfigError(
                f"source simulate: {table.name} holds text that is not UTF-8 (column "
                f"{undecodable.group(1)}), which the simulator cannot rewrite: correct it in the "
                "source"
            ) from None

    def _next_free_id(self, name: str, meta: dict[str, str]) -> int:
        """The table's key counter, or past its largest key where rows were added by hand: the
        simulator never allocates a key twice."""
        (key,) = self.catalog[name].key
        ((_, largest),) = self.query(self.sql.range_of(name, key))
        return max(int(meta[_next_id(name)]), int(largest or 0) + 1)

    # --- reads ---

    def meta(self) -> dict[str, str]:
        rows = self.query(self.sql.select_meta())
        return {name: value for name, value in rows}

    def clock(self) -> datetime | None:
        """The simulated clock; None on a source `source attach` prepared (no simulation)."""
        value = self.scalar(self.sql.max_of(CLOCK_TABLE, CLOCK_COLUMN))
        if value is None:
            return None
        return value if isinstance(value, datetime) else datetime.fromisoformat(value)

    def read_table(self, table: Table) -> pa.Table:
        """All rows of a table, typed as the catalog declares."""
        rows = self.query(self.sql.select(table))
        columns = list(zip(*rows, strict=True)) if rows else [[] for _ in table.columns]
        arrays = [
            _typed_array(list(values), column.type)
            for values, column in zip(columns, table.columns, strict=True)
        ]
        return pa.Table.from_arrays(arrays, schema=table.arrow_schema)

    def table_stats(self, table: Table) -> dict[str, object]:
        stats: dict[str, object] = {
            "mode": table.mode.value,
            "rows": self.scalar(self.sql.count(table.name)),
        }
        if table.cdc_column:
            stats[f"max_{table.cdc_column}"] = _jsonable(
                self.scalar(self.sql.max_of(table.name, table.cdc_column))
            )
        if table.mode is CaptureMode.CDC and self.sql.dialect is not Dialect.TSQL:
            stats["change_rows"] = self.scalar(self.sql.count(table.change_table))
            stats["max_change_seq"] = self.scalar(self.sql.max_of(table.change_table, CHANGE_SEQ))
        return stats

    def stats(self) -> dict[str, object]:
        return {
            "dialect": self.sql.dialect.value,
            "clock": _jsonable(self.clock()),
            "meta": self.meta(),
            "tables": {t.name: self.table_stats(t) for t in self.catalog},
        }

    # --- plumbing ---

    def execute(self, statement: str, params: Sequence[object] = ()) -> None:
        cursor = self.conn.cursor()
        try:
            cursor.execute(statement, list(params))
        finally:
            cursor.close()

    def _executemany(self, statement: str, rows: list[tuple]) -> None:
        if not rows:
            return
        cursor = self.conn.cursor()
        try:
            cursor.executemany(statement, rows)
        finally:
            cursor.close()

    def query(self, statement: str, params: Sequence[object] = ()) -> list[tuple]:
        cursor = self.conn.cursor()
        try:
            cursor.execute(statement, list(params))
            return [tuple(row) for row in cursor.fetchall()]
        finally:
            cursor.close()

    def scalar(self, statement: str, params: Sequence[object] = ()) -> Any:
        rows = self.query(statement, params)
        return rows[0][0] if rows else None

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """All-or-nothing: a crash or error mid-way leaves the source as it was."""
        self.execute(self.sql.begin())
        try:
            yield
        except BaseException:
            self.execute("ROLLBACK")
            raise
        self.execute("COMMIT")

    def _temporal(self, value: datetime | date) -> object:
        if self.sql.dialect is Dialect.SQLITE:
            return _python_rows(pa.table({"v": [value]}), text_temporal=True)[0][0]
        return value


def _next_id(table_name: str) -> str:
    return f"next_id:{table_name}"


def _capture_version(table: Table) -> str:
    return f"capture:{table.name}"


def _max_key(table: Table, rows: pa.Table) -> int:
    (key,) = table.key
    return int(pc.max(rows[key]).as_py() or 0)


def _python_rows(rows: pa.Table, text_temporal: bool) -> list[tuple]:
    """Arrow columns to row tuples.

    SQLite stores temporal values as text, compared as text: they are written exactly as its
    ODBC driver writes bound values ('YYYY-MM-DD' and 'YYYY-MM-DD HH:MM:SS.fff').
    """
    columns = []
    for column in rows.columns:
        if text_temporal and pa.types.is_timestamp(column.type):
            column = pc.cast(pc.cast(column, pa.timestamp("ms"), safe=False), pa.string())
        elif text_temporal and pa.types.is_date(column.type):
            column = pc.cast(column, pa.string())
        columns.append(column.to_pylist())
    return list(zip(*columns, strict=True))


def _typed_array(values: list, column_type: ColumnType) -> pa.Array:
    if column_type in (ColumnType.DATE, ColumnType.TIMESTAMP) and any(
        isinstance(v, str) for v in values
    ):
        return pc.cast(pa.array(values, pa.string()), column_type.arrow)
    return pa.array(values, column_type.arrow)


def _jsonable(value: object) -> object:
    return value.isoformat(sep=" ") if isinstance(value, datetime) else value
