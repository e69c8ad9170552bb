"""The data lake: a local folder, or ADLS Gen2 / Azure Blob storage through `abfss://` URLs.

A handful of verbs: immutable parquet files, and small JSON objects published atomically and
exclusively (created once, never overwritten). Nothing is ever renamed as a directory, because
object stores (and Azurite) cannot.

On Azure, files go through adlfs and Delta tables through delta-rs; both are given the same
account, taken from the environment when first needed, never from configuration: so credentials
never reach Dagster's config, logs or metadata (`uri()` is the configured URL, which holds none).
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem
from pydantic import BaseModel, Field, PrivateAttr

AZURE_SCHEMES = frozenset({"abfss", "abfs", "az"})
# Azurite's well-known account and key, published with the emulator: not a secret.
EMULATOR_ACCOUNT = "devstoreaccount1"
EMULATOR_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
EMULATOR_URL = "http://127.0.0.1:10000"
_STORAGE_SCOPE = "https://storage.azure.com/.default"
# A bearer token handed to delta-rs must outlive the table operation it is used for.
_TOKEN_MARGIN_SECONDS = 300
# An unreachable storage account (network down, firewall, wrong endpoint) fails a command within
# about a minute: the SDKs' defaults retry with backoff for minutes, each try waiting up to a
# minute (azure-storage-blob) or 30 s (object_store), and a run hung for over 10 minutes. A
# refused connection is tried 3 times, an unanswered one twice; throttling still gets 3 retries.
BLOB_CLIENT_LIMITS: dict[str, int] = {
    "connection_timeout": 10,
    "read_timeout": 30,  # between two reads of a response, not for a whole download
    "retry_total": 3,
    "retry_connect": 2,
    "retry_read": 1,
    "initial_backoff": 1,
    "increment_base": 2,
}
DELTA_CLIENT_LIMITS: dict[str, str] = {
    "connect_timeout": "10s",
    "max_retries": "3",
    "retry_timeout": "60s",  # no try starts later than this after the first
}


class LakeConflictError(RuntimeError):
    """An object that must be created exactly once already exists (a concurrent writer)."""


class LakeFileError(RuntimeError):
    """A lake file is missing, damaged or cannot be written (a full disk). The message is one
    line for the user: the file, its table, and what to run; `problem` is what is wrong alone."""

    def __init__(self, message: str, problem: str = "") -> None:
        super().__init__(message)
        self.problem = problem or message


# What a user runs when a lake file is missing or damaged (README, "When something goes wrong").
REPAIR_COMMAND = "spotify-lakehouse verify --repair"


class LakeConfigError(ValueError):
    """The lake URL or the Azure settings of the environment cannot work."""


@dataclass(frozen=True)
class AzureAccount:
    """How to reach the storage account of an Azure lake. `key` None: sign in with
    `DefaultAzureCredential`. `endpoint` None: `https://<name>.blob.core.windows.net`."""

    name: str
    key: str | None = field(default=None, repr=False)
    endpoint: str | None = None  # the blob endpoint, account included (Azurite: http://host/acct)

    @classmethod
    def from_env(cls, url: str, environ: Mapping[str, str] = os.environ) -> AzureAccount:
        """From, in this order: `AZURE_STORAGE_CONNECTION_STRING`; Azurite
        (`AZURE_STORAGE_USE_EMULATOR=true`, `AZURITE_BLOB_STORAGE_URL`); or
        `AZURE_STORAGE_ACCOUNT_NAME` (else the URL's account), `AZURE_STORAGE_ACCOUNT_KEY`
        (else `DefaultAzureCredential`) and `AZURE_STORAGE_ENDPOINT`."""
        in_url = _account_in_url(url)
        if connection := environ.get("AZURE_STORAGE_CONNECTION_STRING"):
            account = _from_connection_string(connection)
        elif _true(environ.get("AZURE_STORAGE_USE_EMULATOR")):
            name = environ.get("AZURE_STORAGE_ACCOUNT_NAME") or in_url or EMULATOR_ACCOUNT
            emulator = environ.get("AZURITE_BLOB_STORAGE_URL") or EMULATOR_URL
            key = environ.get("AZURE_STORAGE_ACCOUNT_KEY") or EMULATOR_KEY
            account = cls(name, key, f"{emulator.rstrip('/')}/{name}")
        else:
            name = environ.get("AZURE_STORAGE_ACCOUNT_NAME") or in_url
            if not name:
                raise LakeConfigError(
                    f"lake URL {url!r} names no storage account: use "
                    "abfss://<container>@<account>.dfs.core.windows.net/<path> or set "
                    "AZURE_STORAGE_ACCOUNT_NAME"
                )
            key = environ.get("AZURE_STORAGE_ACCOUNT_KEY") or None
            account = cls(name, key, environ.get("AZURE_STORAGE_ENDPOINT") or None)
        if in_url and in_url != account.name:
            raise LakeConfigError(
                f"lake URL {url!r} is in account {in_url!r} but the environment's Azure "
                f"settings are for account {account.name!r}"
            )
        if account.endpoint and not account.key:
            raise LakeConfigError(
                "a custom Azure storage endpoint needs an account key (AZURE_STORAGE_ACCOUNT_KEY)"
            )
        return account

    @property
    def allow_http(self) -> bool:
        return bool(self.endpoint) and urlsplit(self.endpoint).scheme == "http"

    def fsspec_options(self) -> dict[str, Any]:
        """adlfs options. Listings are never cached: other processes (Sail, another run)
        write the same folders, and a stale listing would hide their manifests or tables."""
        options: dict[str, Any] = {"use_listings_cache": False}
        if self.endpoint:
            scheme = urlsplit(self.endpoint).scheme
            options["connection_string"] = (
                f"DefaultEndpointsProtocol={scheme};AccountName={self.name};"
                f"AccountKey={self.key};BlobEndpoint={self.endpoint};"
            )
        elif self.key:
            options |= {"account_name": self.name, "account_key": self.key}
        else:
            options |= {"account_name": self.name, "anon": False}  # DefaultAzureCredential
        return options

    def bound_requests(self, fs: fsspec.AbstractFileSystem) -> None:
        """Give adlfs's filesystem a blob client within `BLOB_CLIENT_LIMITS` (adlfs passes no
        client options through). fsspec hands out one filesystem per options: bound it once."""
        if getattr(fs, "lake_bounded", False):
            return
        from azure.storage.blob.aio import BlobServiceClient

        endpoint = self.endpoint or f"https://{self.name}.blob.core.windows.net"
        key = {"account_name": self.name, "account_key": self.key} if self.key else None
        fs.service_client = BlobServiceClient(
            endpoint, credential=key or fs.credential, **BLOB_CLIENT_LIMITS
        )
        fs.lake_bounded = True

    def delta_options(self) -> dict[str, str]:
        """delta-rs (object_store) options, except the bearer token of `DefaultAzureCredential`."""
        options = {"account_name": self.name}
        if self.key:
            options["account_key"] = self.key
        if self.endpoint:
            options["endpoint"] = self.endpoint
        if self.allow_http:
            options["allow_http"] = "true"
        return options

    def object_store_env(self) -> dict[str, str]:
        """The same settings as the environment variables object_store reads (Sail's server
        reads its Azure settings from the environment, and knows no connection strings)."""
        names = {
            "account_name": "AZURE_STORAGE_ACCOUNT_NAME",
            "account_key": "AZURE_STORAGE_ACCOUNT_KEY",
            "endpoint": "AZURE_STORAGE_ENDPOINT",
            "allow_http": "AZURE_ALLOW_HTTP",
        }
        return {names[k]: v for k, v in self.delta_options().items()}


def _account_in_url(url: str) -> str | None:
    """The account of `abfss://<container>@<account>.dfs.core.windows.net/...`; None for the
    short form `az://<container>/...`."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if not parts.username:
        return None
    if not host.endswith((".dfs.core.windows.net", ".blob.core.windows.net")):
        raise LakeConfigError(
            f"lake URL {url!r}: use abfss://<container>@<account>.dfs.core.windows.net/<path>, "
            "or az://<container>/<path> with the account in the environment"
        )
    return host.split(".", 1)[0]


