"""The source as it is against the catalog, before and during every extraction.

- Columns: a catalog column the source no longer has (renamed or dropped) stops the extraction,
  naming the table and the columns; a column the catalog does not declare follows the table's
  drift policy (`rules.DriftPolicy`): carried into bronze as text and on into silver, dropped,
  or an error. In cdc mode the change table must capture every column bronze reads.
- Values: a value that does not fit its declared type (text in an integer column, an integer
  too large) is read as NULL and its raw text kept in the audit column `_untyped`, a JSON object
  {column: raw text}; silver quarantines the row with the rule `values_typed`. Bronze stays raw.
  A text that is not UTF-8 (SQLite keeps any bytes) fits no type: its raw text escapes them.
  A timestamp text with a zone offset is typed as its UTC time.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from spotify_assets.catalog.rules import DriftPolicy
from spotify_assets.catalog.tables import UNTYPED, CatalogError, Table, validate_identifier


class SourceSchemaError(ValueError):
    """The source's columns do not match the catalog in a way the drift policy does not allow."""


@dataclass(frozen=True)
class SourceColumns:
    """What an extraction reads beyond the catalog's columns."""

    carried: tuple[str, ...] = ()  # new columns bronze copies as text, silver carries
    ignored: tuple[str, ...] = ()  # new columns not copied: policy drop, or not captured


def compare_columns(
    table: Table,
    found: Sequence[str],
    captured: Sequence[str] | None = None,
    exact_case: str | None = None,
) -> SourceColumns:
    """Check the source's columns of `table` (and, in cdc mode, those its change capture
    records) against the catalog. Names compare case-insensitively, as SQL does, except where
    the engine named by `exact_case` matches quoted names with their case."""
    if not found:
        raise SourceSchemaError(
            f"{table.name}: the source has no such table; create it or check SPOTIFY_SOURCE_ODBC"
        )
    if exact_case:
        catalog = {c.lower(): c for c in table.column_names}
        for name in found:
            spelled = catalog.get(name.lower(), name)
            if spelled != name:
                raise SourceSchemaError(
                    f'{table.name}: column "{name}" differs from the catalog\'s {spelled} in case '
                    f'only, which {exact_case} tells apart: rename it (ALTER TABLE "{table.name}" '
                    f'RENAME COLUMN "{name}" TO {spelled})'
                )
    missing = _missing(table.column_names, found)
    if missing:
        raise SourceSchemaError(
            f"{table.name}: the source has no column(s) {', '.join(missing)} (renamed or "
            f"dropped; it has {', '.join(found)}): restore them or update the catalog"
        )
    if captured is not None and (missing := _missing(table.column_names, captured)):
        raise SourceSchemaError(
            f"{table.name}: its change capture records no column(s) {', '.join(missing)}: "
            "add them to the change table and its triggers (or re-enable CDC on SQL Server)"
        )
    new = tuple(_missing(found, table.column_names))
    if not new:
        return SourceColumns()
    policy = table.silver.new_columns
    if policy is DriftPolicy.FAIL:
        raise SourceSchemaError(
            f"{table.name}: new column(s) {', '.join(new)} in the source and the drift policy is "
            "fail: declare them in the catalog or change the table's policy"
        )
    if policy is DriftPolicy.DROP:
        return SourceColumns(ignored=new)
    uncaptured = _missing(new, captured) if captured is not None else []
    carried = tuple(c for c in new if c not in uncaptured)
    for name in carried:
        try:
            validate_identifier(name)
        except CatalogError:
            raise SourceSchemaError(
                f"{table.name}: new column {name!r} cannot be carried (not a plain identifier): "
                "rename it in the source or set the table's drift policy to drop"
            ) from None
    return SourceColumns(carried=carried, ignored=tuple(uncaptured))


