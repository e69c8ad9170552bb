"""Databricks at its SDK boundary: the silver job task through Pipes, the gold pipeline updates,
the silver entrypoint, and the asset bundle.

No workspace exists here. The SDK's own service classes (`JobsAPI`, `PipelinesAPI`) run against a
fake of its API client that records every REST request and plays back the documented response
shapes; the silver task's side of Pipes runs in process on the messages Dagster sends it.
"""

from __future__ import annotations

import ast
import posixpath
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from dagster import (
    AssetCheckSeverity,
    DagsterEventType,
    DagsterExecutionInterruptedError,
    PipesTempFileContextInjector,
    PipesTempFileMessageReader,
    materialize,
)
from dagster_databricks import PipesDatabricksClient
from dagster_pipes import (
    DagsterPipesWarning,
    PipesContext,
    PipesDefaultContextLoader,
    PipesDefaultMessageWriter,
    PipesMappingParamsLoader,
)
from databricks.sdk.errors import DatabricksError
from databricks.sdk.service.jobs import JobsAPI
from databricks.sdk.service.pipelines import PipelinesAPI

from resources import databricks_engines, databricks_silver
from resources.dagster_resources import LakeResource, LakeWriter
from resources.databricks_engines import (
    ENTRYPOINT,
    TASK_LIBRARIES,
    DatabricksSilverRunner,
    DatabricksWorkspace,
    DltPipelineRunner,
    DltUpdateError,
    lake_environment,
)
from resources.databricks_silver import SilverTask
from resources.lake import LakeStorage
from resources.silver_store import SilverResult
from spotify_assets.catalog.tables import CATALOG, Table
from spotify_assets.gold.transform import SCD2_INVARIANTS
from spotify_assets.orchestration.assets.gold import build_dimension_asset, build_fact_asset
from spotify_assets.orchestration.assets.silver import build_silver_asset
from spotify_assets.orchestration.partitions import partition_range_tags
from tests.helpers.paths import REPO

HOST = "https://adb-1234567890123456.7.azuredatabricks.net"
LAKE_URL = "abfss://lake@spotifylake.dfs.core.windows.net/spotify"
FILES = "/Workspace/Users/de@example.com/.bundle/spotify-lakehouse/prod/files"
PIPELINE = "9a1f5c3e-0000-4000-8000-00000000beef"
# The partitions of the tests' days (2026-03-01..03) exist from this partition start on.
CONFIGURED = CATALOG.with_partition_start(date(2026, 1, 1))
FACT = CONFIGURED.fact
DIM_USER = CONFIGURED["DimUser"]


# --- a fake of the SDK's API client ---


@dataclass(frozen=True)
class Sent:
    method: str
    path: str
    query: dict[str, Any]
    body: dict[str, Any] | None


@dataclass
class FakeApi:
    """`ApiClient.do` for the SDK's service classes: records requests, answers via `respond`."""

    respond: Callable[[Sent], Any]
    sent: list[Sent] = field(default_factory=list)

    def do(self, method: str, path: str | None = None, **kwargs: Any) -> Any:
        request = Sent(method, path or "", dict(kwargs.get("query") or {}), kwargs.get("body"))
        self.sent.append(request)
        return self.respond(request)

    def paths(self, method: str | None = None) -> list[str]:
        return [s.path for s in self.sent if method is None or s.method == method]


def workspace(api: FakeApi) -> SimpleNamespace:
    """What `WorkspaceClient` offers the runners, with the SDK's real service classes."""
    return SimpleNamespace(jobs=JobsAPI(api), pipelines=PipelinesAPI(api), api_client=api)


@pytest.fixture
def no_real_workspace(monkeypatch: pytest.MonkeyPatch) -> Callable[[FakeApi], None]:
    """Route `DatabricksWorkspace.client()` to a fake API."""

    def use(api: FakeApi) -> None:
        monkeypatch.setattr(DatabricksWorkspace, "client", lambda self: workspace(api))

    return use


# --- the silver entrypoint ---


