"""Bronze as Dagster assets: an initial load is one single-run backfill over every partition."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from dagster import DagsterInstance, materialize

from spotify_assets.cli.commands import source_init
from spotify_assets.orchestration.assets.bronze import build_bronze_asset
from spotify_assets.orchestration.partitions import partition_range_tags
from spotify_assets.orchestration.run_resources import build_resources
from spotify_assets.orchestration.settings import Settings
from tests.helpers.source import HISTORY_END, HISTORY_START, SCALE, SEED


def test_initial_load_is_one_run_over_every_partition_then_incremental(tmp_path: Path) -> None:
    settings = Settings.from_env({"SPOTIFY_HOME": str(tmp_path)})
    source_init(settings, SCALE, SEED, HISTORY_END)
    resources = build_resources(settings)
    facts = settings.catalog["FactStream"]
    asset = build_bronze_asset(settings.catalog, facts)
    instance = DagsterInstance.ephemeral()
    last = HISTORY_END  # the open partition: the day the source clock is in
    result = materialize(
        [asset],
        resources=resources,
        instance=instance,
        tags=partition_range_tags(HISTORY_START, last),
    )
    materializations = result.asset_materializations_for_node(asset.op.name)
    partitions = (last - HISTORY_START).days + 1
    assert len(instance.get_runs()) == 1
    assert len(materializations) == partitions
    metadata = materializations[-1].metadata  # the last partition's: the run's details
    assert metadata["run_rows"].value == metadata["run_rows_read"].value == 10_000
    assert metadata["watermark_before"].value == "none"
    assert metadata["watermark_after"].value == f"{HISTORY_END} 00:00:00"
    assert "SELECT" in metadata["source_query"].value
    assert metadata["path"].value.endswith("lake/bronze/FactStream")

    again = materialize(
        [asset],
        resources=resources,
        instance=instance,
        partition_key=last.isoformat(),
        run_config={"ops": {asset.op.name: {"config": {"from_watermark": True}}}},
    )
    (incremental,) = again.asset_materializations_for_node(asset.op.name)
    assert incremental.metadata["run_rows_read"].value == 0
    assert (
        incremental.metadata["window"].value == f"[{HISTORY_END} 00:00:00, {HISTORY_END} 00:00:00)"
    )


def test_snapshot_table_is_unpartitioned(tmp_path: Path) -> None:
    settings = Settings.from_env({"SPOTIFY_HOME": str(tmp_path)})
    source_init(settings, SCALE, SEED, HISTORY_END)
    dates = settings.catalog["DimDate"]
    result = materialize(
        [build_bronze_asset(settings.catalog, dates)], resources=build_resources(settings)
    )
    (materialization,) = result.asset_materializations_for_node("bronze__DimDate")
    days = (HISTORY_END - (HISTORY_END - timedelta(days=90))).days + 1
    assert materialization.metadata["run_rows_read"].value == days
    assert materialization.metadata["dagster/row_count"].value == days
    assert materialization.metadata["window"].value == "whole table"
