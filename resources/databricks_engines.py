"""Databricks: silver as a job task through Dagster Pipes, gold as a pipeline update.

- `DatabricksSilverRunner` submits a one-time job run (`PipesDatabricksClient`, a
  `jobs.SubmitTask`) of `resources/databricks_silver.py` from the asset bundle's synced
  files, with the table, the partition days and the run id as arguments. The task runs the same
  `SilverStore.refresh` as the local engine and reports its counts back through Pipes.
- `DltPipelineRunner` starts an update of the bundle's pipeline (`dlt/gold_pipeline.py`) for the
  gold tables an asset builds (`pipelines.start_update` with `refresh_selection`, or
  `full_refresh_selection` when a rebuild is asked for), polls `get_update` with backoff until
  COMPLETED, FAILED or CANCELED, surfaces the update's error events verbatim, and stops the
  pipeline when the Dagster run is terminated.

Credentials come from the Databricks SDK's unified authentication (DATABRICKS_TOKEN, an Azure
service principal in ARM_CLIENT_ID / ARM_CLIENT_SECRET / ARM_TENANT_ID, a managed identity, or
`az login`); nothing connects before a run calls a method that needs the workspace.
"""

from __future__ import annotations

import posixpath
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar

from dagster import (
    AssetExecutionContext,
    ConfigurableResource,
    DagsterExecutionInterruptedError,
    Failure,
    MaterializeResult,
    MetadataValue,
    PipesClientCompletedInvocation,
)
from dagster_databricks import PipesDatabricksClient
from databricks.sdk import WorkspaceClient
from databricks.sdk.errors import DatabricksError
from databricks.sdk.service import compute, jobs, pipelines
from pydantic import Field

from resources.databricks_silver import SilverTask, result_from_metadata
from resources.delta_tables import Days
from resources.engines import GoldEngine, GoldOutcome, SilverEngine
from resources.silver_store import SilverResult
from spotify_assets.catalog.gold_spec import Aggregate
from spotify_assets.catalog.lake_paths import silver_path
from spotify_assets.catalog.tables import Catalog, Table

Log = Callable[[str], None]

# The silver task's file, relative to the bundle root (the repository root).
ENTRYPOINT = "resources/databricks_silver.py"
# What the silver task imports beyond the Databricks runtime (which brings pyspark, pyarrow,
# numpy and pandas): Dagster (the lake is a Dagster resource), Pipes, delta-rs and adlfs for the
# bronze manifests and Delta logs. `databricks.yml` installs the same list (a test checks it).
TASK_LIBRARIES = (
    "dagster==1.13.27",
    "dagster-pipes==1.13.27",
    "deltalake==1.6.6",
    "adlfs==2026.8.0",
)
# A long-term-support runtime with Spark 4, like the transforms' pyspark.
SPARK_VERSION = "17.3.x-scala2.13"
NODE_TYPE = "Standard_D4ds_v5"
SECRET_SCOPE = "spotify"
# Silver tables this cluster creates get a change data feed: the gold pipeline's SCD2 dimensions
# stream it (dlt/README.md), and the property must be there from the table's first commit.
SILVER_SPARK_CONF = {"spark.databricks.delta.properties.defaults.enableChangeDataFeed": "true"}
# Secrets of the lake's service principal in the scope (values never leave Databricks).
LAKE_SECRETS = {
    "AZURE_CLIENT_ID": "lake-client-id",
    "AZURE_TENANT_ID": "lake-tenant-id",
    "AZURE_CLIENT_SECRET": "lake-client-secret",
}


class DatabricksWorkspace(ConfigurableResource):
    """The workspace both runners talk to."""

    host: str = Field(description="https://adb-<workspace id>.<n>.azuredatabricks.net")

    def client(self) -> WorkspaceClient:
        # No credential here: the SDK finds DATABRICKS_TOKEN, ARM_* or a managed identity itself.
        return WorkspaceClient(host=self.host)


# --- silver: a job task through Pipes ---