def _from_connection_string(connection: str) -> AzureAccount:
    from azure.core.utils import parse_connection_string

    try:
        fields = parse_connection_string(connection)  # keys lower-cased
    except ValueError:
        raise LakeConfigError("AZURE_STORAGE_CONNECTION_STRING is malformed") from None
    if _true(fields.get("usedevelopmentstorage")):
        return AzureAccount(EMULATOR_ACCOUNT, EMULATOR_KEY, f"{EMULATOR_URL}/{EMULATOR_ACCOUNT}")
    if not fields.get("accountname") or not fields.get("accountkey"):
        raise LakeConfigError(
            "AZURE_STORAGE_CONNECTION_STRING needs AccountName and AccountKey (or unset it and "
            "sign in with DefaultAzureCredential)"
        )
    name, endpoint = fields["accountname"], fields.get("blobendpoint")
    suffix = fields.get("endpointsuffix", "core.windows.net")
    if not endpoint and suffix != "core.windows.net":  # a sovereign cloud
        endpoint = f"{fields.get('defaultendpointsprotocol', 'https')}://{name}.blob.{suffix}"
    return AzureAccount(name, fields["accountkey"], endpoint)


def _true(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes"}


def object_store_env_from_connection_string(environ: Mapping[str, str]) -> dict[str, str]:
    """`AZURE_STORAGE_CONNECTION_STRING` as object_store's variables; empty when it is unset."""
    connection = environ.get("AZURE_STORAGE_CONNECTION_STRING")
    return _from_connection_string(connection).object_store_env() if connection else {}


class LakeStorage(BaseModel):
    """Root of the lake; every path below is relative to it (`bronze/FactStream/...`). A plain
    object (no Dagster needed to read the lake); `LakeResource` is the Dagster resource."""

    url: str = Field(
        description="Local path, or abfss://<container>@<account>.dfs.core.windows.net/<path> "
        "(credentials come from the environment, never from here)."
    )
    _fs: fsspec.AbstractFileSystem | None = PrivateAttr(default=None)
    _root: str = PrivateAttr(default="")
    _account: AzureAccount | None = PrivateAttr(default=None)
    _credential: Any = PrivateAttr(default=None)
    _token: Any = PrivateAttr(default=None)

    @property
    def is_azure(self) -> bool:
        return urlsplit(self.url).scheme in AZURE_SCHEMES

    @property
    def azure(self) -> AzureAccount:
        """The Azure account of the lake, read from the environment once."""
        if not self.is_azure:
            raise LakeConfigError(f"lake {self.url!r} is not on Azure")
        if self._account is None:
            parts = urlsplit(self.url)
            if parts.password or parts.query:
                raise LakeConfigError(
                    "the lake URL must not carry credentials: set them in the environment"
                )
            self._account = AzureAccount.from_env(self.url)
        return self._account

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        if self._fs is None:
            options = self.azure.fsspec_options() if self.is_azure else {}
            fs, self._root = fsspec.core.url_to_fs(self.url, **options)
            if self.is_azure:
                self.azure.bound_requests(fs)
            self._fs = fs
        return self._fs

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, LocalFileSystem)

    def path(self, relative: str) -> str:
        """What every reader and writer (adlfs, Spark, delta-rs) accepts for a lake-relative
        path: a filesystem path for a local lake, else the full URL."""
        if self.is_azure or not self.is_local:
            return self.uri(relative)
        return posixpath.join(self._root, relative)

    def uri(self, relative: str) -> str:
        """A full URL for humans and metadata (never carries credentials)."""
        return posixpath.join(self.url.rstrip("/"), relative)

    def delta_storage_options(self) -> dict[str, str] | None:
        """delta-rs's storage options for this lake (None when local). Without an account key,
        delta-rs gets a bearer token from `DefaultAzureCredential`, as adlfs signs in."""
        if not self.is_azure:
            return None
        options = self.azure.delta_options() | DELTA_CLIENT_LIMITS
        if not self.azure.key:
            options["bearer_token"] = self._bearer_token()
        return options

    def _bearer_token(self) -> str:
        if self._token is None or self._token.expires_on - time.time() < _TOKEN_MARGIN_SECONDS:
            if self._credential is None:
                from azure.identity import DefaultAzureCredential

                self._credential = DefaultAzureCredential()
            self._token = self._credential.get_token(_STORAGE_SCOPE)
        return self._token.token

    # --- files ---

    def write_parquet(self, relative: str, table: pa.Table) -> int:
        """Write an immutable parquet file; returns its size in bytes."""
        path = self.path(relative)
        with self._writing(relative):
            self._make_parent(path)
            pq.write_table(table, path, filesystem=self._arrow_fs(), compression="zstd")
            return self.fs.size(path)

    def read_parquet(self, relatives: list[str], columns: list[str] | None = None) -> pa.Table:
        """The rows of whole files, one after the other. Each file is read on its own, not as a
        dataset: pyarrow's dataset module imports pandas (~0.4 CPU s an idle `run` saves)."""
        tables = []
        for relative in relatives:
            with pq.ParquetFile(self.path(relative), filesystem=self._arrow_fs()) as file:
                tables.append(file.read(columns=columns))
        return pa.concat_tables(tables, promote_options="default") if tables else pa.table({})

    def parquet_rows(self, relative: str) -> int:
        """Rows of a parquet file, from its footer (`FileNotFoundError` if it is missing)."""
        return pq.read_metadata(self.path(relative), filesystem=self._arrow_fs()).num_rows

    def _arrow_fs(self) -> Any:
        # pyarrow's own local filesystem is much faster than going through the fsspec handler.
        return pa.fs.LocalFileSystem() if self.is_local else self.fs

    def _make_parent(self, path: str) -> None:
        # Object stores have no folders; adlfs's makedirs would only probe (or create) the
        # container on every write. The container is provisioned with the storage account.
        if self.is_local:
            self.fs.makedirs(posixpath.dirname(path), exist_ok=True)

    # --- small JSON objects ---

    def read_json(self, relative: str) -> Any:
        with self.fs.open(self.path(relative), "rb") as f:
            return json.load(f)

    def create_json(self, relative: str, value: Any) -> None:
        """Publish atomically and exclusively; `LakeConflictError` if it already exists."""
        path = self.path(relative)
        data = json.dumps(value, indent=1, sort_keys=True).encode()
        try:
            with self._writing(relative):
                self._make_parent(path)
                if self.is_local:
                    tmp = _durable_temp_copy(path, data)
                    try:
                        os.link(tmp, path)  # atomic, and fails if the target exists
                    finally:
                        os.unlink(tmp)
                else:
                    # One upload, atomic; for mode "create" adlfs sends `If-None-Match: *`, so
                    # the store itself refuses a second creation (no check-then-act).
                    self.fs.pipe_file(path, data, mode="create")
        except FileExistsError:
            raise LakeConflictError(f"{self.uri(relative)} already exists") from None

    def delete(self, relative: str) -> None:
        """Remove a file; nothing happens if it is already gone."""
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self.path(relative))

    def set_aside(self, relative: str, folder: str) -> str:
        """Move a damaged file into `folder` (next to it), out of every reader's way, kept for
        inspection; returns its new lake-relative path."""
        target = posixpath.join(posixpath.dirname(relative), folder, posixpath.basename(relative))
        with self._writing(target):
            self._make_parent(self.path(target))
            self.fs.mv(self.path(relative), self.path(target))
        return target

    def remove_tree(self, relative: str) -> None:
        """Delete a folder and everything below it (a damaged table about to be rebuilt)."""
        with self._writing(relative):
            if self.fs.exists(self.path(relative)):
                self.fs.rm(self.path(relative), recursive=True)

    @contextlib.contextmanager
    def _writing(self, relative: str) -> Iterator[None]:
        """OS errors of a write (a full disk, no permission) as one line naming the file;
        `FileExistsError` passes through: it means a concurrent writer, not a fault."""
        try:
            yield
        except FileExistsError:
            raise
        except OSError as error:
            reason = error.strerror or str(error).splitlines()[0]
            raise LakeFileError(f"cannot write {self.uri(relative)}: {reason}") from error

    def files_below(self, relative_dir: str) -> set[str]:
        """Lake-relative paths of every file below a directory, in one recursive listing; empty
        if it does not exist."""
        found = self.fs.find(self.path(relative_dir))  # as the filesystem names them: under _root
        prefix = posixpath.join(self._root, relative_dir) + "/"
        return {posixpath.join(relative_dir, p.removeprefix(prefix)) for p in found}

    def file_sizes(self, relative_dir: str) -> dict[str, int]:
        """The size in bytes of each file directly below a directory, by name, from one listing
        (no file opened); empty if it does not exist."""
        try:
            entries = self.fs.ls(self.path(relative_dir), detail=True)
        except FileNotFoundError:
            return {}
        return {
            posixpath.basename(e["name"].rstrip("/")): e["size"]
            for e in entries
            if e["type"] == "file"
        }

    def list_names(self, relative_dir: str) -> list[str]:
        """Names directly below a directory; empty if it does not exist."""
        try:  # one listing, no existence probe first: a round trip saved on object stores
            entries = self.fs.ls(self.path(relative_dir), detail=False)
        except FileNotFoundError:
            return []
        return sorted(posixpath.basename(p.rstrip("/")) for p in entries)


def _durable_temp_copy(path: str, data: bytes) -> str:
    """`data` written and fsynced next to `path`, ready to be renamed or linked into place."""
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except OSError:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)  # a full disk: leave no partial copy behind
        raise
    return tmp
