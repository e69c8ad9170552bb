"""Dagster resources. `build_resources` picks the set for the environment, once, at load; they
are the plain objects of `resources.py` (same classes, same settings), configurable in Dagster.

The Azure set is imported only when chosen: the local environment loads without the azure extra.
"""

from __future__ import annotations

from dagster import EnvVar

from resources.dagster_resources import LakeResource, LakeWriter, LocalCopyResource, SourceResource
from resources.engines import LocalGold, LocalSilver
from resources.spark import SparkKind, SparkResource
from spotify_assets.orchestration.resources import source_of
from spotify_assets.orchestration.settings import Environment, Settings


def _dagster_source(settings: Settings) -> SourceResource:
    """In Dagster a configured connection string stays an `EnvVar`, resolved when a run or a
    sensor starts, so its password never appears in the UI, in run config or in storage."""
    configured = EnvVar("SPOTIFY_SOURCE_ODBC") if settings.source_odbc else None
    return source_of(settings, configured, SourceResource)


def build_resources(settings: Settings) -> dict[str, object]:
    if settings.env is Environment.AZURE:
        return azure_resources(settings)
    lake = LakeResource(url=settings.lake_url)
    runner = LocalCopyResource(
        source=_dagster_source(settings),
        lake=lake,
        safety_lag_seconds=settings.safety_lag_seconds,
        chunk_rows=settings.chunk_rows,
    )
    spark = (
        SparkResource(kind=SparkKind.REMOTE, remote_url=settings.spark_remote)
        if settings.spark_remote
        else SparkResource(memory_pool_gib=settings.spark_memory_gib)
    )
    return {
        "source_db": runner.source,
        "copy_runner": runner,
        "silver_engine": LocalSilver(lake=lake, spark=spark, chunk_rows=settings.chunk_rows),
        "gold_engine": LocalGold(lake=lake, spark=spark, chunk_rows=settings.chunk_rows),
        "lake_writer": LakeWriter(lake=lake, wait_seconds=settings.writer_wait_seconds),
    }


def azure_resources(settings: Settings) -> dict[str, object]:
    """Data Factory, Databricks and the lake on ADLS Gen2, every name and secret from the
    environment (README, "Deploying to Azure"); nothing connects before a run needs it."""
    try:
        from resources.adf import data_factory_resource
        from resources.azure_copy import AzureCopyRunner
        from resources.databricks_engines import (
            DatabricksSilverRunner,
            DatabricksWorkspace,
            DltPipelineRunner,
        )
    except ImportError as error:
        raise ImportError(
            f"SPOTIFY_ENV=azure needs the project's azure extra (pip install -e '.[azure]'): "
            f"{error}"
        ) from error
    source = _dagster_source(settings)
    lake = LakeResource(url=settings.lake_url)
    workspace = DatabricksWorkspace(host=EnvVar("DATABRICKS_HOST"))
    data_factory = data_factory_resource()
    return {
        "source_db": source,
        "copy_runner": AzureCopyRunner(
            source=source,
            lake=lake,
            safety_lag_seconds=settings.safety_lag_seconds,
            data_factory=data_factory,
        ),
        "data_factory": data_factory,
        "silver_engine": DatabricksSilverRunner(
            lake=lake,
            workspace=workspace,
            bundle_files=EnvVar("SPOTIFY_DATABRICKS_FILES"),
            cluster_id=settings.databricks_silver_cluster,
        ),
        "gold_engine": DltPipelineRunner(
            lake=lake, workspace=workspace, pipeline_id=EnvVar("SPOTIFY_DLT_PIPELINE_ID")
        ),
        "lake_writer": LakeWriter(lake=lake, wait_seconds=settings.writer_wait_seconds),
    }