def table_spelled_otherwise(table: Table, spelled: str, engine: str) -> SourceSchemaError:
    """The error for a catalog table the source holds only in another case (`factstream`, made
    by an unquoted CREATE TABLE), which `engine` tells apart from the catalog's spelling."""
    return SourceSchemaError(
        f'{table.name}: the source has no table "{table.name}" but has {spelled}, which differs '
        f"in case only ({engine} keeps the case of a quoted name and lowers an unquoted one): "
        f'rename it (ALTER TABLE {spelled} RENAME TO "{table.name}")'
    )


def _missing(wanted: Sequence[str], present: Sequence[str]) -> list[str]:
    have = {name.lower() for name in present}
    return [name for name in wanted if name.lower() not in have]


def text_schema(schema: pa.Schema, keep: Sequence[str]) -> pa.Schema:
    """`schema` with every column but `keep` read as text: a read that cannot fail on a value."""
    return pa.schema(f if f.name in keep else pa.field(f.name, pa.string()) for f in schema)


# A server prints a whole NUMERIC as `185.00` (an integer column retyped in the source): text
# reaches an integer through this exact decimal, so a fraction still fails the cast.
_WHOLE_NUMBER_TEXT = pa.decimal128(38, 18)


def _cast(values: pa.ChunkedArray | pa.Array, to: pa.DataType) -> pa.ChunkedArray | pa.Array:
    if pa.types.is_binary(values.type):
        values = values.cast(pa.string())  # a text's bytes: not UTF-8, it fits no type
    try:
        return values.cast(to)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        if not pa.types.is_string(values.type):
            raise
        if pa.types.is_integer(to):
            return values.cast(_WHOLE_NUMBER_TEXT).cast(to)
        if pa.types.is_timestamp(to) and to.tz is None:
            # A text with a zone offset ('…+02:00', '…Z'; SQLite keeps any) is its UTC time:
            # the lake's times are naive UTC, and dropping the offset would re-date it.
            return values.cast(pa.timestamp(to.unit, "UTC")).cast(to)
        raise


def type_values(text: pa.Table, schema: pa.Schema) -> pa.Table:
    """Rows read as text, cast to `schema`, plus `_untyped`: the raw text of every value that
    does not fit its type (NULL in its column), as a JSON object per row (NULL: all fitted)."""
    columns, untyped = [], {}
    for field in schema:
        column = text[field.name]
        try:
            columns.append(_cast(column, field.type))
            continue
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
        values = []
        for i, raw in enumerate(column.to_pylist()):
            try:
                values.append(_cast(pa.array([raw], column.type), field.type)[0].as_py())
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                values.append(None)
                untyped.setdefault(i, {})[field.name] = as_text(raw)
        columns.append(pa.chunked_array([pa.array(values, field.type)], field.type))
    raw = [json.dumps(untyped[i]) if i in untyped else None for i in range(text.num_rows)]
    typed = pa.Table.from_arrays(columns, schema=schema)
    return typed.append_column(UNTYPED, pa.array(raw, pa.string()))


def as_text(raw: object) -> object:
    """A raw value as JSON keeps it: a text's bytes that are not UTF-8 as `\\xNN` escapes."""
    return raw.decode("utf-8", "backslashreplace") if isinstance(raw, bytes) else raw


def text_values(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """A column read as text (or as a text's bytes, SQLite's) as strings, bytes that are not
    UTF-8 escaped."""
    if not pa.types.is_binary(column.type):
        return column
    try:
        return column.cast(pa.string())
    except pa.ArrowInvalid:
        return pa.chunked_array([pa.array([as_text(v) for v in column.to_pylist()], pa.string())])


def all_typed(rows: pa.Table) -> pa.Table:
    """Rows read with their declared types: `_untyped` is NULL throughout."""
    return rows.append_column(UNTYPED, pa.nulls(rows.num_rows, pa.string()))


def untyped_rows(rows: pa.Table) -> int:
    return rows.num_rows - pc.count(rows[UNTYPED]).as_py() if UNTYPED in rows.column_names else 0