def lake_environment(scope: str = SECRET_SCOPE) -> dict[str, str]:
    """Environment of a job cluster for the task's Python side (adlfs and delta-rs read the
    bronze manifests and Delta logs as the lake's service principal). Values are secret
    references (`{{secrets/<scope>/<key>}}`) that Databricks resolves on the cluster. Spark itself
    reaches the lake through a Unity Catalog external location, so no key is in Spark's conf."""
    secrets = {name: f"{{{{secrets/{scope}/{key}}}}}" for name, key in LAKE_SECRETS.items()}
    # adlfs attempts anonymous access unless told otherwise.
    return {**secrets, "AZURE_STORAGE_ANON": "false"}


class DatabricksSilverRunner(SilverEngine):
    """Silver on Databricks: one job run per asset run, over the run's partition range."""

    workspace: DatabricksWorkspace
    bundle_files: str = Field(
        description="Workspace path of the deployed bundle's files (`${workspace.file_path}`), "
        "e.g. /Workspace/Users/<you>/.bundle/spotify-lakehouse/prod/files."
    )
    cluster_id: str = Field(
        default="",
        description="An existing cluster to run on (with TASK_LIBRARIES, SILVER_SPARK_CONF and "
        "lake access); empty: a new job cluster per run.",
    )
    spark_version: str = SPARK_VERSION
    node_type_id: str = NODE_TYPE
    num_workers: int = 2
    secret_scope: str = Field(default=SECRET_SCOPE, description="Scope of the lake's secrets.")
    poll_interval_seconds: float = 10.0

    def task(self, table: Table, days: Days | None, run_id: str) -> jobs.SubmitTask:
        """The job task of one silver refresh (Pipes adds its bootstrap parameters)."""
        arguments = SilverTask(
            self.bundle_files, self.lake.url, table.name, days, run_id, table.mode.value
        )
        task = jobs.SubmitTask(
            task_key=f"silver_{table.lake_name}",
            spark_python_task=jobs.SparkPythonTask(
                python_file=posixpath.join(self.bundle_files, ENTRYPOINT),
                parameters=arguments.arguments(),
                source=jobs.Source.WORKSPACE,
            ),
            libraries=[
                compute.Library(pypi=compute.PythonPyPiLibrary(package=p)) for p in TASK_LIBRARIES
            ],
        )
        if self.cluster_id:
            task.existing_cluster_id = self.cluster_id
        else:
            task.new_cluster = compute.ClusterSpec(
                spark_version=self.spark_version,
                node_type_id=self.node_type_id,
                num_workers=self.num_workers,
                # Dedicated to the run's identity: Unity Catalog governs the lake's paths.
                data_security_mode=compute.DataSecurityMode.SINGLE_USER,
                spark_conf=dict(SILVER_SPARK_CONF),
                spark_env_vars=lake_environment(self.secret_scope),
            )
        return task

    def pipes(self, client: WorkspaceClient) -> PipesDatabricksClient:
        """The Pipes client: context and messages through DBFS, termination forwarded."""
        return PipesDatabricksClient(
            client, poll_interval_seconds=self.poll_interval_seconds, forward_termination=True
        )

    def refresh(
        self, context: AssetExecutionContext, table: Table, days: Days | None
    ) -> SilverResult:
        what = f"{days[0]}..{days[1]}" if days else "whole table"
        invocation = self.pipes(self.workspace.client()).run(
            context=context,
            task=self.task(table, days, context.run.run_id),
            submit_args={"run_name": f"spotify silver {table.lake_name} {what}"},
        )
        return silver_result(table, invocation, context.log.info)


def silver_result(
    table: Table, invocation: PipesClientCompletedInvocation, log: Log
) -> SilverResult:
    """The task's reported counts; a run that ended without reporting them (cancelled, killed)
    is a failure, never an empty success."""
    run = _values(invocation.metadata)
    log(f"silver {table.lake_name} on Databricks: {run}")
    reported = [
        r
        for r in invocation.get_results(implicit_materializations=False)
        if isinstance(r, MaterializeResult)
    ]
    if not reported:
        raise Failure(
            f"{silver_path(table)}: the Databricks run ended without reporting a result "
            "(cancelled or killed before the task finished); see the run in Databricks",
            metadata={k: MetadataValue.text(str(v)) for k, v in run.items()},
        )
    return result_from_metadata(_values(reported[0].metadata or {}))


# --- gold: a pipeline update ---

