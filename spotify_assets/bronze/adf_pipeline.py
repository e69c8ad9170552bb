"""Azure Data Factory JSON generated from the catalog: linked services, datasets, one pipeline.

Pure: catalog + T-SQL dialect in, ADF documents out (`build`), as ADF's git layout names them
(`pipeline/ingest_tables.json`, `dataset/*.json`, `linkedService/*.json`). `spotify-lakehouse adf
build` writes them to `adf/`; a test proves the committed files equal a fresh build.

The pipeline `ingest_tables` is the ADF implementation of the copy contract that
`LocalCopyRunner` implements in process. Per table, in a parallel ForEach whose iterations share
no variable (rule 2: each reads only its own item and its own activities' outputs):

1. `StateExists` / `InitState` / `LookupState`: read the table's ADF watermark state,
   `bronze/<Table>/_adf/state.json` (created with a null watermark on first use);
2. `CaptureHigh`: the source's clock minus the safety lag, read *before* the copy (rule 1);
3. `CopyTable`: the T-SQL `extract_query` of the dialect (the CDC function form for cdc tables)
   for `[low, end)`, landed as one parquet file `bronze/<Table>/_adf/landing/<ADF run id>.parquet`;
   the query is the one the run passes for the table (Dagster's reads the columns added to the
   source), else the catalog's.
   `low` is the window Dagster passed, else the state's watermark; `end` is the requested end
   capped at `high`, as `CopyRunner.plan` caps it;
4. `DropEmptyFile`: deletes the landed file when the window held no rows;
5. `WriteState`: only after the copy succeeded, the state advances by the bronze manifest's rule
   (`Manifest.with_extraction`: only over contiguously copied time, never past a gap).

Any failure posts `{pipeline_name, run_id, error}` to the alert webhook (its URL is a Key Vault
secret) and fails the run with ADF's error message.

Environment-specific names (Key Vault, lake account, file system, root folder) are placeholders
`{{name}}` that `render` fills at deploy time, so the committed JSON holds no environment and no
secret: the source's connection string is a Key Vault secret; the lake, Key Vault and the alert
webhook are reached with the factory's managed identity.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from spotify_assets.bronze.dialects import TsqlDialect
from spotify_assets.bronze.schema import EXTRACTED_AT, RUN_ID, WINDOW_END, WINDOW_START
from spotify_assets.bronze.windows import DEFAULT_SAFETY_LAG_SECONDS, Window, midnight
from spotify_assets.catalog.lake_paths import bronze_path
from spotify_assets.catalog.tables import CATALOG, CaptureMode, Catalog, Table, validate_identifier

PIPELINE_NAME = "ingest_tables"
TSQL = TsqlDialect()

# Linked services, datasets and Key Vault secret names.
KEY_VAULT = "KeyVault"
SOURCE_SQL = "SourceSql"
LAKE = "Lake"
SOURCE_QUERY = "SourceQuery"
LAKE_PARQUET = "LakeParquet"
LAKE_JSON = "LakeJson"
SOURCE_SECRET = "spotify-source-connection-string"
WEBHOOK_SECRET = "spotify-alert-webhook"

# Activities.
FOR_EACH = "IngestTables"
STATE_EXISTS = "StateExists"
INIT_STATE = "InitState"
LOOKUP_STATE = "LookupState"
CAPTURE_HIGH = "CaptureHigh"
COPY = "CopyTable"
DROP_EMPTY = "DropEmptyFile"
WRITE_STATE = "WriteState"

# Deploy-time settings, written `{{name}}` in the documents.
PLACEHOLDERS = ("key_vault_url", "lake_account", "lake_filesystem", "lake_root")
_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")

# The text of a T-SQL timestamp literal (DATETIME2(3)) in .NET format notation.
ADF_TIMESTAMP = "yyyy-MM-ddTHH:mm:ss.fff"
LOW_TOKEN, HIGH_TOKEN = "{low}", "{high}"
# Windows no real load uses: their literals mark where `low` and `high` go in a template.
_SENTINELS = Window(datetime(1111, 1, 1), datetime(2222, 2, 2))

_BRONZE = bronze_path("")
_STATE_FILE = "state.json"
_STORAGE_API = "2021-08-06"
_KEY_VAULT_API = "7.4"


def timestamp_text(value: datetime) -> str:
    """A window bound as the pipeline's parameters and the T-SQL literals spell it."""
    return value.isoformat(timespec="milliseconds")


