"""The columns of every layer's tables, described: what a person reads on each asset in the UI.

A source column is described in its table's entry, a derived column or a measure in its spec, and
each column a layer adds once, in `AUDIT_COLUMNS`; the lists below put them in each layer's order.
"""

from __future__ import annotations

from dataclasses import dataclass

from spotify_assets.catalog.gold_spec import (
    END_AT,
    START_AT,
    Aggregate,
    Calendar,
    PointInTimeFact,
    Scd2Dimension,
)
from spotify_assets.catalog.tables import (
    AUDIT_COLUMNS,
    CHANGE_AT,
    CHANGE_DATE,
    CHANGE_OP,
    CHANGE_SEQ,
    EFFECTIVE_AT,
    EXTRACTED_AT,
    RUN_ID,
    UNTYPED,
    VERSION_AT,
    WINDOW_END,
    WINDOW_START,
    Catalog,
    CatalogError,
    ColumnType,
    Table,
    TableRole,
)

_AUDIT_TYPES: dict[str, ColumnType] = {
    CHANGE_OP: ColumnType.STRING,
    CHANGE_SEQ: ColumnType.BIGINT,
    CHANGE_AT: ColumnType.TIMESTAMP,
    EXTRACTED_AT: ColumnType.TIMESTAMP,
    WINDOW_START: ColumnType.TIMESTAMP,
    WINDOW_END: ColumnType.TIMESTAMP,
    RUN_ID: ColumnType.STRING,
    UNTYPED: ColumnType.STRING,
    VERSION_AT: ColumnType.TIMESTAMP,
    EFFECTIVE_AT: ColumnType.TIMESTAMP,
    CHANGE_DATE: ColumnType.DATE,
    START_AT: ColumnType.TIMESTAMP,
    END_AT: ColumnType.TIMESTAMP,
}
# Counts and sums of integers.
_MEASURE_TYPE = ColumnType.BIGINT.value
# A source column the catalog does not declare, carried by the drift policy.
CARRIED = "A column the source gained after the catalog was written, carried as text."


@dataclass(frozen=True)
class DescribedColumn:
    name: str
    type: str
    description: str


def audit_column(name: str) -> DescribedColumn:
    return DescribedColumn(name, _AUDIT_TYPES[name].value, AUDIT_COLUMNS[name])


def describe(table: Table, name: str) -> str:
    """A column of `table` in bronze or silver: its own description, or the audit column's."""
    if name in AUDIT_COLUMNS:
        return AUDIT_COLUMNS[name]
    for column in (*source_columns(table), *_derived(table)):
        if column.name == name:
            return column.description
    return CARRIED


def source_columns(table: Table) -> list[DescribedColumn]:
    return [DescribedColumn(c.name, c.type.value, c.description) for c in table.columns]


def _derived(table: Table) -> list[DescribedColumn]:
    return [DescribedColumn(d.name, d.type, d.description) for d in table.silver.derived]


def silver_columns(table: Table) -> list[DescribedColumn]:
    """Declared and derived columns, the version columns, the partition date last."""
    audit = [CHANGE_OP, CHANGE_SEQ, VERSION_AT]
    if table.role is TableRole.DIMENSION:
        audit.append(EFFECTIVE_AT)
    if table.change_time_column:
        audit.append(CHANGE_DATE)
    return [*source_columns(table), *_derived(table), *map(audit_column, audit)]


def gold_columns(catalog: Catalog, name: str) -> list[DescribedColumn]:
    """The columns of the gold table `name` (a catalog table's lake name or an aggregate's)."""
    for aggregate in catalog.aggregates:
        if aggregate.name == name:
            return _aggregate_columns(catalog, aggregate)
    table = catalog[name]
    match table.gold:
        case Scd2Dimension():
            versions = [audit_column(START_AT), audit_column(END_AT)]
            return [*source_columns(table), *_derived(table), *versions]
        case Calendar():
            return [*source_columns(table), *_derived(table)]
        case PointInTimeFact() as spec:
            return _fact_columns(catalog, table, spec)
    raise CatalogError(f"{table.name} has no gold table")


def _fact_columns(catalog: Catalog, fact: Table, spec: PointInTimeFact) -> list[DescribedColumn]:
    """The fact's columns, those of its lookups as they were at its time, its day last."""
    carried = []
    for lookup in spec.lookups:
        dimension = catalog[lookup.dimension]
        for name in lookup.columns:
            column = dimension.column(name)
            carried.append(
                DescribedColumn(
                    name,
                    column.type.value,
                    f"{column.description} From {dimension.name}, as it was at "
                    f"`{spec.time_column}`.",
                )
            )
    day = DescribedColumn(
        spec.date_column,
        ColumnType.DATE.value,
        f"The UTC day of `{spec.time_column}`: the partition.",
    )
    return [*source_columns(fact), *carried, day]


def _aggregate_columns(catalog: Catalog, aggregate: Aggregate) -> list[DescribedColumn]:
    """The grouping columns as the fact describes them, the measures, the day last."""
    fact = catalog.fact
    assert isinstance(fact.gold, PointInTimeFact)
    of_fact = {c.name: c for c in _fact_columns(catalog, fact, fact.gold)}
    day = fact.gold.date_column
    measures = [DescribedColumn(m.name, _MEASURE_TYPE, m.description) for m in aggregate.measures]
    groups = [of_fact[name] for name in aggregate.group_by if name != day]
    return [*groups, *measures, of_fact[day]]
