"""SQL text per source dialect, generated from the catalog: DDL, change capture, DML templates.

Identifiers come only from the catalog (validated there) and are quoted here; values are always
bound parameters (`?`) or typed literals.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from datetime import datetime
from typing import ClassVar

from resources.odbc import Dialect
from spotify_assets.catalog import (
    CHANGE_AT,
    CHANGE_OP,
    CHANGE_SEQ,
    Column,
    ColumnType,
    Table,
    validate_identifier,
)

CLOCK_TABLE = "source_clock"
CLOCK_COLUMN = "now_utc"
META_TABLE = "source_meta"
TSQL_SCHEMA = "dbo"


class SqlDialect(ABC):
    """Base: ANSI-quoted identifiers; subclasses add the per-engine parts."""

    dialect: Dialect

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
    def change_capture(self, table: Table) -> list[str]:
        """Objects that record every insert, update and delete of `table`."""

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

    def set_clock(self) -> list[str]:
        """Statements (one bound timestamp in the last) that set the simulated clock."""
        return [
            f"DELETE FROM {self.qualified(CLOCK_TABLE)}",
            f"INSERT INTO {self.qualified(CLOCK_TABLE)} ({self.quote(CLOCK_COLUMN)}) VALUES (?)",
        ]

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

    def column_type(self, column: Column) -> str:
        return self._TYPES[column.type]

    def _clock(self) -> str:
        return (
            f"COALESCE((SELECT {self.quote(CLOCK_COLUMN)} FROM {self.quote(CLOCK_TABLE)}), "
            "strftime('%Y-%m-%d %H:%M:%f', 'now'))"
        )

    def change_capture(self, table: Table) -> list[str]:
        ct = self.quote(table.change_table)
        image = [f"{self.quote(c.name)} {self.column_type(c)}" for c in table.columns]
        statements = [
            f"CREATE TABLE {ct} (\n  {self.quote(CHANGE_SEQ)} INTEGER PRIMARY KEY AUTOINCREMENT,\n"
            f"  {self.quote(CHANGE_OP)} TEXT NOT NULL CHECK ({self.quote(CHANGE_OP)} IN "
            "('I', 'U', 'D')),\n"
            f"  {self.quote(CHANGE_AT)} TIMESTAMP NOT NULL,\n  " + ",\n  ".join(image) + "\n)",
            f"CREATE INDEX {self.quote(table.change_table + '_at')} ON {ct} "
            f"({self.quote(CHANGE_AT)})",
        ]
        columns = self.column_list((CHANGE_OP, CHANGE_AT, *table.column_names))
        for event, op, row in (
            ("INSERT", "I", "NEW"),
            ("UPDATE", "U", "NEW"),
            ("DELETE", "D", "OLD"),
        ):
            values = ", ".join(f"{row}.{self.quote(c)}" for c in table.column_names)
            trigger = self.quote(f"{table.name}_capture_{op.lower()}")
            statements.append(
                f"CREATE TRIGGER {trigger} AFTER {event} ON {self.quote(table.name)}\nBEGIN\n"
                f"  INSERT INTO {ct} ({columns})\n"
                f"  VALUES ('{op}', {self._clock()}, {values});\nEND"
            )
        return statements


class PostgresDialect(SqlDialect):
    dialect = Dialect.POSTGRESQL
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

    def change_capture(self, table: Table) -> list[str]:
        ct = self.quote(table.change_table)
        image = [f"{self.quote(c.name)} {self.column_type(c)}" for c in table.columns]
        function = self.quote(f"{table.name}_capture")
        columns = self.column_list((CHANGE_OP, CHANGE_AT, *table.column_names))
        clock = (
            f"COALESCE((SELECT {self.quote(CLOCK_COLUMN)} FROM {self.quote(CLOCK_TABLE)} LIMIT 1), "
            "(now() AT TIME ZONE 'utc'))"
        )

        def capture(row: str, op: str) -> str:
            values = ", ".join(f"{row}.{self.quote(c)}" for c in table.column_names)
            return f"INSERT INTO {ct} ({columns}) VALUES ({op}, {clock}, {values});"

        return [
            f"CREATE TABLE {ct} (\n  {self.quote(CHANGE_SEQ)} BIGINT GENERATED ALWAYS AS IDENTITY "
            f"PRIMARY KEY,\n  {self.quote(CHANGE_OP)} CHAR(1) NOT NULL CHECK "
            f"({self.quote(CHANGE_OP)} IN ('I', 'U', 'D')),\n"
            f"  {self.quote(CHANGE_AT)} TIMESTAMP NOT NULL,\n  " + ",\n  ".join(image) + "\n)",
            f"CREATE INDEX {self.quote(table.change_table + '_at')} ON {ct} "
            f"({self.quote(CHANGE_AT)})",
            f"CREATE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $$\nBEGIN\n"
            f"  IF TG_OP = 'DELETE' THEN\n    {capture('OLD', quote_literal('D'))}\n"
            f"    RETURN OLD;\n  END IF;\n  {capture('NEW', 'left(TG_OP, 1)')}\n"
            "  RETURN NEW;\nEND\n$$",
            f"CREATE TRIGGER {function} AFTER INSERT OR UPDATE OR DELETE ON "
            f"{self.quote(table.name)} FOR EACH ROW EXECUTE FUNCTION {function}()",
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

    def qualified(self, name: str) -> str:
        return f"{self.quote(TSQL_SCHEMA)}.{self.quote(name)}"

    def column_type(self, column: Column) -> str:
        if column.type is ColumnType.STRING:
            return f"NVARCHAR({column.length})"
        return self._TYPES[column.type]

    def capture_instance(self, table: Table) -> str:
        return validate_identifier(f"{TSQL_SCHEMA}_{table.name}")

    def enable_cdc_on_database(self) -> str:
        return (
            "IF NOT EXISTS (SELECT 1 FROM sys.databases WHERE name = DB_NAME() "
            "AND is_cdc_enabled = 1)\nBEGIN\n  EXEC sys.sp_cdc_enable_db;\nEND"
        )

    def change_capture(self, table: Table) -> list[str]:
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

    def change_feed_by_time(self, table: Table, low: datetime, high: datetime) -> str:
        """All changes committed in `(low, high]` through the native CDC table-valued function."""
        columns = ", ".join(f"c.{self.quote(n)}" for n in table.column_names)
        function = f"cdc.fn_cdc_get_all_changes_{self.capture_instance(table)}"
        return (
            "DECLARE @from_lsn BINARY(10) = sys.fn_cdc_map_time_to_lsn("
            f"'smallest greater than', {datetime_literal(low)});\n"
            "DECLARE @to_lsn BINARY(10) = sys.fn_cdc_map_time_to_lsn("
            f"'largest less than or equal', {datetime_literal(high)});\n"
            "SELECT CASE c.__$operation WHEN 1 THEN 'D' WHEN 2 THEN 'I' ELSE 'U' END "
            f"AS {self.quote(CHANGE_OP)},\n"
            f"  c.__$seqval AS {self.quote(CHANGE_SEQ)},\n"
            f"  sys.fn_cdc_map_lsn_to_time(c.__$start_lsn) AS {self.quote(CHANGE_AT)},\n"
            f"  {columns}\n"
            f"FROM {function}(@from_lsn, @to_lsn, N'all') AS c\n"
            "WHERE c.__$operation IN (1, 2, 4)\n"
            "ORDER BY c.__$start_lsn, c.__$seqval"
        )


def quote_literal(value: str, national: bool = False) -> str:
    return ("N" if national else "") + "'" + value.replace("'", "''") + "'"


def datetime_literal(value: datetime) -> str:
    return f"CAST('{value.isoformat(sep='T', timespec='milliseconds')}' AS DATETIME2(3))"


DIALECTS: dict[Dialect, SqlDialect] = {
    d.dialect: d for d in (SqliteDialect(), PostgresDialect(), TsqlDialect())
}
