"""The source tables as observable external assets: the first link of the lineage in the UI."""

from collections.abc import Iterator

from dagster import (
    AssetExecutionContext,
    AssetKey,
    AssetSpec,
    DataVersion,
    MetadataValue,
    ObserveResult,
    ResourceParam,
    multi_observable_source_asset,
)

from resources.source_db import SourceDatabase
from spotify_assets.catalog.columns import source_columns
from spotify_assets.catalog.lake_paths import SOURCE
from spotify_assets.catalog.tables import Catalog, Table
from spotify_assets.orchestration.assets.columns import COLUMN_SCHEMA, column_schema

# The observation's op, named to sort after every layer's asset op (`bronze__…`, `gold__…`,
# `silver__…`). Dagster 1.13 takes a run's partitions from the last asset step of its plan, sorted
# by name, and then plans every asset of the run over them: behind a partitioned step, each
# unpartitioned asset of a range run (this observation, the calendar, gold's dimensions) was
# planned once per day (11 events a day of a first load); behind this one, each asset is planned
# over its own partitions.
OBSERVATION_OP = f"{SOURCE}_observation"


def source_key(table: Table) -> AssetKey:
    return AssetKey([SOURCE, table.name])


def source_spec(table: Table, dialect: str) -> AssetSpec:
    return AssetSpec(
        key=source_key(table),
        description=f"{table.description} Source table `{table.name}`, captured by "
        f"{table.mode.value}.",
        group_name=SOURCE,
        kinds={dialect},
        metadata={
            COLUMN_SCHEMA: column_schema(source_columns(table)),
            "capture_mode": table.mode.value,
            "cdc_column": table.cdc_column or "",
            "key": ", ".join(table.key),
        },
    )


def build_source_observation(catalog: Catalog, dialect: str):
    """One observation for all source tables: a single cheap connection, a version per table."""

    specs = [source_spec(t, dialect) for t in catalog]

    @multi_observable_source_asset(
        specs=specs, name=OBSERVATION_OP, can_subset=True, group_name=SOURCE
    )
    def observe_source(
        context: AssetExecutionContext, source_db: ResourceParam[SourceDatabase]
    ) -> Iterator[ObserveResult]:
        with source_db.connect() as conn:
            session = source_db.session_on(conn)
            for table in catalog:
                if source_key(table) not in context.selected_asset_keys:
                    continue
                stats = session.table_stats(table)
                version = "|".join(f"{k}={v}" for k, v in sorted(stats.items()))
                yield ObserveResult(
                    asset_key=source_key(table),
                    data_version=DataVersion(version),
                    metadata={k: _metadata_value(v) for k, v in stats.items()},
                )

    return observe_source


def _metadata_value(value: object) -> MetadataValue:
    if isinstance(value, int):
        return MetadataValue.int(value)
    return MetadataValue.text("" if value is None else str(value))
