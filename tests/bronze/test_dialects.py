"""SQL generated from the catalog: T-SQL that parses, identifiers that cannot inject."""

from __future__ import annotations

from datetime import datetime

import pytest
import sqlglot
from sqlglot import exp

from spotify_assets.bronze.dialects import DIALECTS, Dialect
from spotify_assets.bronze.windows import Window
from spotify_assets.catalog.tables import (
    CATALOG,
    CaptureMode,
    CatalogError,
    Column,
    ColumnType,
    Table,
    TableRole,
    parse_mode_overrides,
    validate_identifier,
)
from tests.helpers.tsql import TSQL, parse_tsql


def tsql_statements() -> list[str]:
    statements = [TSQL.enable_cdc_on_database(), *TSQL.support_tables()]
    for table in CATALOG:
        statements += [TSQL.create_table(table), *TSQL.create_indexes(table)]
        statements += TSQL.change_capture(table)
        statements += [TSQL.insert(table.name, table.column_names, rows=3), TSQL.select(table)]
        statements.append(TSQL.columns_query(table.name))
        if table.cdc_column:
            statements.append(TSQL.first_change_query(table))
            statements.append(TSQL.captured_columns_query(table))
            window = Window(datetime(2026, 1, 1), datetime(2026, 1, 2))
            statements.append(TSQL.extract_query(table, window, carried=("email",)))
        if table.key != table.column_names:
            statements += [TSQL.update(table), TSQL.delete(table)]
    return statements


@pytest.mark.parametrize("sql", tsql_statements())
def test_every_tsql_statement_parses(sql: str) -> None:
    parse_tsql(sql)


@pytest.mark.parametrize("table", [t for t in CATALOG if t.cdc_column], ids=lambda t: t.name)
def test_tsql_cdc_enablement_executes_the_system_procedure(table: Table) -> None:
    (statement,) = TSQL.change_capture(table)
    executes = list(parse_tsql(statement)[0].find_all(exp.Execute))
    assert [e.this.sql("tsql") for e in executes] == ["sys.sp_cdc_enable_table"]
    arguments = {e.this.sql("tsql"): e.expression.sql("tsql") for e in executes[0].expressions}
    assert arguments["@source_name"] == f"N'{table.name}'"
    assert arguments["@capture_instance"] == f"N'dbo_{table.name}'"


def test_tsql_cdc_extraction_reads_images_and_the_capture_instance_in_the_window() -> None:
    table = CATALOG["DimUser"]
    window = Window(datetime(2026, 3, 1), datetime(2026, 3, 2, 0, 0, 5))
    sql = TSQL.extract_query(table, window)
    statements = parse_tsql(sql)
    assert [type(s) for s in statements] == [exp.Declare, exp.Declare, exp.Union]
    union = statements[-1]
    functions = [t.name for t in union.find_all(exp.Anonymous) if "fn_cdc" in t.name]
    assert "fn_cdc_get_all_changes_dbo_DimUser" in functions
    assert "'2026-03-01T00:00:00.000'" in sql and "'2026-03-02T00:00:05.000'" in sql
    changes, images = union.left, union.right
    assert [c.alias_or_name for c in changes.expressions] == [
        "_op",
        "_seq",
        "_changed_at",
        *table.column_names,
    ]
    assert len(changes.expressions) == len(images.expressions)


@pytest.mark.parametrize("dialect", list(DIALECTS), ids=str)
@pytest.mark.parametrize("table", list(CATALOG), ids=lambda t: t.name)
def test_extraction_queries_are_bounded_on_both_sides(dialect: Dialect, table: Table) -> None:
    sql = DIALECTS[dialect]
    window = Window(datetime(2026, 3, 1, 6), datetime(2026, 3, 2))
    query = sql.extract_query(table, window)
    if table.mode is CaptureMode.SNAPSHOT:
        assert "WHERE" not in query
        return
    low, high = sql.timestamp_literal(window.start), sql.timestamp_literal(window.end)
    parts = query.split("UNION ALL")
    if dialect is Dialect.TSQL and table.mode is CaptureMode.CDC:
        # Native CDC is bounded by the LSN range mapped from the same window.
        assert f"'smallest greater than or equal', {low}" in query
        assert f"'largest less than', {high}" in query
        parts = parts[1:]
    for part in parts:
        assert f">= {low}" in part and f"< {high}" in part
    parse = sqlglot.parse(
        query, read={"sqlite": "sqlite", "postgresql": "postgres"}.get(dialect.value, "tsql")
    )
    assert all(p is not None for p in parse)


@pytest.mark.parametrize(
    "name",
    ["DimUser; DROP TABLE x", 'a"b', "a]b", "1abc", "", "x" * 64, "naïve", "a b", "a--b"],
)
def test_hostile_identifiers_are_rejected(name: str) -> None:
    with pytest.raises(CatalogError, match="invalid identifier"):
        validate_identifier(name)
    for dialect in DIALECTS.values():
        with pytest.raises(CatalogError):
            dialect.quote(name)


def test_a_catalog_entry_with_a_hostile_column_is_rejected() -> None:
    with pytest.raises(CatalogError, match="invalid identifier"):
        Column("x; DROP TABLE DimUser", ColumnType.INT)


def test_catalog_entries_are_validated() -> None:
    good = CATALOG["DimArtist"]
    with pytest.raises(CatalogError, match="key column"):
        Table(
            "T",
            "t",
            good.columns,
            ("nope",),
            TableRole.DIMENSION,
            CaptureMode.CDC,
            "updated_at",
        )
    with pytest.raises(CatalogError, match="needs a cdc column"):
        Table(
            "T",
            "t",
            good.columns,
            good.key,
            TableRole.DIMENSION,
            CaptureMode.WATERMARK,
            None,
        )
    with pytest.raises(CatalogError, match="must be a timestamp"):
        Table(
            "T",
            "t",
            good.columns,
            good.key,
            TableRole.DIMENSION,
            CaptureMode.CDC,
            "genre",
        )


def test_catalog_defaults_and_mode_overrides() -> None:
    modes = {t.name: t.mode for t in CATALOG}
    assert modes == {
        "DimUser": CaptureMode.CDC,
        "DimArtist": CaptureMode.CDC,
        "DimTrack": CaptureMode.CDC,
        "DimDate": CaptureMode.SNAPSHOT,
        "FactStream": CaptureMode.WATERMARK,
    }
    assert CATALOG["FactStream"].cdc_column == "stream_timestamp"
    overridden = CATALOG.with_modes(parse_mode_overrides("DimUser=watermark, DimTrack=WATERMARK"))
    assert overridden["DimUser"].mode is CaptureMode.WATERMARK
    assert overridden["DimTrack"].mode is CaptureMode.WATERMARK
    assert overridden["DimArtist"].mode is CaptureMode.CDC
    with pytest.raises(CatalogError, match="unknown capture mode"):
        parse_mode_overrides("DimUser=nightly")
    with pytest.raises(CatalogError, match="unknown table 'DimNope'"):
        CATALOG.with_modes({"DimNope": CaptureMode.CDC})
    with pytest.raises(CatalogError, match="Table=mode"):
        parse_mode_overrides("DimUser")


@pytest.mark.parametrize("dialect", list(DIALECTS), ids=str)
def test_dml_binds_values_as_parameters(dialect: Dialect) -> None:
    sql = DIALECTS[dialect]
    table = CATALOG["DimUser"]
    assert sql.insert(table.name, table.column_names, rows=2).count("?") == 14
    assert sql.update(table).count("?") == len(table.columns)
    assert sql.delete(table).count("?") == 1