def test_task_arguments_round_trip_and_pipes_arguments_are_left_alone() -> None:
    task = SilverTask(FILES, LAKE_URL, "FactStream", (date(2026, 3, 1), date(2026, 3, 3)), "r-1")
    assert task.arguments() == [
        "--repo-root", FILES, "--lake-url", LAKE_URL, "--table", "FactStream",
        "--days", "2026-03-01", "2026-03-03", "--run-id", "r-1",
    ]  # fmt: skip
    # On an existing cluster Pipes appends its bootstrap parameters to the same list.
    pipes = ["--dagster-pipes-context", "eJyr", "--dagster-pipes-messages", "eJyr"]
    assert databricks_silver.parse([*task.arguments(), *pipes]) == task
    snapshot = SilverTask(FILES, LAKE_URL, "DimDate", None, "r-2")
    assert "--days" not in snapshot.arguments()
    assert databricks_silver.parse(snapshot.arguments()) == snapshot


def test_the_bundle_jobs_empty_days_mean_every_partition_and_bad_days_are_refused() -> None:
    base = ["--repo-root", FILES, "--lake-url", LAKE_URL, "--table", "FactStream", "--run-id", "x"]
    assert databricks_silver.parse([*base, "--days", "", ""]).days is None
    for days in (["2026-03-01", ""], ["2026-03-02", "2026-03-01"], ["03/01/2026", "2026-03-02"]):
        with pytest.raises(SystemExit):
            databricks_silver.parse([*base, "--days", *days])
    with pytest.raises(SystemExit):
        databricks_silver.parse(["--table", "FactStream"])


@dataclass
class SpyStore:
    """Stands in for `SilverStore`: records how the task built and called it."""

    calls: list[tuple[Any, ...]]
    lake: LakeStorage
    spark: object
    table: Table

    def refresh(self, days: tuple[date, date] | None, run_id: str) -> SilverResult:
        self.calls.append((self.lake.url, self.spark, self.table.name, days, run_id))
        return silver_result(self.table, days)


def spy_store(calls: list[tuple[Any, ...]]) -> Callable[[LakeStorage, object, Table], SpyStore]:
    return lambda lake, spark, table: SpyStore(calls, lake, spark, table)


def silver_result(table: Table, days: tuple[date, date] | None) -> SilverResult:
    failures = {rule.name: n for n, rule in enumerate(table.silver.rules)}
    quarantined = sum(failures.values())
    # The first day holds every row; the others none.
    rows, held = ({days[0]: 990}, {days[0]: quarantined}) if days else ({}, {})
    return SilverResult(table.lake_name, days, 1000, 990, quarantined, failures, rows, held)


def test_the_task_runs_the_same_silver_store_on_the_lake_it_was_given() -> None:
    calls: list[tuple[Any, ...]] = []
    spark = object()
    task = SilverTask(FILES, LAKE_URL, "FactStream", (date(2026, 3, 1), date(2026, 3, 3)), "r-1")
    result = databricks_silver.run(task, spark, spy_store(calls))  # type: ignore[arg-type]
    assert calls == [(LAKE_URL, spark, "FactStream", task.days, "r-1")]
    assert result == silver_result(FACT, task.days)


def test_the_task_follows_the_deployments_capture_mode_override() -> None:
    tables: list[Table] = []

    def store(lake: LakeStorage, spark: object, table: Table) -> SpyStore:
        tables.append(table)
        return SpyStore([], lake, spark, table)

    assert DIM_USER.mode.value == "cdc"
    task = SilverTask(FILES, LAKE_URL, "DimUser", None, "r-1", mode="watermark")
    assert databricks_silver.parse(task.arguments()) == task
    databricks_silver.run(task, object(), store)  # type: ignore[arg-type]
    assert [t.mode.value for t in tables] == ["watermark"]
    assert tables[0].change_time_column == DIM_USER.cdc_column