def query_template(table: Table, carried: tuple[str, ...] = ()) -> str:
    """The dialect's own extraction query with `{low}` and `{high}` where the window goes;
    `carried`: new source columns the drift policy copies."""
    window = None if table.mode is CaptureMode.SNAPSHOT else _SENTINELS
    sql = TSQL.extract_query(table, window, carried)
    for bound, token in ((_SENTINELS.start, LOW_TOKEN), (_SENTINELS.end, HIGH_TOKEN)):
        text = timestamp_text(bound)
        # Every occurrence must be the literal's text, or the template would move other SQL.
        assert sql.count(text) == sql.count(TSQL.timestamp_literal(bound)), sql
        sql = sql.replace(text, token)
    return sql


def high_query(safety_lag: str) -> str:
    """The source's clock as one named column, the lag taken off the server's time.

    Same rule as `CopyRunner.high`: a simulated clock wins; T-SQL sources have none.
    """
    return (
        f"SELECT COALESCE(clock.simulated_now, DATEADD(SECOND, -{safety_lag}, clock.server_now)) "
        f"AS high FROM ({TSQL.source_now()}) AS clock (simulated_now, server_now)"
    )


# --- expressions (ADF expression language, without the leading '@') ---

_ENTRY = "pipeline().parameters.catalog[item().name]"
_STATE = f"activity('{LOOKUP_STATE}').output.firstRow.watermark"
_HIGH = f"activity('{CAPTURE_HIGH}').output.firstRow.high"
_REQUESTED_END = f"coalesce(item().high, {_HIGH})"
_CAPPED_END = f"if(less(ticks({_REQUESTED_END}), ticks({_HIGH})), {_REQUESTED_END}, {_HIGH})"
_PARTITION_START = "pipeline().parameters.partition_start"
LOW = f"coalesce(item().low, {_STATE}, {_PARTITION_START})"
# An end before `low` (high not past the watermark yet) makes the window empty, not inverted.
END = f"if(less(ticks({_CAPPED_END}), ticks({LOW})), {LOW}, {_CAPPED_END})"
LOW_TEXT = f"formatDateTime({LOW}, '{ADF_TIMESTAMP}')"
END_TEXT = f"formatDateTime({END}, '{ADF_TIMESTAMP}')"
# The run's query for the table (Dagster sends the one reading the source's new columns), else
# the catalog's.
_TEMPLATE = f"coalesce(item().query, {_ENTRY}.query)"
QUERY = f"replace(replace({_TEMPLATE}, '{LOW_TOKEN}', {LOW_TEXT}), '{HIGH_TOKEN}', {END_TEXT})"
_REACHED = f"coalesce({_STATE}, {_PARTITION_START})"
NEXT_WATERMARK = (
    f"if(equals({_ENTRY}.mode, '{CaptureMode.SNAPSHOT.value}'), {_STATE}, "
    f"if(and(lessOrEquals(ticks({LOW}), ticks({_REACHED})), "
    f"less(ticks({_REACHED}), ticks({END}))), {END_TEXT}, {_STATE}))"
)
RUN = "if(empty(pipeline().parameters.run_id), pipeline().RunId, pipeline().parameters.run_id)"
ROWS_COPIED = f"activity('{COPY}').output.rowsCopied"
# Lake-relative paths, as the bronze manifests record them; datasets and URLs add the root.
_TABLE_FOLDER = "concat('" + _BRONZE + "', item().name, '/_adf')"
LANDING_FOLDER = f"concat({_TABLE_FOLDER}, '/landing')"
LANDING_FILE = "concat(pipeline().RunId, '.parquet')"
LANDED = f"concat({LANDING_FOLDER}, '/', {LANDING_FILE})"
STATE_URL = (
    "concat('https://{{lake_account}}.blob.core.windows.net/{{lake_filesystem}}/{{lake_root}}', "
    f"{_TABLE_FOLDER}, '/{_STATE_FILE}')"
)
FAILURE = f"activity('{FOR_EACH}').error.message"


