"""SQL text per source dialect, generated from the catalog: DDL, change capture, DML templates.

Identifiers come only from the catalog (validated there) and are quoted here; values are always
bound parameters (`?`) or typed literals.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from enum import StrEnum
from itertools import islice
from types import MappingProxyType
from typing import ClassVar

from spotify_assets.bronze.windows import Window, midnight
from spotify_assets.catalog.tables import (
    CHANGE_AT,
    CHANGE_OP,
    CHANGE_SEQ,
    CaptureMode,
    Column,
    ColumnType,
    Table,
    validate_identifier,
)

# The text SQLite stores timestamps as (the driver's): what windows compare after normalising.
_SQLITE_TIME = "%Y-%m-%d %H:%M:%f"
_DAY = timedelta(days=1)
# SQLite joins at most 500 SELECTs in one compound SELECT (SQLITE_MAX_COMPOUND_SELECT).
_SQLITE_PROFILE_DAYS = 400
CLOCK_TABLE = "source_clock"
CLOCK_COLUMN = "now_utc"
META_TABLE = "source_meta"
# A change table's row image in the catalog's types (`source init`'s own tables).
CATALOG_TYPES: Mapping[str, str] = MappingProxyType({})
TSQL_SCHEMA = "dbo"


class Dialect(StrEnum):
    SQLITE = "sqlite"
    POSTGRESQL = "postgresql"
    TSQL = "tsql"


class SqlDialect(ABC):
    """Base: ANSI-quoted identifiers; subclasses add the per-engine parts."""

    dialect: Dialect
    # The engine's name where a quoted name matches with its case only ("User_Id" is not
    # user_id): the catalog's spelling is then the only one its queries and triggers can use.
    exact_case_engine: ClassVar[str | None] = None

    def quote(self, name: str) -> str:
        return f'"{validate_identifier(name)}"'

    @abstractmethod
    def column_type(self, column: Column) -> str: ...

    def qualified(self, name: str) -> str:
        return self.quote(name)

    def column_list(self, names: tuple[str, ...] | list[str]) -> str:
        return ", ".join(self.quote(n) for n in names)

    def column_definition(self, column: Column) -> str:
        null = "" if column.nullable else " NOT NULL"
        return f"{self.quote(column.name)} {self.column_type(column)}{null}"

    def create_table(self, table: Table) -> str:
        columns = [self.column_definition(c) for c in table.columns]
        columns.append(f"PRIMARY KEY ({self.column_list(table.key)})")
        return f"CREATE TABLE {self.qualified(table.name)} (\n  " + ",\n  ".join(columns) + "\n)"

    def create_indexes(self, table: Table) -> list[str]:
        if table.cdc_column is None:
            return []
        index = validate_identifier(f"ix_{table.name}_{table.cdc_column}")
        return [
            f"CREATE INDEX {self.quote(index)} ON {self.qualified(table.name)} "
            f"({self.quote(table.cdc_column)})"
        ]

    def index_build_settings(self) -> list[str]:
        """Session settings for building indexes over a bulk-loaded table."""
        return []

    def support_tables(self) -> list[str]:
        """The simulated clock read by the change triggers, and key/value metadata."""
        return [
            f"CREATE TABLE {self.qualified(CLOCK_TABLE)} "
            f"({self.quote(CLOCK_COLUMN)} {self.timestamp_type} NOT NULL)",
            f"CREATE TABLE {self.qualified(META_TABLE)} ("
            f"{self.quote('name')} VARCHAR(100) NOT NULL PRIMARY KEY, "
            f"{self.quote('value')} VARCHAR(400) NOT NULL)",
        ]

    timestamp_type = "TIMESTAMP"

    @abstractmethod
    def change_capture(
        self, table: Table, image_types: Mapping[str, str] = CATALOG_TYPES
    ) -> list[str]:
        """Objects that record every insert, update and delete of `table`; the row image takes
        the types of `image_types` (a column's name: its type in the source), else the
        catalog's."""

    @abstractmethod
    def capture_triggers(self, table: Table) -> list[str]:
        """The triggers that fill `table`'s change table (`change_capture`'s last statements):
        what `source attach` replaces where an older version made them."""

    @abstractmethod
    def drop_capture_triggers(self, table: Table) -> list[str]:
        """Drops `capture_triggers`' objects by their names, and nothing else of the table."""

    def column_types_query(self, name: str) -> str:
        """Each column of table `name` and its declared type, one per row."""
        raise NotImplementedError(f"{self.dialect}: change capture is the engine's own")

    def schemas_holding_query(self, names: Sequence[str]) -> str:
        """The schemas other than the connection's holding a table named as one of `names`,
        one per row, each with the connection's schema and user."""
        raise NotImplementedError(f"{self.dialect}: tables are found in one schema")

    def change_table(
        self, table: Table, sequence: str, op_type: str, image_types: Mapping[str, str]
    ) -> list[str]:
        """A trigger-maintained change table: sequence, op, change time, then the row image."""
        image = [
            f"{self.quote(c.name)} {image_types.get(c.name) or self.column_type(c)}"
            for c in table.columns
        ]
        op = self.quote(CHANGE_OP)
        return [
            f"CREATE TABLE {self.qualified(table.change_table)} (\n"
            f"  {self.quote(CHANGE_SEQ)} {sequence},\n"
            f"  {op} {op_type} NOT NULL CHECK ({op} IN ('I', 'U', 'D')),\n"
            f"  {self.quote(CHANGE_AT)} TIMESTAMP NOT NULL,\n  " + ",\n  ".join(image) + "\n)",
            f"CREATE INDEX {self.quote(table.change_table + '_at')} "
            f"ON {self.qualified(table.change_table)} ({self.quote(CHANGE_AT)})",
        ]

    def key_changed(self, table: Table) -> str:
        """Whether an update trigger's row changed its key (key columns are NOT NULL)."""
        return " OR ".join(f"OLD.{self.quote(k)} <> NEW.{self.quote(k)}" for k in table.key)

    # --- DML templates (bound parameters) ---

    def insert(self, table: str, columns: tuple[str, ...], rows: int = 1) -> str:
        one = "(" + ", ".join("?" for _ in columns) + ")"
        return (
            f"INSERT INTO {self.qualified(table)} ({self.column_list(columns)}) VALUES "
            + ", ".join(one for _ in range(rows))
        )

    def update(self, table: Table) -> str:
        sets = ", ".join(f"{self.quote(c)} = ?" for c in table.column_names if c not in table.key)
        return f"UPDATE {self.qualified(table.name)} SET {sets} WHERE {self._key_match(table)}"

    def delete(self, table: Table) -> str:
        return f"DELETE FROM {self.qualified(table.name)} WHERE {self._key_match(table)}"

    def _key_match(self, table: Table) -> str:
        return " AND ".join(f"{self.quote(k)} = ?" for k in table.key)

    def select(self, table: Table) -> str:
        return f"SELECT {self.column_list(table.column_names)} FROM {self.qualified(table.name)}"

    def count(self, table: str) -> str:
        return f"SELECT COUNT(*) FROM {self.qualified(table)}"

    def max_of(self, table: str, column: str) -> str:
        return f"SELECT MAX({self.quote(column)}) FROM {self.qualified(table)}"

    def range_of(self, table: str, column: str) -> str:
        column = self.quote(column)
        return f"SELECT MIN({column}), MAX({column}) FROM {self.qualified(table)}"

    def select_meta(self) -> str:
        return f"SELECT name, value FROM {self.qualified(META_TABLE)}"

    def delete_meta(self) -> str:
        """Deletes the one setting bound as its name."""
        return f"DELETE FROM {self.qualified(META_TABLE)} WHERE name = ?"

    def begin(self) -> str:
        return "BEGIN"

    def drop_schema(self, tables: Sequence[Table]) -> list[str]:
        """Drops everything `source init` creates: the catalog's tables, their change capture,
        the clock and the settings."""
        names = [t.name for t in tables] + [CLOCK_TABLE, META_TABLE] + self._change_tables(tables)
        return [f"DROP TABLE IF EXISTS {self.qualified(name)}" for name in names]

    def _change_tables(self, tables: Sequence[Table]) -> list[str]:
        return [t.change_table for t in tables]

    def set_clock(self) -> list[str]:
        """Statements (one bound timestamp in the last) that set the simulated clock."""
        return [
            f"DELETE FROM {self.qualified(CLOCK_TABLE)}",
            f"INSERT INTO {self.qualified(CLOCK_TABLE)} ({self.quote(CLOCK_COLUMN)}) VALUES (?)",
        ]

    @abstractmethod
    def timestamp_literal(self, value: datetime) -> str:
        """A typed timestamp literal (ADF pipelines interpolate the same text)."""

    @abstractmethod
    def server_now(self) -> str:
        """The server's current UTC time, as an expression."""

    def simulated_clock(self) -> str:
        """The simulated clock (NULL where none is set), as an expression."""
        return f"(SELECT MAX({self.quote(CLOCK_COLUMN)}) FROM {self.qualified(CLOCK_TABLE)})"

    def clock_expression(self) -> str:
        """What change capture stamps changes with: the simulated clock where one is set."""
        return f"COALESCE({self.simulated_clock()}, {self.server_now()})"

    def source_now(self) -> str:
        """One row: the simulated clock (or NULL) and the server's UTC time."""
        return f"SELECT {self.simulated_clock()}, {self.server_now()}"

    def _within(self, column: str, window: Window) -> str:
        return (
            f"{self.quote(column)} >= {self.timestamp_literal(window.start)} AND "
            f"{self.quote(column)} < {self.timestamp_literal(window.end)}"
        )

    def day_of(self, column: str) -> str:
        return f"CAST({self.quote(column)} AS DATE)"

    def daily_profile_query(self, table: Table, window: Window) -> str:
        """Per day of change time in `window`: rows and a checksum, for reconciliation (§7).

        watermark: the table's rows, checksum the sum of the key. cdc: the change records,
        checksum the sum of their sequence numbers (a record missed or copied twice shows).
        Summed as a number whatever the source's type: a user's own table may keep its key as
        text, which bronze types by the catalog."""
        source, time, checksum = self._profiled(table)
        day = self.day_of(time)
        total = f"SUM(CAST({self.quote(checksum)} AS DECIMAL(38, 0)))"
        return (
            f"SELECT {day}, COUNT(*), {total} FROM {self.qualified(source)} "
            f"WHERE {self._within(time, window)} GROUP BY {day}"
        )

    def extract_profile_queries(self, table: Table, window: Window) -> list[str]:
        """Profiles (`daily_profile_query`'s columns) whose rows per day of change time add up
        to what `extract_query(table, window)` reads: watermark, the rows; cdc, the change
        records and the current images, which are the rows a watermark extraction reads."""
        if table.mode is CaptureMode.CDC:
            images = replace(table, mode=CaptureMode.WATERMARK)
            return [
                self.daily_profile_query(table, window),
                self.daily_profile_query(images, window),
            ]
        return [self.daily_profile_query(table, window)]

    def _profiled(self, table: Table) -> tuple[str, str, str]:
        """What `daily_profile_query` reads: the rows, their change time and their checksum."""
        if table.mode is CaptureMode.WATERMARK:
            assert table.cdc_column is not None
            (key,) = table.key
            return table.name, table.cdc_column, key
        if table.mode is CaptureMode.CDC:
            return table.change_table, CHANGE_AT, CHANGE_SEQ
        raise ValueError(f"{table.name}: snapshots have no change time to reconcile by")

    def extract_query(
        self, table: Table, window: Window | None, carried: tuple[str, ...] = ()
    ) -> str:
        """The bounded copy query of `table` for a window of change time (README: Bronze ingestion).

        snapshot: the whole table. watermark: rows whose cdc column is in the window. cdc: the
        change records of the window plus the current images whose cdc column is in it (op 'S',
        no sequence), in one statement so both parts come from one consistent read. The images
        carry rows that no change record describes: those loaded before capture was enabled, or
        whose records were pruned. `carried`: new source columns read after the catalog's.
        """
        columns = self.column_list((*table.column_names, *carried))
        select = f"SELECT {columns} FROM {self.qualified(table.name)}"
        if table.mode is CaptureMode.SNAPSHOT:
            return select
        if window is None:
            raise ValueError(f"{table.name}: {table.mode} extraction needs a window")
        assert table.cdc_column is not None
        if table.mode is CaptureMode.WATERMARK:
            return f"{select} WHERE {self._within(table.cdc_column, window)}"
        return self._cdc_extract(table, window, carried)

    def _cdc_extract(self, table: Table, window: Window, carried: tuple[str, ...]) -> str:
        assert table.cdc_column is not None
        columns = self.column_list((*table.column_names, *carried))
        return (
            f"SELECT {self.column_list((CHANGE_OP, CHANGE_SEQ, CHANGE_AT))}, {columns}\n"
            f"FROM {self.qualified(table.change_table)} WHERE {self._within(CHANGE_AT, window)}\n"
            "UNION ALL\n"
            f"SELECT 'S', CAST(NULL AS BIGINT), {self.quote(table.cdc_column)}, {columns}\n"
            f"FROM {self.qualified(table.name)} WHERE {self._within(table.cdc_column, window)}"
        )

    # Whether `as_text` reads a text as its bytes (BLOB), which need not be UTF-8.
    text_as_bytes: ClassVar[bool] = False

    def as_text(self, query: str, columns: Sequence[str], text: Sequence[str]) -> str:
        """`query`'s `columns`, those in `text` as the text of their values: what the copy
        reads again when a value does not fit its type (SQLite keeps 'abc' in an integer)."""
        select = ", ".join(
            f"CAST({self.quote(c)} AS {'BLOB' if self.text_as_bytes else 'TEXT'}) AS "
            f"{self.quote(c)}"
            if c in text
            else self.quote(c)
            for c in columns
        )
        return f"SELECT {select} FROM ({query}) AS q"

    def columns_query(self, name: str) -> str:
        """The columns table `name` has now, one name per row (a catalog read, no scan)."""
        return (
            "SELECT column_name FROM information_schema.columns WHERE table_schema = "
            f"current_schema() AND table_name = {quote_literal(validate_identifier(name))} "
            "ORDER BY ordinal_position"
        )

    def spellings_query(self, name: str) -> str:
        """The tables whose names differ from `name` in case only, one per row."""
        return (
            "SELECT table_name FROM information_schema.tables WHERE table_schema = "
            f"current_schema() AND lower(table_name) = "
            f"{quote_literal(validate_identifier(name).lower())} "
            f"AND table_name <> {quote_literal(name)}"
        )

    def captured_columns_query(self, table: Table) -> str:
        """The columns of `table` its change capture records (the change table's row image)."""
        return self.columns_query(table.change_table)

    def first_change_query(self, table: Table) -> str:
        """The oldest change time of a table (its first partition with data)."""
        assert table.cdc_column is not None
        oldest = (
            f"SELECT MIN({self.quote(table.cdc_column)}) AS t FROM {self.qualified(table.name)}"
        )
        if table.mode is CaptureMode.CDC:
            oldest += (
                f" UNION ALL SELECT MIN({self.quote(CHANGE_AT)}) AS t "
                f"FROM {self.qualified(table.change_table)}"
            )
        return f"SELECT MIN(t) FROM ({oldest}) AS oldest"

    def timeless_query(self, table: Table) -> str | None:
        """Count and lowest key of the rows without a change time, which no window reads and no
        partition holds (a source without the NOT NULL constraint): watermark, the table's
        rows; cdc, the change records. None for a snapshot, which has no change time."""
        if table.mode is CaptureMode.SNAPSHOT:
            return None
        source, time = self._change_source(table)
        (key,) = table.key
        return (
            f"SELECT COUNT(*), MIN({self.quote(key)}) FROM {self.qualified(source)} "
            f"WHERE {self.quote(time)} IS NULL"
        )

    def pending_query(self, table: Table, bound: datetime) -> str:
        """Count and oldest change time of the rows at or after `bound` (not loadable yet):
        watermark: the table's rows; cdc: the change records."""
        source, time = self._change_source(table)
        return (
            f"SELECT COUNT(*), MIN({self.quote(time)}) FROM {self.qualified(source)} "
            f"WHERE {self._at_or_after(time, bound)}"
        )

    def _at_or_after(self, column: str, bound: datetime) -> str:
        return f"{self.quote(column)} >= {self.timestamp_literal(bound)}"

    def _change_source(self, table: Table) -> tuple[str, str]:
        """Where a table's changes are found by their time: its rows, or its change table."""
        assert table.cdc_column is not None
        if table.mode is CaptureMode.CDC:
            return table.change_table, CHANGE_AT
        return table.name, table.cdc_column

    def change_feed(self, table: Table) -> str:
        """Change records with `after < _seq <= upto` (two bound parameters), in sequence order."""
        columns = (CHANGE_SEQ, CHANGE_OP, CHANGE_AT, *table.column_names)
        return (
            f"SELECT {self.column_list(columns)} FROM {self.qualified(table.change_table)} "
            f"WHERE {self.quote(CHANGE_SEQ)} > ? AND {self.quote(CHANGE_SEQ)} <= ? "
            f"ORDER BY {self.quote(CHANGE_SEQ)}"
        )


class SqliteDialect(SqlDialect):
    dialect = Dialect.SQLITE
    # Declared types matter: the SQLite ODBC driver reports DATE/TIMESTAMP from them.
    _TYPES: ClassVar[dict[ColumnType, str]] = {
        ColumnType.INT: "INTEGER",
        ColumnType.BIGINT: "INTEGER",
        ColumnType.STRING: "TEXT",
        ColumnType.DATE: "DATE",
        ColumnType.TIMESTAMP: "TIMESTAMP",
    }

    # SQLite keeps any bytes in a text, and its ODBC driver drops those that are not UTF-8
    # from a text it returns (a Latin-1 'é' vanished without a word).
    text_as_bytes = True

    def quote(self, name: str) -> str:
        # Backticks: SQLite reads an unknown "double-quoted" name as a string literal, so a
        # renamed column would be copied as its own name; an unknown `name` is an error.
        return f"`{validate_identifier(name)}`"

    def column_type(self, column: Column) -> str:
        return self._TYPES[column.type]

    def columns_query(self, name: str) -> str:
        return (
            f"SELECT name FROM pragma_table_info({quote_literal(validate_identifier(name))}) "
            "ORDER BY cid"
        )

    def server_now(self) -> str:
        return f"strftime('{_SQLITE_TIME}', 'now')"

    def index_build_settings(self) -> list[str]:
        # CREATE INDEX sorts in runs of the page cache's size (2 MiB by default) merged 16 at a
        # time: the 50M streams of scale 10 made ~900 runs and three merge passes, 256 MiB runs
        # merge in one.
        return ["PRAGMA cache_size = -262144"]

    def _within(self, column: str, window: Window) -> str:
        """SQLite compares the stored text, and timestamps come as '… 12:00', '… 12:00:00',
        '….000', '…T…' or a bare date. The text's date alone places a row of a day wholly inside
        the window (windows of whole days: every row); rows of a day the window cuts compare
        normalised. Each term is a range of the text, so the index reads only the rows of the
        window's whole days and, of a cut day, those of the minutes it covers (a day read in
        slices is not read whole per slice), normalising only the rows of its first and last
        minute."""
        quoted = self.quote(column)
        start, end = window.start, window.end
        whole_from = start.date() if start == midnight(start.date()) else start.date() + _DAY
        terms = [f"{quoted} >= '{whole_from}' AND {quoted} < '{max(whole_from, end.date())}'"]
        normal = f"strftime('{_SQLITE_TIME}', {quoted})"
        exact = (
            f"{normal} >= {self.timestamp_literal(start)} AND "
            f"{normal} < {self.timestamp_literal(end)}"
        )
        # Only its first and last day can be cut: never walk the days between (the idle check's
        # window runs to the end of time).
        for day in dict.fromkeys((start.date(), (end - timedelta(microseconds=1)).date())):
            part = window.intersect(Window.of_days(day, day))
            if not part or part == Window.of_days(day, day):
                continue
            # A moment's text starts with its minute ('~' sorts after the rest): those of the
            # minutes strictly inside `part` are in it, only its first and last compare
            # normalised.
            first, last = f"{part.start:%H:%M}", f"{part.end - timedelta(microseconds=1):%H:%M}"
            for minute in (f"{day} ", f"{day}T"):
                terms.append(f"{quoted} >= '{minute}{first}~' AND {quoted} < '{minute}{last}'")
                terms += [
                    f"{quoted} >= '{minute}{edge}' AND {quoted} < '{minute}{edge}~' AND {exact}"
                    for edge in dict.fromkeys((first, last))
                ]
            if part.start == midnight(day):
                terms.append(f"{quoted} = '{day}' AND {exact}")
        return "(" + " OR ".join(f"({term})" for term in terms) + ")"

    def _at_or_after(self, column: str, bound: datetime) -> str:
        # The bound's day compares as windows do (a 'T' text sorts after the bound's ' ' one
        # whatever its time); later days by their text date.
        next_day = bound.date() + _DAY
        rest = self._within(column, Window(bound, midnight(next_day)))
        return f"({rest} OR {self.quote(column)} >= '{next_day}')"

    def day_of(self, column: str) -> str:
        return f"date({self.quote(column)})"

    def daily_profile_query(self, table: Table, window: Window) -> str:
        """The profile a day at a time: SQLite groups by sorting every row of the window in a
        temporary B-tree (2-4 s for the 5.5M streams of a 10-day lookback at scale 10), while
        one day's count and sum are read straight off the change-time index. A window of more
        days than a compound SELECT joins (such as "from the watermark on") is grouped."""
        days = list(islice(window.split_by_day(), _SQLITE_PROFILE_DAYS + 1))
        if not 0 < len(days) <= _SQLITE_PROFILE_DAYS:
            return super().daily_profile_query(table, window)
        source, time, checksum = self._profiled(table)
        each_day = "\n  UNION ALL ".join(
            f"SELECT '{day}' AS d, COUNT(*) AS n, SUM({self.quote(checksum)}) AS s "
            f"FROM {self.qualified(source)} WHERE {self._within(time, part)}"
            for day, part in days
        )
        return f"SELECT d, n, s FROM (\n  {each_day}\n) AS days WHERE n > 0"

    def timestamp_literal(self, value: datetime) -> str:
        # SQLite compares the stored text: match the driver's 'YYYY-MM-DD HH:MM:SS.fff' exactly.
        return f"'{value.isoformat(sep=' ', timespec='milliseconds')}'"

    def column_types_query(self, name: str) -> str:
        return (
            f"SELECT name, type FROM pragma_table_info({quote_literal(validate_identifier(name))})"
        )

    def change_capture(
        self, table: Table, image_types: Mapping[str, str] = CATALOG_TYPES
    ) -> list[str]:
        statements = self.change_table(
            table, "INTEGER PRIMARY KEY AUTOINCREMENT", "TEXT", image_types
        )
        return statements + self.capture_triggers(table)

    # Our triggers' name suffixes: insert, update, update of the key, delete.
    _TRIGGERS = ("i", "u", "k", "d")

    def capture_triggers(self, table: Table) -> list[str]:
        """One trigger per kind of change; an update of the key is recorded as the delete of
        the old row and the insert of the new one, so the old key's history closes. (SQLite
        renames a column in the triggers that name it.)

        SQLite fires row triggers as it updates each row, so keys shifted by one statement of
        a table without a primary key (1 -> 2, 2 -> 3) record the insert of 2 before its
        delete: the delete of a key that another row still holds is followed by that row's
        insert again, and the records replay to the table as it is."""
        ct = self.quote(table.change_table)
        columns = self.column_list((CHANGE_OP, CHANGE_AT, *table.column_names))

        def capture(op: str, row: str) -> str:
            values = ", ".join(f"{row}.{self.quote(c)}" for c in table.column_names)
            clock = self.clock_expression()
            return f"  INSERT INTO {ct} ({columns})\n  VALUES ('{op}', {clock}, {values});\n"

        holders = " AND ".join(f"{self.quote(k)} = OLD.{self.quote(k)}" for k in table.key)
        still_held = (
            f"  INSERT INTO {ct} ({columns})\n  SELECT 'I', {self.clock_expression()}, "
            f"{self.column_list(table.column_names)}\n"
            f"  FROM {self.quote(table.name)} WHERE {holders};\n"
        )
        key_changed = self.key_changed(table)
        key_update = capture("D", "OLD") + still_held + capture("I", "NEW")
        triggers = (
            ("INSERT", "", capture("I", "NEW")),
            ("UPDATE", f" WHEN NOT ({key_changed})", capture("U", "NEW")),
            ("UPDATE", f" WHEN {key_changed}", key_update),
            ("DELETE", "", capture("D", "OLD")),
        )
        return [
            f"CREATE TRIGGER {trigger} AFTER {event} ON {self.quote(table.name)}{when}\n"
            f"BEGIN\n{records}END"
            for trigger, (event, when, records) in zip(
                self._trigger_names(table), triggers, strict=True
            )
        ]

    def drop_capture_triggers(self, table: Table) -> list[str]:
        return [f"DROP TRIGGER IF EXISTS {name}" for name in self._trigger_names(table)]

    def _trigger_names(self, table: Table) -> list[str]:
        return [self.quote(f"{table.name}_capture_{kind}") for kind in self._TRIGGERS]


class PostgresDialect(SqlDialect):
    dialect = Dialect.POSTGRESQL
    exact_case_engine = "PostgreSQL"
    _TYPES: ClassVar[dict[ColumnType, str]] = {
        ColumnType.INT: "INTEGER",
        ColumnType.BIGINT: "BIGINT",
        ColumnType.DATE: "DATE",
        ColumnType.TIMESTAMP: "TIMESTAMP",
    }

    def column_type(self, column: Column) -> str:
        if column.type is ColumnType.STRING:
            return f"VARCHAR({column.length})"
        return self._TYPES[column.type]

    def server_now(self) -> str:
        return "(now() AT TIME ZONE 'utc')"

    def timestamp_literal(self, value: datetime) -> str:
        return f"TIMESTAMP '{value.isoformat(sep=' ', timespec='microseconds')}'"

    def drop_schema(self, tables: Sequence[Table]) -> list[str]:
        functions = [f"DROP FUNCTION IF EXISTS {self._capture_function(t)}()" for t in tables]
        return super().drop_schema(tables) + functions

    def _capture_function(self, table: Table) -> str:
        return self.quote(f"{table.name}_capture")

    def column_types_query(self, name: str) -> str:
        relation = quote_literal(self.quote(validate_identifier(name)))
        return (
            "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid "
            f"= to_regclass({relation}) AND attnum > 0 AND NOT attisdropped"
        )

    def schemas_holding_query(self, names: Sequence[str]) -> str:
        listed = ", ".join(quote_literal(validate_identifier(name)) for name in names)
        return (
            "SELECT DISTINCT table_schema, current_schema(), current_user FROM "
            f"information_schema.tables WHERE table_name IN ({listed}) AND table_schema IS "
            "DISTINCT FROM current_schema() ORDER BY table_schema"
        )

    def change_capture(
        self, table: Table, image_types: Mapping[str, str] = CATALOG_TYPES
    ) -> list[str]:
        statements = self.change_table(
            table, "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY", "CHAR(1)", image_types
        )
        return statements + self.capture_triggers(table)

    def key_changed(self, table: Table) -> str:
        # By the row's fields, as the records are read: a key column the user renamed reads
        # NULL on both sides rather than failing their UPDATE.
        return " OR ".join(
            f"to_jsonb(OLD) -> {quote_literal(k)} IS DISTINCT FROM to_jsonb(NEW) -> "
            f"{quote_literal(k)}"
            for k in table.key
        )

    def capture_triggers(self, table: Table) -> list[str]:
        ct = self.quote(table.change_table)
        function = self._capture_function(table)
        columns = self.column_list((CHANGE_OP, CHANGE_AT, *table.column_names))
        clock = self.clock_expression()
        image = ", ".join(f"r.{self.quote(c)}" for c in table.column_names)

        # The row is read by its fields' names (its JSON put into the change table's row type),
        # not by NEW.<column>: while the user has a column renamed, their writes pass, recorded
        # with that column NULL, and the next copy refuses the renamed column in one line.
        def image_of(row: str) -> str:
            return f"jsonb_populate_record(NULL::{ct}, to_jsonb({row})) AS r"

        def capture(row: str, op: str) -> str:
            return (
                f"INSERT INTO {ct} ({columns}) SELECT {op}, {clock}, {image} FROM {image_of(row)};"
            )

        # Row triggers do not fire on TRUNCATE: a statement trigger before it records the
        # delete of every row, or the rows not refilled would stay current downstream.
        key_order = ", ".join(f"r.{self.quote(k)}" for k in table.key)
        every_row = (
            f"INSERT INTO {ct} ({columns}) SELECT 'D', {clock}, {image} "
            f"FROM {self.quote(table.name)} AS t, {image_of('t')} ORDER BY {key_order};"
        )
        # An update of the key is the delete of the old row and the insert of the new one. The
        # deletes are recorded by a BEFORE trigger, which fires as each row is updated, the
        # inserts by the AFTER trigger, which fires at the statement's end: keys shifted by one
        # statement (1 -> 2, 2 -> 3) record every delete before any insert, as the final table.
        # No WHEN clause names the key: PostgreSQL would then refuse to retype the key column.
        key_changed = self.key_changed(table)
        before, after, truncate = self._trigger_names(table)
        return [
            # The search_path of the session that creates it: a user's application writing
            # "schema"."Table" from another search_path would not find the change table.
            f"CREATE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql "
            "SET search_path FROM CURRENT AS $$\nBEGIN\n"
            f"  IF TG_OP = 'TRUNCATE' THEN\n    {every_row}\n    RETURN NULL;\n  END IF;\n"
            f"  IF TG_WHEN = 'BEFORE' THEN\n    IF {key_changed} THEN\n"
            f"      {capture('OLD', quote_literal('D'))}\n    END IF;\n"
            f"    RETURN NEW;\n  END IF;\n"
            f"  IF TG_OP = 'DELETE' THEN\n    {capture('OLD', quote_literal('D'))}\n"
            f"    RETURN OLD;\n  END IF;\n"
            f"  IF TG_OP = 'UPDATE' AND ({key_changed}) THEN\n"
            f"    {capture('NEW', quote_literal('I'))}\n"
            f"    RETURN NEW;\n  END IF;\n  {capture('NEW', 'left(TG_OP, 1)')}\n"
            "  RETURN NEW;\nEND\n$$",
            f"CREATE TRIGGER {before} BEFORE UPDATE ON "
            f"{self.quote(table.name)} FOR EACH ROW EXECUTE FUNCTION {function}()",
            f"CREATE TRIGGER {after} AFTER INSERT OR UPDATE OR DELETE ON "
            f"{self.quote(table.name)} FOR EACH ROW EXECUTE FUNCTION {function}()",
            f"CREATE TRIGGER {truncate} BEFORE TRUNCATE ON "
            f"{self.quote(table.name)} FOR EACH STATEMENT EXECUTE FUNCTION {function}()",
        ]

    def drop_capture_triggers(self, table: Table) -> list[str]:
        on = self.quote(table.name)
        return [
            *(f"DROP TRIGGER IF EXISTS {name} ON {on}" for name in self._trigger_names(table)),
            f"DROP FUNCTION IF EXISTS {self._capture_function(table)}()",
        ]

    def _trigger_names(self, table: Table) -> list[str]:
        """The BEFORE UPDATE (key changes), the row and the TRUNCATE triggers."""
        return [
            self.quote(f"{table.name}_capture_key"),
            self._capture_function(table),
            self.quote(f"{table.name}_capture_truncate"),
        ]


class TsqlDialect(SqlDialect):
    """SQL Server / Azure SQL. Change capture is the engine's native CDC, not triggers."""

    dialect = Dialect.TSQL
    timestamp_type = "DATETIME2(3)"
    _TYPES: ClassVar[dict[ColumnType, str]] = {
        ColumnType.INT: "INT",
        ColumnType.BIGINT: "BIGINT",
        ColumnType.DATE: "DATE",
        ColumnType.TIMESTAMP: "DATETIME2(3)",
    }

    def quote(self, name: str) -> str:
        return f"[{validate_identifier(name)}]"

    def begin(self) -> str:
        return "BEGIN TRANSACTION"

    def capture_triggers(self, table: Table) -> list[str]:
        return []  # native CDC: no triggers of ours (`source init` still records the capture)

    def drop_capture_triggers(self, table: Table) -> list[str]:
        return []

    def _change_tables(self, tables: Sequence[Table]) -> list[str]:
        return []  # the engine's CDC owns them: dropping a captured table drops its change table

    def qualified(self, name: str) -> str:
        return f"{self.quote(TSQL_SCHEMA)}.{self.quote(name)}"

    def column_type(self, column: Column) -> str:
        if column.type is ColumnType.STRING:
            return f"NVARCHAR({column.length})"
        return self._TYPES[column.type]

    # How a native CDC record becomes a bronze change record: the change sequence (the low
    # 8 bytes of the 10-byte seqval, see `_cdc_extract`) and the commit time of its LSN.
    _CDC_SEQ = "CONVERT(BIGINT, SUBSTRING(c.__$seqval, 3, 8))"
    _CDC_CHANGED_AT = "sys.fn_cdc_map_lsn_to_time(c.__$start_lsn)"
    # Operations: 1 delete, 2 insert, 3 update (values before), 4 update (values after). An
    # update's two rows are adjacent in this order (its old and new values share the seqval).
    _CDC_ORDER = "u.__$start_lsn, u.__$seqval, u.__$operation"
    _REKEYED = "_rekeyed"
    # A bronze record: every delete, insert and update's new values, and the old values of an
    # update that changed the key (they become the old key's delete).
    _CDC_RECORDS = f"(c.__$operation <> 3 OR c.[{_REKEYED}] = 1)"
    _CDC_OP = (
        f"CASE WHEN c.__$operation IN (1, 3) THEN 'D' "
        f"WHEN c.__$operation = 2 OR c.[{_REKEYED}] = 1 THEN 'I' ELSE 'U' END"
    )

    def _cdc_rows(self, table: Table, rows: str, where: str = "") -> str:
        """`rows` (every operation of a capture instance, as its change table holds them) as
        the derived table `c`, each row marked `_rekeyed` when it belongs to an update that
        changed the key: SQL Server logs such an update either as a delete and an insert
        (operations 1 and 2: nothing to mark) or in place (3 and 4: the old key's values, then
        the new key's), depending on the statement and the indexes."""

        def differs(neighbour: str) -> str:
            return " OR ".join(
                f"u.{self.quote(k)} <> {neighbour}(u.{self.quote(k)}) OVER (ORDER BY "
                f"{self._CDC_ORDER})"
                for k in table.key
            )

        return (
            f"(SELECT u.*, CASE WHEN (u.__$operation = 3 AND ({differs('LEAD')})) "
            f"OR (u.__$operation = 4 AND ({differs('LAG')})) THEN 1 ELSE 0 END "
            f"AS {self.quote(self._REKEYED)}\n  FROM {rows} AS u{where}) AS c"
        )

    def daily_profile_query(self, table: Table, window: Window) -> str:
        """Native CDC: per day of commit time, the change records the extraction writes to
        bronze (`_cdc_extract`) and the sum of their `_seq`, counted in the capture instance's
        change table. It is read directly and bounded by LSN, so a window without changes
        gives no rows rather than error 313."""
        if table.mode is not CaptureMode.CDC:
            return super().daily_profile_query(table, window)
        change_table = f"cdc.{self.quote(self.capture_instance(table) + '_CT')}"
        # An update's rows share their commit LSN: a bound never separates them.
        bounds = (
            "\n  WHERE u.__$start_lsn >= sys.fn_cdc_map_time_to_lsn("
            f"'smallest greater than or equal', {self.timestamp_literal(window.start)})\n"
            "    AND u.__$start_lsn <= sys.fn_cdc_map_time_to_lsn("
            f"'largest less than', {self.timestamp_literal(window.end)})"
        )
        day = f"CAST(t.{self.quote(CHANGE_AT)} AS DATE)"
        return (
            f"SELECT {day}, COUNT(*), SUM(CAST(t.{self.quote(CHANGE_SEQ)} AS DECIMAL(38, 0)))\n"
            f"FROM (SELECT {self._CDC_CHANGED_AT} AS {self.quote(CHANGE_AT)}, "
            f"{self._CDC_SEQ} AS {self.quote(CHANGE_SEQ)}\n"
            f"  FROM {self._cdc_rows(table, change_table, bounds)}\n"
            f"  WHERE {self._CDC_RECORDS}) AS t\n"
            f"GROUP BY {day}"
        )

    def columns_query(self, name: str) -> str:
        table = quote_literal(f"{TSQL_SCHEMA}.{validate_identifier(name)}", national=True)
        return (
            f"SELECT name FROM sys.columns WHERE object_id = OBJECT_ID({table}) ORDER BY column_id"
        )

    def captured_columns_query(self, table: Table) -> str:
        instance = quote_literal(self.capture_instance(table), national=True)
        return (
            "SELECT cc.column_name FROM cdc.captured_columns AS cc JOIN cdc.change_tables AS ct "
            f"ON cc.object_id = ct.object_id WHERE ct.capture_instance = {instance} "
            "ORDER BY cc.column_ordinal"
        )

    def capture_instance(self, table: Table) -> str:
        return validate_identifier(f"{TSQL_SCHEMA}_{table.name}")

    def enable_cdc_on_database(self) -> str:
        return (
            "IF NOT EXISTS (SELECT 1 FROM sys.databases WHERE name = DB_NAME() "
            "AND is_cdc_enabled = 1)\nBEGIN\n  EXEC sys.sp_cdc_enable_db;\nEND"
        )

    def change_capture(
        self, table: Table, image_types: Mapping[str, str] = CATALOG_TYPES
    ) -> list[str]:
        instance = quote_literal(self.capture_instance(table), national=True)
        return [
            "IF NOT EXISTS (SELECT 1 FROM cdc.change_tables WHERE capture_instance = "
            f"{instance})\nBEGIN\n  EXEC sys.sp_cdc_enable_table "
            f"@source_schema = {quote_literal(TSQL_SCHEMA, national=True)}, "
            f"@source_name = {quote_literal(table.name, national=True)}, "
            "@role_name = NULL, "
            f"@capture_instance = {instance}, "
            "@supports_net_changes = 0;\nEND"
        ]

    def server_now(self) -> str:
        return "SYSUTCDATETIME()"

    def simulated_clock(self) -> str:
        # Native CDC stamps changes with commit times, so only the server's clock applies.
        return "CAST(NULL AS DATETIME2(3))"

    def timestamp_literal(self, value: datetime) -> str:
        return f"CAST('{value.isoformat(sep='T', timespec='milliseconds')}' AS DATETIME2(3))"

    def first_change_query(self, table: Table) -> str:
        assert table.cdc_column is not None
        oldest = (
            f"SELECT MIN({self.quote(table.cdc_column)}) AS t FROM {self.qualified(table.name)}"
        )
        if table.mode is CaptureMode.CDC:
            instance = quote_literal(self.capture_instance(table))
            oldest += (
                " UNION ALL SELECT sys.fn_cdc_map_lsn_to_time("
                f"sys.fn_cdc_get_min_lsn({instance})) AS t"
            )
        return f"SELECT MIN(t) FROM ({oldest}) AS oldest"

    def timeless_query(self, table: Table) -> str | None:
        # Native CDC stamps every record with its commit time: only a watermark table's rows
        # can lack one.
        return super().timeless_query(table) if table.mode is CaptureMode.WATERMARK else None

    def _change_source(self, table: Table) -> tuple[str, str]:
        # Native CDC stamps commit times, never ahead of the server: only rows can run ahead.
        assert table.cdc_column is not None
        return table.name, table.cdc_column

    def _cdc_extract(self, table: Table, window: Window, carried: tuple[str, ...]) -> str:
        """The native CDC records committed in the window plus the current images.

        `_seq` is the low 8 bytes of the 10-byte seqval as BIGINT: ordered like the LSN as long
        as the log's virtual-file sequence number stays below 2^16. An update of the key is
        recorded as the old key's delete and the new key's insert, as the triggers of the other
        dialects record it, however SQL Server logged it (`_cdc_rows`): the old values of
        updates are read too (N'all update old').
        """
        assert table.cdc_column is not None
        names = (*table.column_names, *carried)
        columns = self.column_list(names)
        changes = ", ".join(f"c.{self.quote(n)}" for n in names)
        function = f"cdc.fn_cdc_get_all_changes_{self.capture_instance(table)}"
        rows = self._cdc_rows(table, f"{function}(@from_lsn, @to_lsn, N'all update old')")
        return (
            "DECLARE @from_lsn BINARY(10) = sys.fn_cdc_map_time_to_lsn("
            f"'smallest greater than or equal', {self.timestamp_literal(window.start)});\n"
            "DECLARE @to_lsn BINARY(10) = sys.fn_cdc_map_time_to_lsn("
            f"'largest less than', {self.timestamp_literal(window.end)});\n"
            f"SELECT {self._CDC_OP} AS {self.quote(CHANGE_OP)}, "
            f"{self._CDC_SEQ} AS {self.quote(CHANGE_SEQ)}, "
            f"{self._CDC_CHANGED_AT} AS {self.quote(CHANGE_AT)}, "
            f"{changes}\n"
            f"FROM {rows}\n"
            f"WHERE {self._CDC_RECORDS}\n"
            "UNION ALL\n"
            f"SELECT 'S', CAST(NULL AS BIGINT), {self.quote(table.cdc_column)}, {columns}\n"
            f"FROM {self.qualified(table.name)} WHERE {self._within(table.cdc_column, window)}"
        )


def quote_literal(value: str, national: bool = False) -> str:
    return ("N" if national else "") + "'" + value.replace("'", "''") + "'"


DIALECTS: dict[Dialect, SqlDialect] = {
    d.dialect: d for d in (SqliteDialect(), PostgresDialect(), TsqlDialect())
}