def test_main_without_dagster_puts_the_repo_on_the_path_and_prints_the_result(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from pyspark.sql import SparkSession

    conf: dict[str, str] = {}
    spark = SimpleNamespace(conf=SimpleNamespace(set=conf.__setitem__))
    # Never a real session here: the class's builder hands out the stand-in.
    monkeypatch.setattr(SparkSession.Builder, "getOrCreate", lambda self: spark)
    ran: list[tuple[SilverTask, object]] = []

    def run(task: SilverTask, session: object) -> SilverResult:
        ran.append((task, session))
        return silver_result(FACT, task.days)

    monkeypatch.setattr(databricks_silver, "run", run)
    monkeypatch.setattr("sys.path", list(__import__("sys").path))
    root = str(REPO / "not-on-the-path-yet")
    task = SilverTask(root, LAKE_URL, "FactStream", (date(2026, 3, 1), date(2026, 3, 1)), "r-9")
    with pytest.warns(DagsterPipesWarning, match="not launched by a Dagster"):  # Pipes no-ops
        databricks_silver.main(task.arguments())
    assert ran == [(task, spark)]
    assert conf == {"spark.sql.session.timeZone": "UTC"}
    assert __import__("sys").path[0] == root
    assert '"silver_rows": 990' in capsys.readouterr().out


# --- silver through Pipes: the job task per partition window ---


def runner(**settings: Any) -> DatabricksSilverRunner:
    return DatabricksSilverRunner(
        lake=LakeResource(url=LAKE_URL),
        workspace=DatabricksWorkspace(host=HOST),
        bundle_files=FILES,
        poll_interval_seconds=0,
        **settings,
    )


def test_the_submitted_task_for_a_partition_window_on_a_new_job_cluster() -> None:
    days = (date(2026, 3, 1), date(2026, 3, 3))
    task = runner().task(FACT, days, "run-7").as_dict()
    assert task == {
        "task_key": "silver_fact_stream",
        "spark_python_task": {
            "python_file": f"{FILES}/resources/databricks_silver.py",
            "parameters": [
                "--repo-root", FILES, "--lake-url", LAKE_URL, "--table", "FactStream",
                "--mode", "watermark", "--days", "2026-03-01", "2026-03-03", "--run-id", "run-7",
            ],
            "source": "WORKSPACE",
        },
        "libraries": [{"pypi": {"package": p}} for p in TASK_LIBRARIES],
        "new_cluster": {
            "spark_version": databricks_engines.SPARK_VERSION,
            "node_type_id": databricks_engines.NODE_TYPE,
            "num_workers": 2,
            "data_security_mode": "SINGLE_USER",
            "spark_conf": {
                "spark.databricks.delta.properties.defaults.enableChangeDataFeed": "true"
            },
            "spark_env_vars": {
                "AZURE_CLIENT_ID": "{{secrets/spotify/lake-client-id}}",
                "AZURE_TENANT_ID": "{{secrets/spotify/lake-tenant-id}}",
                "AZURE_CLIENT_SECRET": "{{secrets/spotify/lake-client-secret}}",
                "AZURE_STORAGE_ANON": "false",
            },
        },
    }  # fmt: skip
    existing = (
        runner(cluster_id="0301-123456-abcdefgh").task(CATALOG["DimDate"], None, "r").as_dict()
    )
    assert existing["existing_cluster_id"] == "0301-123456-abcdefgh"
    assert "new_cluster" not in existing
    assert "--days" not in existing["spark_python_task"]["parameters"]


def run_state(life_cycle: str, result: str | None = None, message: str = "") -> dict[str, Any]:
    """`GET /api/2.2/jobs/runs/get` as documented (the fields the client reads)."""
    state: dict[str, Any] = {"life_cycle_state": life_cycle, "state_message": message}
    if result:
        state["result_state"] = result
    return {"run_id": 4242, "state": state, "run_page_url": f"{HOST}/?o=1#job/77/run/4242"}


class FakeJobs:
    """The Jobs API of a workspace whose cluster runs the silver task when a run is submitted."""

    def __init__(self, states: list[dict[str, Any]], task_runs: bool = True) -> None:
        self.states, self.task_runs = states, task_runs
        self.submitted: list[dict[str, Any]] = []
        self.store_calls: list[tuple[Any, ...]] = []
        self.api = FakeApi(self.respond)

    def respond(self, request: Sent) -> Any:
        if request.path == "/api/2.2/jobs/runs/submit":
            assert request.body is not None
            self.submitted.append(request.body)
            if self.task_runs:
                self.run_task(request.body["tasks"][0])
            return {"run_id": 4242}
        if request.path == "/api/2.2/jobs/runs/get":
            assert request.query == {"run_id": 4242}
            state = self.states.pop(0) if len(self.states) > 1 else self.states[0]
            if isinstance(state, BaseException):
                raise state
            return state
        if request.path == "/api/2.2/jobs/runs/cancel":
            assert request.body == {"run_id": 4242}
            return {}
        raise AssertionError(f"unexpected request {request}")

    def run_task(self, task: dict[str, Any]) -> None:
        """What the cluster does: the entrypoint with the parameters and the Pipes bootstrap
        variables it was given, reporting through Pipes (files here instead of DBFS)."""
        environment = task["new_cluster"]["spark_env_vars"]
        arguments = databricks_silver.parse(task["spark_python_task"]["parameters"])
        with PipesContext(
            PipesMappingParamsLoader(environment),
            PipesDefaultContextLoader(),
            PipesDefaultMessageWriter(),
        ) as pipes:
            store = spy_store(self.store_calls)
            databricks_silver.report(pipes, databricks_silver.run(arguments, "spark", store))  # type: ignore[arg-type]


@pytest.fixture
def pipes_over_files(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pipes' context and messages through local files: DBFS is the one part not faked."""
    monkeypatch.setattr(
        DatabricksSilverRunner,
        "pipes",
        lambda self, client: PipesDatabricksClient(
            client,
            context_injector=PipesTempFileContextInjector(),
            message_reader=PipesTempFileMessageReader(),
            poll_interval_seconds=0,
        ),
    )


def materialize_fact_silver(lake_writer: LakeWriter, first: date, last: date) -> Any:
    return materialize(
        [build_silver_asset(CONFIGURED, FACT)],
        resources={"silver_engine": runner(), "lake_writer": lake_writer},
        tags=partition_range_tags(first, last),
        raise_on_error=False,
    )


def test_a_partition_range_runs_one_job_task_and_reports_silver_through_pipes(
    no_real_workspace: Callable[[FakeApi], None], pipes_over_files: None, lake_writer: LakeWriter
) -> None:
    jobs = FakeJobs(
        [run_state("PENDING"), run_state("RUNNING"), run_state("TERMINATED", "SUCCESS")]
    )
    no_real_workspace(jobs.api)
    result = materialize_fact_silver(lake_writer, date(2026, 3, 1), date(2026, 3, 3))
    assert result.success
    (submitted,) = jobs.submitted
    assert submitted["run_name"] == "spotify silver fact_stream 2026-03-01..2026-03-03"
    (task,) = submitted["tasks"]
    days = (date(2026, 3, 1), date(2026, 3, 3))
    expected_task = SilverTask(FILES, LAKE_URL, "FactStream", days, result.run_id, "watermark")
    assert task["spark_python_task"]["parameters"] == expected_task.arguments()
    # Pipes bootstraps through the new cluster's environment, beside the lake's secret refs.
    environment = task["new_cluster"]["spark_env_vars"]
    assert {"DAGSTER_PIPES_CONTEXT", "DAGSTER_PIPES_MESSAGES"} <= set(environment)
    assert lake_environment().items() <= environment.items()
    assert jobs.store_calls == [(LAKE_URL, "spark", "FactStream", days, result.run_id)]
    assert jobs.api.paths() == [
        "/api/2.2/jobs/runs/submit",
        *["/api/2.2/jobs/runs/get"] * 4,  # three polls, then the run's page for metadata
    ]
    # The asset's metadata and checks come from what the task reported.
    materializations = result.asset_materializations_for_node(
        build_silver_asset(CONFIGURED, FACT).op.name
    )
    own = [(m.partition, m.metadata["dagster/row_count"].value) for m in materializations]
    assert own == [("2026-03-01", 990), ("2026-03-02", 0), ("2026-03-03", 0)]
    materialization = materializations[-1]  # the last partition's: the run's details
    assert materialization.metadata["run_rows"].value == 990
    assert materialization.metadata["run_partitions"].value == "2026-03-01 .. 2026-03-03"
    expected = silver_result(FACT, days).failures
    assert materialization.metadata["run_failures_by_rule"].value == expected
    checks = {
        e.event_specific_data.check_name: e.event_specific_data
        for e in result.all_events
        if e.event_type is DagsterEventType.ASSET_CHECK_EVALUATION
    }
    assert {n: c.passed for n, c in checks.items()} == {
        name: count == 0 for name, count in expected.items()
    }


def test_a_failed_job_run_surfaces_databricks_message(
    no_real_workspace: Callable[[FakeApi], None], pipes_over_files: None, lake_writer: LakeWriter
) -> None:
    message = "Task silver_fact_stream failed with message: ValueError: bronze/FactStream ..."
    jobs = FakeJobs([run_state("RUNNING"), run_state("TERMINATED", "FAILED", message)], False)
    no_real_workspace(jobs.api)
    result = materialize_fact_silver(lake_writer, date(2026, 3, 1), date(2026, 3, 1))
    assert not result.success
    (failure,) = [e for e in result.all_events if e.event_type is DagsterEventType.STEP_FAILURE]
    assert message in str(failure.event_specific_data.error)
    assert "/api/2.2/jobs/runs/cancel" not in jobs.api.paths()


def test_terminating_the_dagster_run_cancels_the_job_run(
    no_real_workspace: Callable[[FakeApi], None], pipes_over_files: None, lake_writer: LakeWriter
) -> None:
    jobs = FakeJobs(
        [
            run_state("RUNNING"),
            DagsterExecutionInterruptedError(),  # the termination arrives while polling
            run_state("TERMINATING"),
            run_state("TERMINATED", "CANCELED"),
        ],
        task_runs=False,
    )
    no_real_workspace(jobs.api)
    result = materialize_fact_silver(lake_writer, date(2026, 3, 1), date(2026, 3, 1))
    assert not result.success
    cancel = [s for s in jobs.api.sent if s.path == "/api/2.2/jobs/runs/cancel"]
    assert [(s.method, s.body) for s in cancel] == [("POST", {"run_id": 4242})]
    (failure,) = [e for e in result.all_events if e.event_type is DagsterEventType.STEP_FAILURE]
    assert "ended without reporting a result" in str(failure.event_specific_data.error)


# --- gold: pipeline updates ---


class FakePipelines:
    """The Pipelines API of a workspace: plays back an update's documented states."""

    def __init__(
        self,
        states: list[str | BaseException],
        events: list[dict[str, Any]] | None = None,
        busy: list[str] | None = None,
    ) -> None:
        self.states, self.events = states, events or []
        self.busy = busy or []  # states of another update that holds the pipeline first
        self.api = FakeApi(self.respond)

    def respond(self, request: Sent) -> Any:
        base = f"/api/2.0/pipelines/{PIPELINE}"
        if request.path == f"{base}/updates" and request.method == "POST":
            if self.busy:
                # Documented: with an active update, start_update fails and it keeps running.
                raise DatabricksError("An active update already exists", error_code="CONFLICT")
            return {"update_id": "u-2"}
        if request.path == base and request.method == "GET":
            latest = [{"update_id": "u-1", "state": self.busy[0], "creation_time": "x"}]
            return {"pipeline_id": PIPELINE, "state": "RUNNING", "latest_updates": latest}
        if request.path == f"{base}/updates/u-1":
            state = self.busy.pop(0)
            return {"update": {"pipeline_id": PIPELINE, "update_id": "u-1", "state": state}}
        if request.path == f"{base}/updates/u-2":
            state = self.states.pop(0) if len(self.states) > 1 else self.states[0]
            if isinstance(state, BaseException):
                raise state
            return {
                "update": {
                    "pipeline_id": PIPELINE,
                    "update_id": "u-2",
                    "state": state,
                    "creation_time": 1772323200123,  # 2026-03-01T00:00:00.123Z
                }
            }
        if request.path == f"{base}/events":
            return {"events": self.events}
        if request.path == f"{base}/stop":
            return {}
        raise AssertionError(f"unexpected request {request}")

    def started(self) -> list[dict[str, Any] | None]:
        return [s.body for s in self.api.sent if s.path.endswith("/updates") and s.method == "POST"]


def dlt_runner(**settings: Any) -> DltPipelineRunner:
    return DltPipelineRunner(
        lake=LakeResource(url=LAKE_URL),
        workspace=DatabricksWorkspace(host=HOST),
        pipeline_id=PIPELINE,
        **settings,
    )


def test_an_update_of_selected_tables_polls_with_backoff_until_completed(
    no_real_workspace: Callable[[FakeApi], None],
) -> None:
    states = ["QUEUED", "CREATED", "WAITING_FOR_RESOURCES", "INITIALIZING", "SETTING_UP_TABLES"]
    fake = FakePipelines([*states, "RUNNING", "RUNNING", "COMPLETED"])
    no_real_workspace(fake.api)
    slept: list[float] = []
    update = dlt_runner().update(["fact_stream", "agg_daily_track"], sleep=slept.append)
    assert fake.started() == [
        {"full_refresh": False, "refresh_selection": ["fact_stream", "agg_daily_track"]}
    ]
    assert update.update_id == "u-2" and update.state == "COMPLETED"
    assert slept == [10, 20, 40, 60, 60, 60, 60]
    assert fake.api.paths("GET") == [f"/api/2.0/pipelines/{PIPELINE}/updates/u-2"] * 8


def test_a_full_refresh_is_asked_with_full_refresh_selection(
    no_real_workspace: Callable[[FakeApi], None],
) -> None:
    fake = FakePipelines(["COMPLETED"])
    no_real_workspace(fake.api)
    dlt_runner().update(full_refresh=["dim_user"], sleep=lambda s: None)
    assert fake.started() == [{"full_refresh": False, "full_refresh_selection": ["dim_user"]}]


def event(update_id: str, message: str, exceptions: list[dict[str, str]]) -> dict[str, Any]:
    """A pipeline event as the events API documents it."""
    return {
        "id": f"e-{update_id}-{len(message)}",
        "event_type": "update_progress" if not exceptions else "flow_progress",
        "level": "ERROR",
        "maturity_level": "STABLE",
        "message": message,
        "origin": {"pipeline_id": PIPELINE, "update_id": update_id, "flow_name": "fact_stream"},
        "error": {"exceptions": exceptions, "fatal": True},
        "timestamp": "2026-03-01T00:05:00.000Z",
    }


def test_a_failed_update_raises_databricks_messages_verbatim(
    no_real_workspace: Callable[[FakeApi], None],
) -> None:
    cause = {
        "class_name": "org.apache.spark.sql.AnalysisException",
        "message": "[DELTA_MISSING_CHANGE_DATA] Error getting change data for range [3 , 4]",
    }
    events = [
        event("u-1", "Update u-1 is FAILED.", []),  # another update's: not this failure
        event("u-2", "Flow 'dim_user' has FAILED fatally.", [cause]),
        event("u-2", "Update u-2 is FAILED.", []),
    ]
    fake = FakePipelines(["RUNNING", "FAILED"], events)
    no_real_workspace(fake.api)
    with pytest.raises(DltUpdateError) as failure:
        dlt_runner().update(["dim_user"], sleep=lambda s: None)
    assert failure.value.description == (
        f"update u-2 of pipeline {PIPELINE} FAILED:\n"
        "Flow 'dim_user' has FAILED fatally.\n"
        "org.apache.spark.sql.AnalysisException: [DELTA_MISSING_CHANGE_DATA] Error getting "
        "change data for range [3 , 4]\n"
        "Update u-2 is FAILED."
    )
    (query,) = [s.query for s in fake.api.sent if s.path.endswith("/events")]
    assert query == {
        "filter": "level='ERROR' AND timestamp >= '2026-03-01T00:00:00.123Z'",
        "order_by": ["timestamp asc"],
    }
    assert not [s for s in fake.api.sent if s.path.endswith("/stop")]


def test_a_canceled_update_fails_and_says_so(no_real_workspace: Callable[[FakeApi], None]) -> None:
    fake = FakePipelines(["RUNNING", "CANCELED"])
    no_real_workspace(fake.api)
    with pytest.raises(DltUpdateError, match="CANCELED:\nno error event was recorded"):
        dlt_runner().update(["dim_user"], sleep=lambda s: None)


@pytest.mark.parametrize("interruption", [DagsterExecutionInterruptedError, KeyboardInterrupt])
def test_terminating_the_dagster_run_stops_the_pipeline(
    no_real_workspace: Callable[[FakeApi], None], interruption: type[BaseException]
) -> None:
    fake = FakePipelines(["RUNNING", interruption()])
    no_real_workspace(fake.api)
    with pytest.raises(interruption):
        dlt_runner().update(["fact_stream"], sleep=lambda s: None)
    stop = fake.api.sent[-1]
    assert (stop.method, stop.path) == ("POST", f"/api/2.0/pipelines/{PIPELINE}/stop")


def test_an_update_outliving_the_timeout_is_stopped(
    no_real_workspace: Callable[[FakeApi], None],
) -> None:
    fake = FakePipelines(["RUNNING"])
    no_real_workspace(fake.api)
    with pytest.raises(DltUpdateError, match="did not finish within 30 s and was stopped"):
        dlt_runner(timeout_seconds=30).update(["fact_stream"], sleep=lambda s: None)
    assert fake.api.sent[-1].path == f"/api/2.0/pipelines/{PIPELINE}/stop"


def test_a_busy_pipeline_is_waited_for_and_then_updated(
    no_real_workspace: Callable[[FakeApi], None],
) -> None:
    fake = FakePipelines(["COMPLETED"], busy=["RUNNING", "RUNNING", "COMPLETED"])
    no_real_workspace(fake.api)
    logged: list[str] = []
    update = dlt_runner().update(["agg_daily_user"], log=logged.append, sleep=lambda s: None)
    assert update.state == "COMPLETED"
    assert len(fake.started()) == 2  # refused while u-1 ran, accepted after it finished
    assert f"pipeline {PIPELINE} is busy with update u-1: waiting for it" in logged
    assert not [s for s in fake.api.sent if s.path.endswith("/stop")]  # never stops another run's


def test_a_start_refused_for_another_reason_surfaces_the_error(
    no_real_workspace: Callable[[FakeApi], None],
) -> None:
    def respond(request: Sent) -> Any:
        if request.method == "POST":
            raise DatabricksError("Pipeline spotify_gold does not have a table named 'dim_usr'")
        return {"pipeline_id": PIPELINE, "state": "IDLE", "latest_updates": []}

    no_real_workspace(FakeApi(respond))
    with pytest.raises(DltUpdateError, match="does not have a table named 'dim_usr'"):
        dlt_runner().update(["dim_usr"], sleep=lambda s: None)


def test_gold_assets_on_databricks_send_their_tables_and_say_which_checks_ran(
    no_real_workspace: Callable[[FakeApi], None],
    monkeypatch: pytest.MonkeyPatch,
    lake_writer: LakeWriter,
) -> None:
    monkeypatch.setattr(databricks_engines.time, "sleep", lambda seconds: None)
    fake = FakePipelines(["COMPLETED"])
    no_real_workspace(fake.api)
    resources = {"gold_engine": dlt_runner(), "lake_writer": lake_writer}
    fact = build_fact_asset(CONFIGURED)
    # A backdated refresh of a few fact days refreshes the fact's materialized view.
    result = materialize([fact], resources=resources, tags=partition_range_tags(
        date(2026, 3, 1), date(2026, 3, 2)))  # fmt: skip
    dimension = build_dimension_asset(CONFIGURED, DIM_USER)
    config = {"ops": {dimension.op.name: {"config": {"full_refresh": True}}}}
    again = materialize([dimension], resources=resources, run_config=config)
    assert result.success and again.success
    assert fake.started() == [
        {"full_refresh": False, "refresh_selection": ["fact_stream"]},
        {"full_refresh": False, "full_refresh_selection": ["dim_user"]},
    ]
    (*_, metadata) = [m.metadata for m in result.asset_materializations_for_node(fact.op.name)]
    assert metadata["update_id"].value == "u-2"
    assert metadata["run_partitions"].value == "2026-03-01 .. 2026-03-02"
    evaluations = [
        e.event_specific_data
        for e in again.all_events
        if e.event_type is DagsterEventType.ASSET_CHECK_EVALUATION
    ]
    expected = {r.name for r in DIM_USER.gold.expectations} | set(SCD2_INVARIANTS)
    assert {e.check_name for e in evaluations} == expected
    for evaluation in evaluations:  # not evaluated: a visible, non-blocking warning
        assert not evaluation.passed and evaluation.severity is AssetCheckSeverity.WARN
        assert evaluation.metadata["evaluated"].value is False


# --- the asset bundle ---


def bundle() -> dict[str, Any]:
    return yaml.safe_load((REPO / "databricks.yml").read_text(encoding="utf-8"))


def walk(value: Any) -> Iterator[Any]:
    yield value
    if isinstance(value, dict):
        value = list(value.values())
    for child in value if isinstance(value, list) else []:
        yield from walk(child)


def pipeline_constant(name: str) -> Any:
    """A module-level constant of dlt/gold_pipeline.py, read without running the source (running
    it registers a pipeline graph)."""
    source = ast.parse((REPO / "dlt" / "gold_pipeline.py").read_text(encoding="utf-8"))
    (value,) = [
        node.value
        for node in source.body
        if isinstance(node, ast.Assign) and [getattr(t, "id", "") for t in node.targets] == [name]
    ]
    return ast.literal_eval(value)


def test_the_bundle_deploys_the_pipeline_from_dlt_and_the_silver_task() -> None:
    config = bundle()
    assert config["bundle"]["name"] == "spotify-lakehouse"
    targets = config["targets"]
    assert targets["dev"]["mode"] == "development" and targets["dev"]["default"] is True
    assert targets["prod"]["mode"] == "production"
    declared = set(config["variables"])
    assert {"lake_url", "catalog", "schema"} <= declared

    (pipeline,) = config["resources"]["pipelines"].values()
    paths = [library["file"]["path"] for library in pipeline["libraries"]]
    assert paths == ["./dlt/gold_pipeline.py"]
    assert (REPO / paths[0]).is_file()
    # The configuration key the pipeline source reads the lake root from.
    assert pipeline["configuration"] == {pipeline_constant("LAKE_URL_CONF"): "${var.lake_url}"}
    assert (pipeline["catalog"], pipeline["schema"]) == ("${var.catalog}", "${var.schema}")

    (job,) = config["resources"]["jobs"].values()
    (task,) = job["tasks"]
    python_file = task["spark_python_task"]["python_file"]
    assert posixpath.normpath(python_file) == ENTRYPOINT
    assert (REPO / ENTRYPOINT).is_file()
    # The job passes what Dagster passes, and the task parses it.
    parameters = task["spark_python_task"]["parameters"]
    sample = {"${workspace.file_path}": FILES, "${var.lake_url}": LAKE_URL,
              "{{job.parameters.table}}": "FactStream", "{{job.parameters.first_day}}": "",
              "{{job.parameters.last_day}}": "", "databricks-{{job.run_id}}": "r"}  # fmt: skip
    parsed = databricks_silver.parse([sample.get(p, p) for p in parameters])
    assert parsed == SilverTask(FILES, LAKE_URL, "FactStream", None, "r")
    assert [lib["pypi"]["package"] for lib in task["libraries"]] == list(TASK_LIBRARIES)
    (cluster,) = job["job_clusters"]
    assert cluster["job_cluster_key"] == task["job_cluster_key"]
    environment = {
        k: v.replace("${var.secret_scope}", "spotify")
        for k, v in cluster["new_cluster"]["spark_env_vars"].items()
    }
    assert environment == lake_environment()
    assert cluster["new_cluster"]["data_security_mode"] == "SINGLE_USER"
    assert cluster["new_cluster"]["spark_conf"] == databricks_engines.SILVER_SPARK_CONF
    # Every variable used is declared; the bundle holds references, never a secret value.
    text = (REPO / "databricks.yml").read_text(encoding="utf-8")
    used = {piece.split("}")[0] for piece in text.split("${var.")[1:]}
    assert used <= declared
    secrets = [s for s in walk(config) if isinstance(s, str) and "secrets/" in s]
    assert secrets and all(s.startswith("{{secrets/") and s.endswith("}}") for s in secrets)
