"""Dagster resources. `build_resources` picks the set for the environment, once, at load."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dagster import EnvVar

from resources.copy_runner import LocalCopyRunner
from resources.lake import LakeStorage
from resources.source_db import SourceDatabase, sqlite_connection_string
from resources.spark import SparkKind, SparkResource

if TYPE_CHECKING:  # settings imports resources.odbc: a runtime import here would be circular
    from spotify_assets.settings import Settings


def source_database(settings: Settings, *, in_dagster: bool = True) -> SourceDatabase:
    """The source resource; in Dagster a configured connection string stays an `EnvVar`, so its
    password never appears in the UI or in run config. Outside Dagster (the CLI) it is resolved."""
    if not settings.source_odbc:
        connection: str | EnvVar = sqlite_connection_string(settings.embedded_source_path)
    elif in_dagster:
        connection = EnvVar("SPOTIFY_SOURCE_ODBC")
    else:
        connection = settings.source_odbc
    return SourceDatabase(connection_string=connection, capture_modes=settings.capture_modes)


def copy_runner(settings: Settings, *, in_dagster: bool = True) -> LocalCopyRunner:
    return LocalCopyRunner(
        source=source_database(settings, in_dagster=in_dagster),
        lake=LakeStorage(url=settings.lake_url),
        safety_lag_seconds=settings.safety_lag_seconds,
    )


def build_resources(settings: Settings) -> dict[str, object]:
    runner = copy_runner(settings)
    spark = (
        SparkResource(kind=SparkKind.REMOTE, remote_url=settings.spark_remote)
        if settings.spark_remote
        else SparkResource()
    )
    return {"source_db": runner.source, "lake": runner.lake, "copy_runner": runner, "spark": spark}
