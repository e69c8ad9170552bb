"""Dagster resources. `build_resources` picks the set for the environment, once, at load;
`source_database` and `copy_runner` give the same source and lake, resolved, outside Dagster.

The Azure set is imported only when chosen: the local environment loads without the azure extra.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dagster import EnvVar

from resources.copy_runner import LocalCopyRunner
from resources.engines import LocalGold, LocalSilver
from resources.lake import LakeStorage
from resources.lease import LakeWriter
from resources.source_db import SourceDatabase, sqlite_connection_string
from resources.spark import SparkKind, SparkResource

if TYPE_CHECKING:  # settings imports resources.odbc: a runtime import here would be circular
    from spotify_assets.orchestration.settings import Settings


def source_database(settings: Settings) -> SourceDatabase:
    """The source with its connection string resolved: for code that runs outside Dagster (the
    CLI, the planning of runs, reports). Dagster's resources come from `build_resources`."""
    return _source(settings, settings.source_odbc)


def copy_runner(settings: Settings) -> LocalCopyRunner:
    """A copy runner over `source_database`: what plans runs and reads bronze outside Dagster,
    in either environment (the Azure runner plans the same way)."""
    return _copy_runner(settings, source_database(settings))


def _source(settings: Settings, configured: str | EnvVar | None) -> SourceDatabase:
    connection = configured or sqlite_connection_string(settings.embedded_source_path)
    return SourceDatabase(
        connection_string=connection,
        capture_modes=settings.capture_modes,
        partition_start=settings.partition_start.isoformat(),
    )


def _dagster_source(settings: Settings) -> SourceDatabase:
    """In Dagster a configured connection string stays an `EnvVar`, resolved when a run or a
    sensor starts, so its password never appears in the UI, in run config or in storage."""
    return _source(settings, EnvVar("SPOTIFY_SOURCE_ODBC") if settings.source_odbc else None)


def _copy_runner(settings: Settings, source: SourceDatabase) -> LocalCopyRunner:
    return LocalCopyRunner(
        source=source,
        lake=LakeStorage(url=settings.lake_url),
        safety_lag_seconds=settings.safety_lag_seconds,
    )


def build_resources(settings: Settings) -> dict[str, object]:
    from spotify_assets.orchestration.settings import Environment

    if settings.env is Environment.AZURE:
        return azure_resources(settings)
    runner = _copy_runner(settings, _dagster_source(settings))
    spark = (
        SparkResource(kind=SparkKind.REMOTE, remote_url=settings.spark_remote)
        if settings.spark_remote
        else SparkResource(memory_pool_gib=settings.spark_memory_gib)
    )
    return {
        "source_db": runner.source,
        "copy_runner": runner,
        "silver_engine": LocalSilver(lake=runner.lake, spark=spark, chunk_rows=settings.chunk_rows),
        "gold_engine": LocalGold(lake=runner.lake, spark=spark, chunk_rows=settings.chunk_rows),
        "lake_writer": LakeWriter(lake=runner.lake, wait_seconds=settings.writer_wait_seconds),
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
    lake = LakeStorage(url=settings.lake_url)
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
