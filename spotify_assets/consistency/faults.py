"""What `spotify-lakehouse verify` finds: lake files that are missing, damaged, or contradict the
layer below them, each with what rebuilds it (README, "When something goes wrong")."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from enum import StrEnum

from spotify_assets.catalog import lake_paths


class Layer(StrEnum):
    BRONZE = lake_paths.BRONZE
    SILVER = lake_paths.SILVER
    GOLD = lake_paths.GOLD


@dataclass(frozen=True)
class Fault:
    layer: Layer
    table: str  # the source table whose chain holds the file (catalog name)
    path: str  # lake-relative: a bronze file or manifest, or a Delta table
    problem: str
    # bronze: the partitions to re-extract (None: the whole table, e.g. its manifest is damaged)
    days: tuple[date, ...] | None = None
    empty: bool = False  # a Delta table holding nothing while the layer below holds rows

    def describe(self) -> str:
        return f"{self.layer} {self.table}: {self.path} {self.problem}"