def _windowed(text: str) -> str:
    """A window bound, or '' for a snapshot (which has no window)."""
    return f"if(equals({_ENTRY}.mode, '{CaptureMode.SNAPSHOT.value}'), '', {text})"


def _in_file_system(path: str) -> str:
    """A lake-relative path expression as a folder of the file system."""
    return "concat('{{lake_root}}', " + path + ")"


def _expr(body: str) -> dict[str, str]:
    return {"type": "Expression", "value": "@" + body}


def _at(body: str) -> str:
    """An expression inside free-form JSON (a Web body), where ADF evaluates '@' strings."""
    return "@" + body


def _ref(name: str, kind: str, **parameters: object) -> dict[str, object]:
    ref: dict[str, object] = {"referenceName": name, "type": kind}
    if parameters:
        ref["parameters"] = parameters
    return ref


def _after(*activities: str, condition: str = "Succeeded") -> list[dict[str, object]]:
    return [{"activity": a, "dependencyConditions": [condition]} for a in activities]


def _policy(secure: bool = False) -> dict[str, object]:
    return {
        "retry": 2,
        "retryIntervalInSeconds": 60,
        "secureInput": secure,
        "secureOutput": secure,
        "timeout": "0.12:00:00",
    }


# --- linked services and datasets ---


def linked_services() -> dict[str, dict[str, Any]]:
    return {
        KEY_VAULT: {
            "type": "AzureKeyVault",
            "typeProperties": {"baseUrl": "{{key_vault_url}}"},
        },
        # Managed identity: a URL and no credential.
        LAKE: {
            "type": "AzureBlobFS",
            "typeProperties": {"url": "https://{{lake_account}}.dfs.core.windows.net/"},
        },
        SOURCE_SQL: {
            "type": "AzureSqlDatabase",
            "typeProperties": {
                "connectionString": {
                    "type": "AzureKeyVaultSecret",
                    "secretName": SOURCE_SECRET,
                    "store": _ref(KEY_VAULT, "LinkedServiceReference"),
                }
            },
        },
    }


def _lake_location(kind: str) -> dict[str, Any]:
    return {
        "linkedServiceName": _ref(LAKE, "LinkedServiceReference"),
        "parameters": {"folder": {"type": "String"}, "file": {"type": "String"}},
        "type": kind,
        "typeProperties": {
            "location": {
                "type": "AzureBlobFSLocation",
                "fileSystem": "{{lake_filesystem}}",
                "folderPath": _expr("dataset().folder"),
                "fileName": _expr("dataset().file"),
            }
        },
    }


def datasets() -> dict[str, dict[str, Any]]:
    parquet = _lake_location("Parquet")
    parquet["typeProperties"]["compressionCodec"] = "snappy"
    state = _lake_location("Json")
    state["typeProperties"]["encodingName"] = "UTF-8"
    return {
        # No table: every read is a query.
        SOURCE_QUERY: {
            "linkedServiceName": _ref(SOURCE_SQL, "LinkedServiceReference"),
            "type": "AzureSqlTable",
            "typeProperties": {},
        },
        LAKE_PARQUET: parquet,
        LAKE_JSON: state,
    }


# --- the pipeline ---


def catalog_entry(table: Table) -> dict[str, str]:
    """What the pipeline knows of a table: capture mode and query template."""
    return {
        "mode": table.mode.value,
        "query": query_template(table),
    }


def _state_dataset() -> dict[str, object]:
    folder = _expr(_in_file_system(_TABLE_FOLDER))
    return _ref(LAKE_JSON, "DatasetReference", folder=folder, file=_STATE_FILE)


def _lake_read() -> dict[str, object]:
    return {"type": "AzureBlobFSReadSettings", "recursive": False}


def _put_state(name: str, body: dict[str, object], headers: dict[str, str]) -> dict[str, Any]:
    """A Web activity writing the state blob in one Put Blob (atomic: readers see old or new)."""
    return {
        "name": name,
        "policy": _policy(),
        "type": "WebActivity",
        "typeProperties": {
            "authentication": {"type": "MSI", "resource": "https://storage.azure.com/"},
            "body": body,
            "headers": {
                "Content-Type": "application/json",
                "x-ms-blob-type": "BlockBlob",
                "x-ms-version": _STORAGE_API,
                **headers,
            },
            "method": "PUT",
            "url": _expr(STATE_URL),
        },
    }


