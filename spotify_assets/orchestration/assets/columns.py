"""Column schemas of the assets, from the catalog's described columns (the UI's Columns tab)."""

from collections.abc import Iterable

from dagster import TableColumn, TableSchema

from spotify_assets.catalog.columns import DescribedColumn

COLUMN_SCHEMA = "dagster/column_schema"


def column_schema(columns: Iterable[DescribedColumn]) -> TableSchema:
    return TableSchema(
        columns=[TableColumn(c.name, c.type, description=c.description) for c in columns]
    )