TERMINAL = frozenset({"COMPLETED", "FAILED", "CANCELED"})
# How many of the pipeline's ERROR events are read to explain a failed update.
MAX_ERROR_EVENTS = 200


class DltUpdateError(Failure):
    """An update failed, was cancelled or timed out; the description is Databricks' own."""


@dataclass(frozen=True)
class DltUpdate:
    pipeline_id: str
    update_id: str
    state: str
    refresh: tuple[str, ...]
    full_refresh: tuple[str, ...]
    seconds: float


class DltPipelineRunner(GoldEngine):
    """Gold on Databricks: each gold asset is an update of its tables in the bundle's pipeline."""

    tables_on_lake: ClassVar[bool] = False  # the pipeline publishes gold to its catalog
    workspace: DatabricksWorkspace
    pipeline_id: str = Field(description="Id of the deployed gold pipeline.")
    poll_initial_seconds: float = 10.0
    poll_max_seconds: float = 60.0
    timeout_seconds: float = Field(default=6 * 3600.0, description="Stop updates taking longer.")

    def update(
        self,
        refresh: Sequence[str] = (),
        full_refresh: Sequence[str] = (),
        log: Log = lambda message: None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> DltUpdate:
        """Run one update of the tables `refresh` (their new data) and `full_refresh` (reset
        first); both empty: the whole graph. Returns when it has completed."""
        client = self.workspace.client()
        clock = _Clock(self, sleep)
        update_id = self._start(client, list(refresh), list(full_refresh), log, clock)
        log(f"started update {update_id} of pipeline {self.pipeline_id}")
        try:
            info = self._wait(client, update_id, log, clock)
        except (KeyboardInterrupt, DagsterExecutionInterruptedError):
            log(f"interrupted: stopping pipeline {self.pipeline_id} (update {update_id})")
            client.pipelines.stop(self.pipeline_id)
            raise
        state = info.state.value if info.state else "UNKNOWN"
        if state != "COMPLETED":
            raise DltUpdateError(
                self._failure(client, update_id, info, state),
                metadata={"pipeline_id": self.pipeline_id, "update_id": update_id, "state": state},
            )
        return DltUpdate(
            self.pipeline_id, update_id, state, tuple(refresh), tuple(full_refresh), clock.waited
        )

    def _start(
        self,
        client: WorkspaceClient,
        refresh: list[str],
        full_refresh: list[str],
        log: Log,
        clock: _Clock,
    ) -> str:
        """Start the update; while another one is active (a pipeline runs one at a time, and
        gold assets of one run build in parallel) wait for it to end, then try again."""
        while True:
            try:
                response = client.pipelines.start_update(
                    self.pipeline_id,
                    full_refresh=False,
                    refresh_selection=refresh or None,
                    full_refresh_selection=full_refresh or None,
                )
                if not response.update_id:
                    raise DltUpdateError(f"pipeline {self.pipeline_id}: no update id in {response}")
                return response.update_id
            except DatabricksError as error:
                active = self._active_update(client)
                if active is None:
                    raise DltUpdateError(
                        f"pipeline {self.pipeline_id}: could not start an update: {error}"
                    ) from error
                log(f"pipeline {self.pipeline_id} is busy with update {active}: waiting for it")
                self._wait(client, active, log, clock, own=False)

    def _active_update(self, client: WorkspaceClient) -> str | None:
        latest = client.pipelines.get(self.pipeline_id).latest_updates or []
        active = [u for u in latest if u.state and u.state.value not in TERMINAL]
        return active[0].update_id if active else None

    def _wait(
        self, client: WorkspaceClient, update_id: str, log: Log, clock: _Clock, own: bool = True
    ) -> pipelines.UpdateInfo:
        """Poll the update until it reaches a terminal state, backing off exponentially. Our
        own update is stopped when it outlives the timeout; another run's is left alone."""
        state = None
        while True:
            info = client.pipelines.get_update(self.pipeline_id, update_id).update
            if info is None:
                raise DltUpdateError(f"pipeline {self.pipeline_id}: update {update_id} not found")
            if info.state != state:
                state = info.state
                log(f"update {update_id}: {state.value if state else 'UNKNOWN'}")
            if state is not None and state.value in TERMINAL:
                return info
            if clock.expired:
                if own:
                    client.pipelines.stop(self.pipeline_id)
                raise DltUpdateError(
                    f"update {update_id} of pipeline {self.pipeline_id} did not finish within "
                    f"{self.timeout_seconds:.0f} s{' and was stopped' if own else ''}; raise "
                    "timeout_seconds if updates legitimately take longer"
                )
            clock.tick()

    def _failure(
        self, client: WorkspaceClient, update_id: str, info: pipelines.UpdateInfo, state: str
    ) -> str:
        """Databricks' own error messages of the update (its ERROR events), oldest first."""
        since = datetime.fromtimestamp((info.creation_time or 0) / 1000, UTC)
        stamp = f"{since:%Y-%m-%dT%H:%M:%S}.{since.microsecond // 1000:03d}Z"
        # The API filters by level and time only: the update's own events are picked out here.
        events = client.pipelines.list_pipeline_events(
            self.pipeline_id,
            filter=f"level='ERROR' AND timestamp >= '{stamp}'",
            order_by=["timestamp asc"],
        )
        messages: list[str] = []
        for number, event in enumerate(events):
            if number >= MAX_ERROR_EVENTS:
                break
            if event.origin is None or event.origin.update_id != update_id:
                continue
            messages.append(event.message or "")
            for exception in (event.error.exceptions if event.error else None) or []:
                messages.append(f"{exception.class_name}: {exception.message}")
        detail = "\n".join(m for m in messages if m) or "no error event was recorded"
        return f"update {update_id} of pipeline {self.pipeline_id} {state}:\n{detail}"

    # --- the gold engine ---

    def apply_dimension(self, catalog: Catalog, table: Table, full: bool) -> GoldOutcome:
        name = table.lake_name
        return self._outcome(self.update(full_refresh=[name]) if full else self.update([name]))

    def build_calendar(self, catalog: Catalog, table: Table) -> GoldOutcome:
        return self._outcome(self.update([table.lake_name]))

    def build_fact(self, catalog: Catalog, days: Days) -> GoldOutcome:
        # A materialized view is recomputed whole from silver (incrementally where Databricks
        # can): refreshing it brings every partition, old days included, up to silver.
        return self._outcome(self.update([catalog.fact.lake_name]))

    def build_aggregate(self, catalog: Catalog, spec: Aggregate, days: Days) -> GoldOutcome:
        return self._outcome(self.update([spec.name]))

    def _outcome(self, update: DltUpdate) -> GoldOutcome:
        tables = ", ".join(update.full_refresh or update.refresh)
        how = "full refresh" if update.full_refresh else "refresh"
        return GoldOutcome(
            summary=f"{tables}: {how} by update {update.update_id} of pipeline "
            f"{update.pipeline_id}, {update.state} after {update.seconds:.0f} s",
            metadata={
                "pipeline_id": MetadataValue.text(update.pipeline_id),
                "update_id": MetadataValue.text(update.update_id),
                "state": MetadataValue.text(update.state),
                "refresh_selection": MetadataValue.json(list(update.refresh)),
                "full_refresh_selection": MetadataValue.json(list(update.full_refresh)),
            },
            failures=None,
            problems=None,
            not_evaluated="the pipeline applies the expectations itself (expect_all_or_drop) "
            "and records their counts in its event log, which this resource does not read; SCD2 "
            "invariants are not computed on Databricks",
        )


class _Clock:
    """Backoff between polls, and the update's time budget."""

    def __init__(self, runner: DltPipelineRunner, sleep: Callable[[float], None]) -> None:
        self.delay, self.max_delay = runner.poll_initial_seconds, runner.poll_max_seconds
        self.budget, self.sleep, self.waited = runner.timeout_seconds, sleep, 0.0

    @property
    def expired(self) -> bool:
        return self.waited >= self.budget

    def tick(self) -> None:
        self.sleep(self.delay)
        self.waited += self.delay
        self.delay = min(self.delay * 2, self.max_delay)


def _values(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """Plain values of Dagster metadata (MetadataValue objects or raw values)."""
    return {k: getattr(v, "value", v) for k, v in metadata.items()}
