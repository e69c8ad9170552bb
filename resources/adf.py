"""Azure Data Factory: deploy the generated JSON, run the ingestion pipeline, report what it copied.

Requests are raw REST JSON against the documented management API (api-version 2018-06-01)
through azure-core's pipeline (token, retries): azure-mgmt-datafactory 10.0.0 mis-serializes
typed activity models (`CopyActivity` is sent as "type": "Execution"), and the documents are JSON
already. Nothing touches the network before a method that needs it runs: the credential is
created with the first client, not at import or when Dagster loads the definitions.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from azure.core import PipelineClient
from azure.core.credentials import TokenCredential
from azure.core.pipeline import policies
from azure.core.pipeline.transport import HttpTransport
from azure.core.rest import HttpRequest, HttpResponse
from dagster import (
    ConfigurableResource,
    DagsterExecutionInterruptedError,
    EnvVar,
    Failure,
    MetadataValue,
)
from pydantic import Field

from spotify_assets.bronze.adf_pipeline import PIPELINE_NAME, DeploySettings, render, run_parameters
from spotify_assets.bronze.windows import Window

API_VERSION = "2018-06-01"
ARM_ENDPOINT = "https://management.azure.com"
ARM_SCOPE = "https://management.azure.com/.default"
COPY_ACTIVITY = "CopyTable"

# Pipeline run statuses (PipelineRun.status) after which nothing changes any more.
SUCCEEDED = "Succeeded"
FINISHED = frozenset({SUCCEEDED, "Failed", "Cancelled"})
# REST collection of each document folder of `adf/`, in deployment order.
_COLLECTIONS = {"linkedService": "linkedservices", "dataset": "datasets", "pipeline": "pipelines"}


class AdfError(RuntimeError):
    """The management API refused a request; the message is ADF's own."""


class AdfRunError(Failure):
    """A pipeline run failed, was cancelled or timed out; the description is ADF's message."""


@dataclass(frozen=True)
class TableCopy:
    """What the pipeline's Copy activity did for one table (from its activity run)."""

    table: str
    rows_read: int
    rows_copied: int
    window: Window | None  # the window actually copied (after capping at `high`); None: snapshot
    file: str | None  # the landed parquet file, lake-relative; None when it held no rows
    activity_run_id: str


@dataclass(frozen=True)
class AdfRun:
    run_id: str
    status: str
    tables: dict[str, TableCopy]


