"""What bronze currently holds for one table: files, the windows whose rows are live, the watermark.

Bronze files are immutable. Each extraction covers a window of change time; a newer extraction of
an overlapping window supersedes the older rows in the overlap (a backdated refresh, or a retry
after a crash) without deleting them. A manifest version is the whole state, published in one
atomic step, so the data of an extraction and the watermark it advances become visible together.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import date, datetime

from spotify_assets.bronze.profile import FileProfile
from spotify_assets.bronze.windows import Window, subtract


@dataclass(frozen=True)
class BronzeFile:
    path: str  # lake-relative
    rows: int
    run_id: str
    partition: date | None  # None: an unpartitioned (snapshot) table
    window: Window | None  # the extraction window within this partition; None: whole table
    live: tuple[Window, ...] = ()  # parts of `window` not superseded by a newer extraction
    fingerprint: str | None = None  # snapshot files: digest of the source rows
    # When the file was written, in ms since the epoch (the clock of Delta's add actions), for
    # reconciliation to tell a layer built before it; None in manifests older than the field.
    written: int | None = None
    # Its size as written, and its rows' profile for reconciliation (partitioned tables): None
    # in manifests older than the fields.
    bytes: int | None = None
    profile: FileProfile | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "path": self.path,
            "rows": self.rows,
            "run_id": self.run_id,
            "partition": self.partition.isoformat() if self.partition else None,
            "window": self.window.to_json() if self.window else None,
            "live": [w.to_json() for w in self.live],
            "fingerprint": self.fingerprint,
            "written": self.written,
            "bytes": self.bytes,
            "profile": self.profile.to_json() if self.profile else None,
        }

    @classmethod
    def from_json(cls, value: dict) -> BronzeFile:
        return cls(
            path=value["path"],
            rows=value["rows"],
            run_id=value["run_id"],
            partition=date.fromisoformat(value["partition"]) if value["partition"] else None,
            window=Window.from_json(value["window"]) if value["window"] else None,
            live=tuple(Window.from_json(w) for w in value["live"]),
            fingerprint=value.get("fingerprint"),
            written=value.get("written"),
            bytes=value.get("bytes"),
            profile=FileProfile.from_json(value["profile"]) if value.get("profile") else None,
        )

    @property
    def fully_live(self) -> bool:
        return self.window is None or self.live == (self.window,)


@dataclass(frozen=True)
class Manifest:
    table: str
    version: int = 0
    watermark: datetime | None = None  # everything with change time < watermark is in bronze
    files: tuple[BronzeFile, ...] = field(default=())

    def with_extraction(
        self, window: Window | None, files: list[BronzeFile], history_start: datetime
    ) -> Manifest:
        """The next version: `files` cover `window` (None: the whole table) and supersede it."""
        kept: list[BronzeFile] = []
        for old in self.files:
            live = () if window is None else tuple(subtract(old.live, window))
            if live:
                kept.append(replace(old, live=live))
        added = [replace(f, live=(f.window,) if f.window else ()) for f in files]
        return Manifest(
            table=self.table,
            version=self.version + 1,
            watermark=self._advanced(window, history_start),
            files=tuple(kept + added),
        )

    def _advanced(self, window: Window | None, history_start: datetime) -> datetime | None:
        """The watermark moves only over contiguously loaded time, never past a gap."""
        if window is None:
            return self.watermark
        reached = self.watermark or history_start
        if window.start <= reached < window.end:
            return window.end
        return self.watermark

    def files_of(self, partition: date | None) -> list[BronzeFile]:
        return [f for f in self.files if f.partition == partition]

    def partitions(self) -> list[date]:
        return sorted({f.partition for f in self.files if f.partition is not None})

    def to_json(self) -> dict[str, object]:
        return {
            "table": self.table,
            "version": self.version,
            "watermark": self.watermark.isoformat() if self.watermark else None,
            "files": [f.to_json() for f in self.files],
        }

    @classmethod
    def from_json(cls, value: dict) -> Manifest:
        return cls(
            table=value["table"],
            version=value["version"],
            watermark=datetime.fromisoformat(value["watermark"]) if value["watermark"] else None,
            files=tuple(BronzeFile.from_json(f) for f in value["files"]),
        )