def _table_activities() -> list[dict[str, Any]]:
    """One iteration: one table. Every expression reads `item()` or this iteration's outputs."""
    state_exists = {
        "name": STATE_EXISTS,
        "policy": _policy(),
        "type": "GetMetadata",
        "typeProperties": {
            "dataset": _state_dataset(),
            # With `exists` listed, a missing file is an answer, not a failure.
            "fieldList": ["exists"],
            "formatSettings": {"type": "JsonReadSettings"},
            "storeSettings": _lake_read(),
        },
    }
    initial_state = {
        "table": _at("item().name"),
        "watermark": None,
        "adf_run_id": _at("pipeline().RunId"),
    }
    init_state = {
        "dependsOn": _after(STATE_EXISTS),
        "name": INIT_STATE,
        "type": "IfCondition",
        "typeProperties": {
            "expression": _expr(f"activity('{STATE_EXISTS}').output.exists"),
            # If-None-Match: never overwrite a state another run created meanwhile.
            "ifFalseActivities": [_put_state("CreateState", initial_state, {"If-None-Match": "*"})],
        },
    }
    lookup_state = {
        "dependsOn": _after(INIT_STATE),
        "name": LOOKUP_STATE,
        "policy": _policy(),
        "type": "Lookup",
        "typeProperties": {
            "dataset": _state_dataset(),
            "firstRowOnly": True,
            "source": {
                "type": "JsonSource",
                "formatSettings": {"type": "JsonReadSettings"},
                "storeSettings": _lake_read(),
            },
        },
    }
    capture_high = {
        "dependsOn": _after(LOOKUP_STATE),
        "name": CAPTURE_HIGH,
        "policy": _policy(),
        "type": "Lookup",
        "typeProperties": {
            "dataset": _ref(SOURCE_QUERY, "DatasetReference"),
            "firstRowOnly": True,
            "source": {
                "type": "AzureSqlSource",
                # String interpolation: the lag is an int parameter, spliced as a number.
                "sqlReaderQuery": {
                    "type": "Expression",
                    "value": high_query("@{pipeline().parameters.safety_lag_seconds}"),
                },
            },
        },
    }
    copy = {
        "dependsOn": _after(CAPTURE_HIGH),
        "inputs": [_ref(SOURCE_QUERY, "DatasetReference")],
        "name": COPY,
        "outputs": [
            _ref(
                LAKE_PARQUET,
                "DatasetReference",
                folder=_expr(_in_file_system(LANDING_FOLDER)),
                file=_expr(LANDING_FILE),
            )
        ],
        # A retry re-reads the same bounded window into the same file: harmless.
        "policy": _policy(),
        "type": "Copy",
        # Monitoring shows these per activity run: the ADF resource reads the table, the
        # window actually copied and the landed file from them.
        "userProperties": [
            {"name": "table", "value": _expr("item().name")},
            {"name": "window_start", "value": _expr(_windowed(LOW_TEXT))},
            {"name": "window_end", "value": _expr(_windowed(END_TEXT))},
            {"name": "file", "value": _expr(LANDED)},
        ],
        "typeProperties": {
            "enableStaging": False,
            "sink": {
                "type": "ParquetSink",
                "formatSettings": {"type": "ParquetWriteSettings"},
                "storeSettings": {"type": "AzureBlobFSWriteSettings"},
            },
            "source": {
                "type": "AzureSqlSource",
                # The audit columns bronze adds (rule 5); `_op`/`_seq` come from the query in
                # cdc mode, and the lake-side commit adds them for the other modes.
                "additionalColumns": [
                    {"name": EXTRACTED_AT, "value": _expr("utcNow()")},
                    {"name": WINDOW_START, "value": _expr(_windowed(LOW_TEXT))},
                    {"name": WINDOW_END, "value": _expr(_windowed(END_TEXT))},
                    {"name": RUN_ID, "value": _expr(RUN)},
                ],
                "partitionOption": "None",
                "queryTimeout": "02:00:00",
                "sqlReaderQuery": _expr(QUERY),
            },
        },
    }
    drop_empty = {
        "dependsOn": _after(COPY),
        "name": DROP_EMPTY,
        "type": "IfCondition",
        "typeProperties": {
            "expression": _expr(f"equals({ROWS_COPIED}, 0)"),
            "ifTrueActivities": [
                {
                    "name": "DeleteEmptyFile",
                    "policy": _policy(),
                    "type": "Delete",
                    "typeProperties": {
                        "dataset": _ref(
                            LAKE_PARQUET,
                            "DatasetReference",
                            folder=_expr(_in_file_system(LANDING_FOLDER)),
                            file=_expr(LANDING_FILE),
                        ),
                        "enableLogging": False,
                        "storeSettings": _lake_read(),
                    },
                }
            ],
        },
    }
    next_state = {
        "table": _at("item().name"),
        "watermark": _at(NEXT_WATERMARK),
        "window_start": _at(_windowed(LOW_TEXT)),
        "window_end": _at(_windowed(END_TEXT)),
        "rows": _at(ROWS_COPIED),
        "file": _at(f"if(equals({ROWS_COPIED}, 0), json('null'), {LANDED})"),
        "adf_run_id": _at("pipeline().RunId"),
        "run_id": _at(RUN),
    }
    write_state = _put_state(WRITE_STATE, next_state, {})
    write_state["dependsOn"] = _after(DROP_EMPTY)
    return [
        state_exists,
        init_state,
        lookup_state,
        capture_high,
        copy,
        drop_empty,
        write_state,
    ]