class AdfClient:
    """One factory's REST API: deploy, start, watch, cancel, and read activity runs."""

    def __init__(
        self,
        subscription_id: str,
        resource_group: str,
        factory_name: str,
        credential: TokenCredential,
        *,
        pipeline_name: str = PIPELINE_NAME,
        transport: HttpTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        poll_initial_seconds: float = 5.0,
        poll_max_seconds: float = 60.0,
        timeout_seconds: float = 6 * 3600.0,
    ) -> None:
        self.factory = (
            f"/subscriptions/{subscription_id}/resourceGroups/{resource_group}"
            f"/providers/Microsoft.DataFactory/factories/{factory_name}"
        )
        self.pipeline_name = pipeline_name
        self._sleep = sleep
        self._poll_initial = poll_initial_seconds
        self._poll_max = poll_max_seconds
        self._timeout = timeout_seconds
        self._client: PipelineClient = PipelineClient(
            ARM_ENDPOINT,
            policies=[
                policies.HeadersPolicy(),
                policies.UserAgentPolicy(sdk_moniker="spotify-lakehouse"),
                # Throttling and server errors are retried with backoff (not createRun's).
                policies.RetryPolicy(),
                policies.BearerTokenCredentialPolicy(credential, ARM_SCOPE),
                policies.NetworkTraceLoggingPolicy(),
            ],
            transport=transport,
        )

    # --- REST ---

    def _call(
        self, method: str, path: str, body: object = None, retry: bool = True
    ) -> dict[str, Any]:
        url = f"{ARM_ENDPOINT}{self.factory}{path}"
        request = HttpRequest(method, url, params={"api-version": API_VERSION}, json=body)
        response = self._client.send_request(request, **({} if retry else {"retry_total": 0}))
        if response.status_code >= 400:
            raise AdfError(f"{method} {path}: {_error_message(response)}")
        return response.json() if response.content else {}

    def deploy(
        self, documents: Mapping[str, dict[str, Any]], settings: DeploySettings
    ) -> list[str]:
        """Create or update every document (`build()` output), dependencies first."""
        order = list(_COLLECTIONS)
        deployed = []
        for path, document in sorted(
            documents.items(), key=lambda item: order.index(item[0].split("/")[0])
        ):
            collection = _COLLECTIONS[path.split("/")[0]]
            rendered = render(document, settings)
            self._call(
                "PUT", f"/{collection}/{document['name']}", {"properties": rendered["properties"]}
            )
            deployed.append(path)
        return deployed

    def create_run(self, parameters: Mapping[str, object]) -> str:
        """Start a run of the pipeline; returns its run id."""
        # Not retried: a 5xx may come after the run started, and a retry would start another.
        path = f"/pipelines/{self.pipeline_name}/createRun"
        return self._call("POST", path, dict(parameters), retry=False)["runId"]

    def get_run(self, run_id: str) -> dict[str, Any]:
        return self._call("GET", f"/pipelineruns/{run_id}")

    def cancel(self, run_id: str) -> None:
        self._call("POST", f"/pipelineruns/{run_id}/cancel")

    def activity_runs(self, run: Mapping[str, Any], activity: str) -> Iterator[dict[str, Any]]:
        """The runs of one activity (every table, every attempt) of a finished pipeline run."""
        # The query window must bracket the activities' last updates: the run's span, padded.
        pad = timedelta(minutes=5)
        body: dict[str, Any] = {
            "lastUpdatedAfter": (datetime.fromisoformat(run["runStart"]) - pad).isoformat(),
            "lastUpdatedBefore": (
                datetime.fromisoformat(run.get("runEnd") or run["lastUpdated"]) + pad
            ).isoformat(),
            "filters": [{"operand": "ActivityName", "operator": "Equals", "values": [activity]}],
        }
        while True:
            page = self._call("POST", f"/pipelineruns/{run['runId']}/queryActivityruns", body)
            yield from page.get("value", [])
            if not page.get("continuationToken"):
                return
            body["continuationToken"] = page["continuationToken"]

    # --- runs ---

    def wait(
        self, run_id: str, log: Callable[[str], None] = lambda message: None
    ) -> dict[str, Any]:
        """Poll until the run finishes, backing off exponentially; returns the run.

        If the Dagster run is terminated while waiting (or interrupted), the ADF run is cancelled
        before the interruption propagates: a copy no one waits for must not go on writing.
        """
        delay, waited, status = self._poll_initial, 0.0, None
        try:
            while True:
                run = self.get_run(run_id)
                if run["status"] != status:
                    status = run["status"]
                    log(f"ADF run {run_id}: {status}")
                if status in FINISHED:
                    return run
                if waited >= self._timeout:
                    self.cancel(run_id)
                    raise AdfRunError(
                        f"ADF run {run_id} did not finish within {self._timeout:.0f} s and was "
                        "cancelled; raise timeout_seconds if loads legitimately take longer",
                        metadata={"adf_run_id": run_id, "status": status},
                    )
                self._sleep(delay)
                waited += delay
                delay = min(delay * 2, self._poll_max)
        except (KeyboardInterrupt, DagsterExecutionInterruptedError):
            log(f"interrupted: cancelling ADF run {run_id}")
            self.cancel(run_id)
            raise

    def result(self, run: Mapping[str, Any]) -> AdfRun:
        """Rows read and copied per table; a failed or cancelled run raises ADF's message."""
        if run["status"] != SUCCEEDED:
            failed = [
                f"{a['activityName']} ({a.get('userProperties', {}).get('table', '?')}): "
                f"{a['error']['message']}"
                for a in self.activity_runs(run, COPY_ACTIVITY)
                if a["status"] == "Failed"
            ]
            raise AdfRunError(
                run.get("message") or f"ADF run {run['runId']} {run['status']}",
                metadata={
                    "adf_run_id": run["runId"],
                    "status": run["status"],
                    "failed_copies": MetadataValue.json(failed),
                },
            )
        tables: dict[str, TableCopy] = {}
        # Retried copies leave one activity run per attempt: the successful one counts.
        for activity in self.activity_runs(run, COPY_ACTIVITY):
            if activity["status"] != SUCCEEDED:
                continue
            properties, output = activity.get("userProperties", {}), activity["output"]
            start, end = properties.get("window_start"), properties.get("window_end")
            rows_copied = int(output.get("rowsCopied", 0))
            tables[properties["table"]] = TableCopy(
                table=properties["table"],
                rows_read=int(output.get("rowsRead", 0)),
                rows_copied=rows_copied,
                window=Window.from_json([start, end]) if start and end else None,
                file=properties.get("file") if rows_copied else None,
                activity_run_id=activity["activityRunId"],
            )
        return AdfRun(run["runId"], run["status"], tables)

    def ingest(
        self,
        windows: Mapping[str, Window | None],
        run_id: str,
        partition_start: date,
        log: Callable[[str], None] = lambda message: None,
        queries: Mapping[str, str] | None = None,
    ) -> AdfRun:
        """One pipeline run for the given tables, windows and queries (see `run_parameters`)."""
        parameters = run_parameters(windows, run_id, partition_start, queries)
        adf_run_id = self.create_run(parameters)
        log(f"started ADF run {adf_run_id} of {self.pipeline_name} for {', '.join(windows)}")
        return self.result(self.wait(adf_run_id, log))


