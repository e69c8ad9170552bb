"""Where each table lives in the lake, relative to its root, and the layer names it is filed
under: the only place these paths are spelled.

    bronze/<Table>                  parquet files and their manifests
    silver/<table>                  Delta, the clean rows
    silver/_quarantine/<table>      Delta, the rows that failed a rule
    gold/<table or aggregate>       Delta
    gold/_state/<table>             the silver version each SCD2 dimension was applied from
    gold/_unmatched/<table>         Delta, per day the dimension keys a fact's rows hold that no
                                    dimension row has yet (late members)
    gold/_periods/<table>           Delta, when each version of a dimension the fact looks up
                                    is in force, while a build of the fact reads them

A layer's name is also its Dagster asset group and the first part of its assets' keys.
"""

from __future__ import annotations

from spotify_assets.catalog.tables import Table

SOURCE = "source"
BRONZE = "bronze"
SILVER = "silver"
GOLD = "gold"


def bronze_path(table_name: str) -> str:
    """Bronze is filed under the source's table name (`FactStream`)."""
    return f"{BRONZE}/{table_name}"


def silver_path(table: Table) -> str:
    return f"{SILVER}/{table.lake_name}"


def quarantine_path(table: Table) -> str:
    return f"{SILVER}/_quarantine/{table.lake_name}"


def gold_path(name: str) -> str:
    """A gold Delta table: a catalog table's lake name, or an aggregate's name."""
    return f"{GOLD}/{name}"


def gold_state_path(table: Table) -> str:
    return f"{GOLD}/_state/{table.lake_name}"


def unmatched_path(table: Table) -> str:
    return f"{GOLD}/_unmatched/{table.lake_name}"


def periods_path(table: Table) -> str:
    return f"{GOLD}/_periods/{table.lake_name}"