def _alert_activities() -> list[dict[str, Any]]:
    """On failure: post the alert, and fail the run with ADF's own message either way."""
    webhook = {
        "dependsOn": _after(FOR_EACH, condition="Failed"),
        "name": "GetAlertWebhook",
        # The webhook URL carries its own signature: keep it out of the run's logs.
        "policy": _policy(secure=True),
        "type": "WebActivity",
        "typeProperties": {
            "authentication": {"type": "MSI", "resource": "https://vault.azure.net"},
            "method": "GET",
            "url": f"{{{{key_vault_url}}}}secrets/{WEBHOOK_SECRET}?api-version={_KEY_VAULT_API}",
        },
    }
    post = {
        "dependsOn": _after("GetAlertWebhook"),
        "name": "PostAlert",
        "policy": {**_policy(), "secureInput": True},
        "type": "WebActivity",
        "typeProperties": {
            "body": {
                "error": _at(FAILURE),
                "pipeline_name": _at("pipeline().Pipeline"),
                "run_id": _at("pipeline().RunId"),
            },
            "headers": {"Content-Type": "application/json"},
            "method": "POST",
            "url": _expr("activity('GetAlertWebhook').output.value"),
        },
    }
    # Without it a handled failure would let the run report success.
    fail = {
        "dependsOn": _after(FOR_EACH, condition="Failed"),
        "name": "FailRun",
        "type": "Fail",
        "typeProperties": {"errorCode": "IngestionFailed", "message": _expr(FAILURE)},
    }
    return [webhook, post, fail]


def pipeline(catalog: Catalog) -> dict[str, Any]:
    tables = [{"name": t.name, "low": None, "high": None, "query": None} for t in catalog]
    return {
        "activities": [
            {
                "name": FOR_EACH,
                "type": "ForEach",
                "typeProperties": {
                    "activities": _table_activities(),
                    "batchCount": len(tables),
                    "isSequential": False,
                    "items": _expr("pipeline().parameters.tables"),
                },
            },
            *_alert_activities(),
        ],
        # Runs queue rather than overlap, so two runs never race on a table's state.
        "concurrency": 1,
        "description": "Copies source windows into the lake, one parallel iteration per table "
        "(generated from the table catalog by `spotify-lakehouse adf build`).",
        "parameters": {
            "tables": {"type": "Array", "defaultValue": tables},
            "run_id": {"type": "String", "defaultValue": ""},
            "safety_lag_seconds": {"type": "Int", "defaultValue": int(DEFAULT_SAFETY_LAG_SECONDS)},
            # Configuration, not part of the catalog: every run passes it (no default).
            "partition_start": {"type": "String"},
            "catalog": {
                "type": "Object",
                "defaultValue": {t.name: catalog_entry(t) for t in catalog},
            },
        },
    }