class DataFactoryResource(ConfigurableResource):
    """The factory the Azure environment copies with (see `data_factory_resource`)."""

    subscription_id: str
    resource_group: str
    factory_name: str
    pipeline_name: str = PIPELINE_NAME
    key_vault_url: str = Field(default="", description="Deploy only: the vault of the secrets.")
    lake_url: str = Field(default="", description="Deploy only: abfss:// URL of the lake root.")
    poll_initial_seconds: float = 5.0
    poll_max_seconds: float = 60.0
    timeout_seconds: float = Field(default=6 * 3600.0, description="Cancel runs taking longer.")

    def client(
        self,
        credential: TokenCredential | None = None,
        transport: HttpTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> AdfClient:
        """A client; by default authenticated as whoever runs the code (DefaultAzureCredential)."""
        if credential is None:
            # Imported here: azure-identity is heavy and only needed once a client is made.
            from azure.identity import DefaultAzureCredential

            credential = DefaultAzureCredential()
        return AdfClient(
            self.subscription_id,
            self.resource_group,
            self.factory_name,
            credential,
            pipeline_name=self.pipeline_name,
            transport=transport,
            sleep=sleep,
            poll_initial_seconds=self.poll_initial_seconds,
            poll_max_seconds=self.poll_max_seconds,
            timeout_seconds=self.timeout_seconds,
        )

    def deploy_settings(self) -> DeploySettings:
        return DeploySettings.of(self.key_vault_url, self.lake_url)


def data_factory_resource() -> DataFactoryResource:
    """The resource with every name from the environment, resolved only when a run uses it."""
    return DataFactoryResource(
        subscription_id=EnvVar("SPOTIFY_ADF_SUBSCRIPTION_ID"),
        resource_group=EnvVar("SPOTIFY_ADF_RESOURCE_GROUP"),
        factory_name=EnvVar("SPOTIFY_ADF_FACTORY"),
        key_vault_url=EnvVar("SPOTIFY_ADF_KEY_VAULT_URL"),
        lake_url=EnvVar("SPOTIFY_LAKE_URL"),
    )


def _error_message(response: HttpResponse) -> str:
    """ADF's error message, verbatim (CloudError body), else the status line and body."""
    try:
        error = response.json().get("error") or {}
    except ValueError:
        error = {}
    if error.get("message"):
        return f"{error.get('code', response.status_code)}: {error['message']}"
    return f"HTTP {response.status_code} {response.reason}: {response.text()}"
