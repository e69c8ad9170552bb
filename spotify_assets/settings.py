"""Settings from the environment (DESIGN.md §10), read once at load time."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from resources.odbc import Dialect, dialect_of


class Environment(StrEnum):
    LOCAL = "local"
    AZURE = "azure"


@dataclass(frozen=True)
class Settings:
    home: Path
    source_odbc: str | None  # None: the embedded SQLite source under `home`
    env: Environment
    capture_modes: str

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Settings:
        home = Path(environ.get("SPOTIFY_HOME") or ".data").expanduser().resolve()
        env = (environ.get("SPOTIFY_ENV") or Environment.LOCAL.value).strip().lower()
        if env not in set(Environment):
            raise ValueError(f"SPOTIFY_ENV={env!r} is not one of: local, azure")
        return cls(
            home=home,
            source_odbc=environ.get("SPOTIFY_SOURCE_ODBC") or None,
            env=Environment(env),
            capture_modes=environ.get("SPOTIFY_CAPTURE_MODES", ""),
        )

    @property
    def embedded_source_path(self) -> Path:
        return self.home / "source.db"

    @property
    def source_dialect(self) -> Dialect:
        return dialect_of(self.source_odbc) if self.source_odbc else Dialect.SQLITE