def build(catalog: Catalog = CATALOG) -> dict[str, dict[str, Any]]:
    """Every document by its path under `adf/`, in deployment order (dependencies first)."""
    documents: dict[str, dict[str, Any]] = {}
    for folder, items in (
        ("linkedService", linked_services()),
        ("dataset", datasets()),
        ("pipeline", {PIPELINE_NAME: pipeline(catalog)}),
    ):
        for name, properties in items.items():
            documents[f"{folder}/{name}.json"] = {"name": name, "properties": properties}
    return documents


def dumps(document: dict[str, Any]) -> str:
    """Stable text: sorted keys, so a rebuild changes the file only when the content changes."""
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write(out: Path, documents: Mapping[str, dict[str, Any]]) -> list[str]:
    """Write the documents under `out` and delete stale ones; returns the paths written."""
    folders = {path.split("/")[0] for path in documents}
    for folder in folders:
        for stale in (out / folder).glob("*.json"):
            if f"{folder}/{stale.name}" not in documents:
                stale.unlink()
    for path, document in documents.items():
        target = out / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(dumps(document), encoding="utf-8")
    return sorted(documents)


# --- deployment and runs ---


@dataclass(frozen=True)
class DeploySettings:
    """The environment the placeholders name: a Key Vault and the lake (`SPOTIFY_LAKE_URL`)."""

    key_vault_url: str
    lake_account: str
    lake_filesystem: str
    lake_root: str  # folder of the lake root in the file system, '' or ending in '/'

    @classmethod
    def of(cls, key_vault_url: str, lake_url: str) -> DeploySettings:
        """From the vault's URL and `abfss://<fs>@<account>.dfs.core.windows.net/<root>`."""
        vault = urlsplit(key_vault_url)
        if vault.scheme != "https" or not vault.hostname:
            raise ValueError(
                f"Key Vault URL {key_vault_url!r} is not https://<vault>.vault.azure.net/"
            )
        lake = urlsplit(lake_url)
        host = lake.hostname or ""
        if (
            lake.scheme != "abfss"
            or not lake.username
            or not host.endswith(".dfs.core.windows.net")
        ):
            raise ValueError(
                f"lake URL {lake_url!r} is not "
                "abfss://<file system>@<account>.dfs.core.windows.net/<root>"
            )
        root = lake.path.strip("/")
        # Values land inside expression string literals and URLs: allow only plain names.
        for part in [lake.username, host.split(".")[0], *filter(None, root.split("/"))]:
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", part):
                raise ValueError(f"lake URL {lake_url!r}: {part!r} is not a plain name")
        return cls(
            key_vault_url=f"https://{vault.hostname}/",
            lake_account=host.split(".")[0],
            lake_filesystem=lake.username,
            lake_root=f"{root}/" if root else "",
        )


def render(document: dict[str, Any], settings: DeploySettings) -> dict[str, Any]:
    """The document with its `{{placeholders}}` filled in."""
    values = {name: getattr(settings, name) for name in PLACEHOLDERS}

    def fill(value: Any) -> Any:
        if isinstance(value, str):
            return _PLACEHOLDER.sub(lambda m: values[m.group(1)], value)
        if isinstance(value, list):
            return [fill(v) for v in value]
        if isinstance(value, dict):
            return {k: fill(v) for k, v in value.items()}
        return value

    return fill(document)


def run_parameters(
    windows: Mapping[str, Window | None],
    run_id: str,
    partition_start: date,
    queries: Mapping[str, str] | None = None,
) -> dict[str, object]:
    """The `createRun` parameters of a Dagster run: the tables, each one's window and query
    template, and the partition start (where a first load without a window starts).

    A window is `[low, high)` computed by Dagster from the bronze manifests; the pipeline caps
    `high` at the source's clock. None: a snapshot, or let the pipeline start from its state.
    A query (`query_template`, with the columns the source has now) replaces the catalog's.
    """
    tables = []
    for name, window in windows.items():
        validate_identifier(name)
        low, high = (
            (timestamp_text(window.start), timestamp_text(window.end)) if window else (None, None)
        )
        query = (queries or {}).get(name)
        tables.append({"name": name, "low": low, "high": high, "query": query})
    return {
        "tables": tables,
        "run_id": run_id,
        "partition_start": timestamp_text(midnight(partition_start)),
    }
