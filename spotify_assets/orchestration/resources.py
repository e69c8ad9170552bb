"""The source and the copy runner as the settings configure them, resolved, as plain objects:
what the CLI, the planning of runs and the idle `run`'s decision use outside Dagster (which they
never import). Dagster's resources, the same classes, come from `run_resources.build_resources`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

from resources.copy_runner import LocalCopyRunner
from resources.lake import LakeStorage
from resources.source_db import SourceDatabase, sqlite_connection_string

if TYPE_CHECKING:  # settings imports resources.odbc: a runtime import here would be circular
    from spotify_assets.orchestration.settings import Settings

S = TypeVar("S", bound=SourceDatabase)


def source_database(settings: Settings) -> SourceDatabase:
    """The source with its connection string resolved: for code that runs outside Dagster (the
    CLI, the planning of runs, reports). Dagster's resources come from `build_resources`."""
    return source_of(settings, settings.source_odbc, SourceDatabase)


def source_of(settings: Settings, connection: str | None, kind: type[S]) -> S:
    """The source of `settings` as a `kind` (the plain object, or Dagster's resource, whose
    `connection` may be an `EnvVar`); None: the embedded SQLite file under SPOTIFY_HOME."""
    return kind(
        connection_string=connection or sqlite_connection_string(settings.embedded_source_path),
        capture_modes=settings.capture_modes,
        partition_start=settings.partition_start.isoformat(),
    )


def copy_runner(settings: Settings) -> LocalCopyRunner:
    """A copy runner over `source_database`: what plans runs and reads bronze outside Dagster,
    in either environment (the Azure runner plans the same way)."""
    return LocalCopyRunner(
        source=source_database(settings),
        lake=LakeStorage(url=settings.lake_url),
        safety_lag_seconds=settings.safety_lag_seconds,
        chunk_rows=settings.chunk_rows,
    )
