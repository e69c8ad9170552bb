"""The data lake: a local folder or any fsspec URL (abfss:// on ADLS Gen2).

A handful of verbs: immutable parquet files, and small JSON objects published atomically and
exclusively (created once, never overwritten). Nothing is ever renamed as a directory, because
object stores (and Azurite) cannot.
"""

from __future__ import annotations

import json
import os
import posixpath
import uuid
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from dagster import ConfigurableResource
from fsspec.implementations.local import LocalFileSystem
from pydantic import Field, PrivateAttr


class LakeConflictError(RuntimeError):
    """An object that must be created exactly once already exists (a concurrent writer)."""


class LakeStorage(ConfigurableResource):
    """Root of the lake; every path below is relative to it (`bronze/FactStream/...`)."""

    url: str = Field(description="Local path or fsspec URL of the lake root.")
    storage_options: dict[str, Any] = Field(
        default_factory=dict, description="fsspec/adlfs options (credentials from the env)."
    )
    _fs: fsspec.AbstractFileSystem | None = PrivateAttr(default=None)
    _root: str = PrivateAttr(default="")

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        if self._fs is None:
            self._fs, self._root = fsspec.core.url_to_fs(self.url, **self.storage_options)
        return self._fs

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, LocalFileSystem)

    def path(self, relative: str) -> str:
        """The filesystem path of a lake-relative path."""
        self.fs  # noqa: B018 - resolves the root
        return posixpath.join(self._root, relative)

    def uri(self, relative: str) -> str:
        """A full URL for humans and metadata (never carries credentials)."""
        return posixpath.join(self.url.rstrip("/"), relative)

    # --- files ---

    def write_parquet(self, relative: str, table: pa.Table) -> int:
        """Write an immutable parquet file; returns its size in bytes."""
        path = self.path(relative)
        self.fs.makedirs(posixpath.dirname(path), exist_ok=True)
        pq.write_table(table, path, filesystem=self._arrow_fs(), compression="zstd")
        return self.fs.size(path)

    def read_parquet(self, relatives: list[str], columns: list[str] | None = None) -> pa.Table:
        tables = [
            pq.read_table(self.path(r), filesystem=self._arrow_fs(), columns=columns)
            for r in relatives
        ]
        return pa.concat_tables(tables, promote_options="default") if tables else pa.table({})

    def _arrow_fs(self) -> Any:
        # pyarrow's own local filesystem is much faster than going through the fsspec handler.
        return pa.fs.LocalFileSystem() if self.is_local else self.fs

    # --- small JSON objects ---

    def read_json(self, relative: str) -> Any:
        with self.fs.open(self.path(relative), "rb") as f:
            return json.load(f)

    def create_json(self, relative: str, value: Any) -> None:
        """Publish atomically and exclusively; `LakeConflictError` if it already exists."""
        path = self.path(relative)
        self.fs.makedirs(posixpath.dirname(path), exist_ok=True)
        data = json.dumps(value, indent=1, sort_keys=True).encode()
        if self.is_local:
            tmp = _durable_temp_copy(path, data)
            try:
                os.link(tmp, path)  # atomic, and fails if the target exists
            except FileExistsError:
                raise LakeConflictError(f"{self.uri(relative)} already exists") from None
            finally:
                os.unlink(tmp)
        else:
            # One blob upload is atomic; the existence check is not (yet) a conditional write.
            if self.fs.exists(path):
                raise LakeConflictError(f"{self.uri(relative)} already exists")
            self.fs.pipe_file(path, data)

    def list_names(self, relative_dir: str) -> list[str]:
        """Names directly below a directory; empty if it does not exist."""
        path = self.path(relative_dir)
        if not self.fs.exists(path):
            return []
        return sorted(posixpath.basename(p.rstrip("/")) for p in self.fs.ls(path, detail=False))


def _durable_temp_copy(path: str, data: bytes) -> str:
    """`data` written and fsynced next to `path`, ready to be renamed or linked into place."""
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return tmp
