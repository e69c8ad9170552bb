"""The Dagster UI end to end: `dg dev` on 127.0.0.1 over a loaded lake, a partition backfill
launched through GraphQL (the UI's own API) and executed by the daemon, then headless-Chromium
screenshots of the asset graph, a partitioned asset and its checks.

The assertions are on the runs and the data: the backfill's runs succeeded, they materialized
bronze, silver and gold (fact and aggregates) for exactly the requested days, and gold still
equals silver on those days. Then what a user reads, through GraphQL: runs named by their job and
tags, every asset's columns described, the source tables observed by the load, and each
partition's own row count. The screenshots go to the test's output (their paths are printed,
recorded as junit properties and copied to `$SPOTIFY_TEST_ARTIFACTS` when set), and replace the
README's in docs/screenshots/ when SPOTIFY_REFRESH_SCREENSHOTS=1.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import urllib.error
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from dagster import AssetKey, AssetRecordsFilter, DagsterInstance
from deltalake import DeltaTable

from spotify_assets.catalog.columns import gold_columns, silver_columns, source_columns
from spotify_assets.catalog.lake_paths import gold_path, silver_path
from spotify_assets.catalog.tables import CATALOG
from spotify_assets.orchestration.assets.bronze import bronze_key
from spotify_assets.orchestration.assets.gold import gold_key
from spotify_assets.orchestration.assets.silver import silver_key
from spotify_assets.orchestration.assets.source import source_key
from spotify_assets.orchestration.ingest import DAYS_TAG, JOBS, RUN_KIND_TAG, TABLES_TAG
from spotify_assets.orchestration.partitions import ROW_COUNT, partition_range_tags
from spotify_assets.orchestration.settings import Settings
from spotify_assets.silver.transform import CHANGE_DATE
from tests.helpers.dagster_dev import graphql, start_dev, stop_dev
from tests.helpers.paths import REPO
from tests.helpers.servers import free_port

# Setup (source, initial load, `dg dev`) plus a daemon-run backfill take about 3 minutes
# on 2 shared cores; the margin is for a busy machine, not for a slower test.
pytestmark = [pytest.mark.ui, pytest.mark.timeout(600)]

# The loaded lakehouse's history ends the day before END (`small_source`: four days ago); the
# backfill rebuilds its last two days.
END = datetime.now(UTC).date() - timedelta(days=4)
DAYS = [END - timedelta(days=2), END - timedelta(days=1)]
FACT = CATALOG.fact
BACKFILLED = [
    bronze_key(FACT),
    silver_key(FACT),
    gold_key(FACT.lake_name),
    *(gold_key(a.name) for a in CATALOG.aggregates),
]
FACT_COLUMNS = [
    "stream_id",
    "user_id",
    "track_id",
    "listen_duration",
    "device_type",
    "stream_timestamp",
]
READY_SECONDS = 90
BACKFILL_SECONDS = 240
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",  # runs as root in CI
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1600,1000",
    # Let the UI load its data and lay out the graph before the capture.
    "--virtual-time-budget=15000",
]

WORKSPACE = """
{ workspaceOrError { __typename ... on Workspace { locationEntries {
    name loadStatus locationOrLoadError { __typename ... on PythonError { message } } } } } }
"""
LAUNCH = """
mutation Launch($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on Error { message }
  }
}
"""
BACKFILL = """
query Backfill($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    __typename
    ... on PartitionBackfill { status error { message stack } runs { runId status } }
    ... on Error { message }
  }
}
"""
RUNS = """
{ runsOrError { __typename ... on Runs { results { runId jobName tags { key value } } } } }
"""
COLUMNS = """
{ assetNodes { assetKey { path } metadataEntries {
    label ... on TableSchemaMetadataEntry { schema { columns { name description } } } } } }
"""
EVENTS = """
query Events($key: AssetKeyInput!) { assetOrError(assetKey: $key) { __typename ... on Asset {
    assetObservations(limit: 1) { runId metadataEntries { label ...Values } }
    assetMaterializations { partition runId metadataEntries { label ...Values } } } } }
fragment Values on MetadataEntry {
    ... on IntMetadataEntry { intValue } ... on TextMetadataEntry { text } }
"""
SUCCEEDED = {"COMPLETED", "COMPLETED_SUCCESS"}
FAILED = {"FAILED", "COMPLETED_FAILED", "CANCELED"}


@dataclass(frozen=True)
class DagsterUi:
    url: str
    settings: Settings
    log: Path  # the output of `dg dev`

    def graphql(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        return graphql(self.url, query, variables)

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


@dataclass(frozen=True)
class Backfill:
    id: str
    status: str
    error: dict[str, Any] | None
    runs: list[dict[str, str]]
    gold_before: list[tuple[Any, ...]]
    gold_version_before: int


def poll(what: str, seconds: float, check: Callable[[], Any], ui: DagsterUi) -> Any:
    """Call `check` until it returns something truthy; fail after `seconds` with the UI's log."""
    deadline = time.monotonic() + seconds
    while not (result := check()):
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {seconds} s\n--- dg dev ---\n{ui.log_tail()}")
        time.sleep(2)
    return result


@pytest.fixture(scope="module")
def dagster_ui(tmp_path_factory: pytest.TempPathFactory, loaded_home: Path) -> Iterator[DagsterUi]:
    """`dg dev` over a copy of the loaded lakehouse; the UI and the test share one
    instance."""
    home = tmp_path_factory.mktemp("ui") / "home"
    shutil.copytree(loaded_home, home)
    settings = Settings.from_env({"SPOTIFY_HOME": str(home)})
    port = free_port()
    ui = DagsterUi(url=f"http://127.0.0.1:{port}", settings=settings, log=home / "dagster-dev.log")
    process = start_dev(settings, port, ui.log)
    try:

        def location_loaded() -> bool:
            if process.poll() is not None:
                pytest.fail(f"dg dev exited ({process.returncode}):\n{ui.log_tail()}")
            try:
                workspace = ui.graphql(WORKSPACE)["workspaceOrError"]
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                return False  # the webserver is not listening yet
            entries = workspace.get("locationEntries") or []
            if not entries or any(e["loadStatus"] != "LOADED" for e in entries):
                return False
            errors = [e["locationOrLoadError"].get("message") for e in entries]
            assert errors == [None], f"the code location failed to load: {errors}"
            return True

        # The backfill resolves its assets in the code location: it must be loaded, not only
        # the webserver answering.
        poll("the UI's code location loaded", READY_SECONDS, location_loaded, ui)
        yield ui
    finally:
        stop_dev(process)


def fact_rows(settings: Settings, layer: str, day_column: str) -> list[tuple[Any, ...]]:
    """The fact rows of `layer` on DAYS, read with delta-rs."""
    table = DeltaTable(f"{settings.lake_url}/{layer}/{FACT.lake_name}").to_pyarrow_table(
        columns=[*FACT_COLUMNS, day_column]
    )
    picked = table.filter(pc.is_in(table[day_column], value_set=pa.array(DAYS)))
    return sorted(zip(*(picked[c].to_pylist() for c in FACT_COLUMNS), strict=True))


def gold_fact_rows(settings: Settings) -> list[tuple[Any, ...]]:
    return fact_rows(settings, "gold", FACT.gold.date_column)


@pytest.fixture(scope="module")
def backfill(dagster_ui: DagsterUi) -> Backfill:
    """A backfill of DAYS along the fact path, launched as the UI launches one; returns its
    final state whether it succeeded or not (the screenshot is wanted either way)."""
    settings = dagster_ui.settings
    gold_before = gold_fact_rows(settings)
    version_before = DeltaTable(f"{settings.lake_url}/gold/{FACT.lake_name}").version()
    params = {
        "partitionNames": [d.isoformat() for d in DAYS],
        "assetSelection": [{"path": key.path} for key in BACKFILLED],
        "title": "UI test: last two days of the fact path",
    }
    launched = dagster_ui.graphql(LAUNCH, {"params": params})["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    backfill_id = launched["backfillId"]

    def finished() -> dict[str, Any] | None:
        state = dagster_ui.graphql(BACKFILL, {"id": backfill_id})["partitionBackfillOrError"]
        assert state["__typename"] == "PartitionBackfill", state
        return state if state["status"] in SUCCEEDED | FAILED else None

    # Asset backfills are executed by the daemon, which looks at them every 30 s.
    state = poll(f"backfill {backfill_id} finished", BACKFILL_SECONDS, finished, dagster_ui)
    return Backfill(
        id=backfill_id,
        status=state["status"],
        error=state["error"],
        runs=state["runs"],
        gold_before=gold_before,
        gold_version_before=version_before,
    )


def test_a_backfill_launched_through_graphql_rebuilds_the_days(
    dagster_ui: DagsterUi, backfill: Backfill
) -> None:
    assert backfill.status in SUCCEEDED, (
        f"backfill {backfill.id}: {backfill.status} {backfill.error} runs={backfill.runs}\n"
        f"--- dg dev ---\n{dagster_ui.log_tail()}"
    )
    assert backfill.runs and {r["status"] for r in backfill.runs} == {"SUCCESS"}, backfill.runs
    run_ids = {r["runId"] for r in backfill.runs}
    partitions = [d.isoformat() for d in DAYS]

    settings = dagster_ui.settings
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DAGSTER_HOME", str(settings.dagster_home))
        with DagsterInstance.get() as instance:
            for key in BACKFILLED:
                records = instance.fetch_materializations(
                    AssetRecordsFilter(asset_key=key, asset_partitions=partitions), limit=100
                ).records
                by_backfill = {r.partition_key for r in records if r.run_id in run_ids}
                assert by_backfill == set(partitions), key.to_user_string()

    # The days were rewritten (a new Delta version), and to the same content: gold's fact on
    # those days is still exactly silver's streams of those days.
    gold = gold_fact_rows(settings)
    assert DeltaTable(f"{settings.lake_url}/gold/{FACT.lake_name}").version() > (
        backfill.gold_version_before
    )
    assert len(gold) > 0
    assert gold == backfill.gold_before
    assert gold == fact_rows(settings, "silver", CHANGE_DATE)


def asset_events(ui: DagsterUi, key: AssetKey) -> dict[str, Any]:
    asset = ui.graphql(EVENTS, {"key": {"path": key.path}})["assetOrError"]
    assert asset["__typename"] == "Asset", (key.to_user_string(), asset)
    return asset


def values(event: dict[str, Any]) -> dict[str, Any]:
    """An event's metadata as the UI shows it: label -> number or text."""
    return {e["label"]: e.get("intValue", e.get("text")) for e in event["metadataEntries"]}


def test_runs_are_named_by_their_job_and_tagged_with_what_they_did(
    dagster_ui: DagsterUi, backfill: Backfill
) -> None:
    runs = dagster_ui.graphql(RUNS)["runsOrError"]["results"]
    tags = {r["runId"]: {t["key"]: t["value"] for t in r["tags"]} for r in runs}
    # The lake was loaded by `spotify-lakehouse run`: one incremental load of every table.
    (load,) = [r for r in runs if RUN_KIND_TAG in tags[r["runId"]]]
    loaded = tags[load["runId"]]
    assert load["jobName"] == JOBS["incremental"]
    assert loaded[RUN_KIND_TAG] == "incremental"
    assert set(loaded[TABLES_TAG].split(", ")) == {t.name for t in CATALOG}
    first, last = (date.fromisoformat(d) for d in loaded[DAYS_TAG].split(".."))
    assert first < last <= END
    # The UI's backfill: each of its runs names the backfill and the days it rebuilt.
    for run in backfill.runs:
        run_tags = tags[run["runId"]]
        assert run_tags["dagster/backfill"] == backfill.id
        assert run_tags.items() >= partition_range_tags(DAYS[0], DAYS[-1]).items()


def test_every_asset_shows_its_columns_described_by_the_catalog(dagster_ui: DagsterUi) -> None:
    nodes = dagster_ui.graphql(COLUMNS)["assetNodes"]
    shown = {
        AssetKey(n["assetKey"]["path"]): [
            (c["name"], c["description"])
            for e in n["metadataEntries"]
            if e["label"] == "dagster/column_schema"
            for c in e["schema"]["columns"]
        ]
        for n in nodes
    }
    expected = {}
    for table in CATALOG:
        expected[source_key(table)] = source_columns(table)
        expected[silver_key(table)] = silver_columns(table)
        expected |= {gold_key(n): gold_columns(CATALOG, n) for n in CATALOG.gold_tables(table)}
    for key, columns in expected.items():
        assert shown[key] == [(c.name, c.description) for c in columns], key.to_user_string()
    # Bronze adds its audit columns, each described.
    for table in CATALOG:
        bronze = shown[bronze_key(table)]
        assert [n for n, _ in bronze[: len(table.columns)]] == list(table.column_names)
        assert all(description for _, description in bronze), table.name


def test_the_source_tables_were_observed_by_the_load(dagster_ui: DagsterUi) -> None:
    """The lineage starts with live numbers, not "Never observed": the load that copied each
    source table recorded its row count."""
    runs = dagster_ui.graphql(RUNS)["runsOrError"]["results"]
    loads = {r["runId"] for r in runs if r["jobName"] == JOBS["incremental"]}
    for table in CATALOG:
        (observed,) = asset_events(dagster_ui, source_key(table))["assetObservations"]
        assert observed["runId"] in loads, table.name
        assert values(observed)["rows"] > 0, table.name


def test_each_partition_shows_its_own_row_count(dagster_ui: DagsterUi, backfill: Backfill) -> None:
    """Every partition's latest materialization counts that partition's rows, whether a CLI
    load wrote many days in one run or the UI's backfill rebuilt some."""
    lake = dagster_ui.settings.lake_url
    layers = {
        silver_key(FACT): (silver_path(FACT), CHANGE_DATE),
        gold_key(FACT.lake_name): (gold_path(FACT.lake_name), FACT.gold.date_column),
    }
    for key, (relative, day_column) in layers.items():
        days = DeltaTable(f"{lake}/{relative}").to_pyarrow_table(columns=[day_column])
        counts = {
            str(row["values"]): row["counts"]
            for row in pc.value_counts(days[day_column]).to_pylist()
        }
        latest: dict[str, dict[str, Any]] = {}
        for event in asset_events(dagster_ui, key)["assetMaterializations"]:
            latest.setdefault(event["partition"], event)  # newest first
        shown = {day: values(event)[ROW_COUNT] for day, event in latest.items()}
        assert {day: n for day, n in shown.items() if n} == counts, key.to_user_string()
        assert {latest[d.isoformat()]["runId"] for d in DAYS} <= {r["runId"] for r in backfill.runs}


SCREENSHOTS = REPO / "docs" / "screenshots"
GOLD_FACT = f"assets/{'/'.join(gold_key(FACT.lake_name).path)}"
# The README's pictures: gold's fact and everything it is built from (source tables included),
# its partitions, and the checks of silver's fact. (A partition's metadata would show the lake's
# path on the machine that took the picture.)
PAGES = {
    "asset-graph": f"{GOLD_FACT}?view=lineage&lineageScope=upstream&lineageDepth=4",
    "partitioned-asset": f"{GOLD_FACT}?view=partitions",
    "asset-checks": f"assets/{'/'.join(silver_key(FACT).path)}?view=checks",
}


@pytest.mark.parametrize("name", list(PAGES))
def test_a_screenshot_of_the_ui_after_the_backfill(
    dagster_ui: DagsterUi,
    backfill: Backfill,
    tmp_path: Path,
    record_property: Callable[[str, object], None],
    name: str,
) -> None:
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("no screenshot: chromium is not installed (`make test` installs it)")
    # The first visit opens a "join the community" dialog over the page; mark it seen.
    dagster_ui.graphql("mutation { setNuxSeen }")
    refresh = os.environ.get("SPOTIFY_REFRESH_SCREENSHOTS") == "1"
    screenshot = (SCREENSHOTS if refresh else tmp_path) / f"{name}.png"
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            chromium,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={tmp_path / 'chromium'}",
            f"--screenshot={screenshot}",
            f"{dagster_ui.url}/{PAGES[name]}",
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    print(f"{name} after backfill {backfill.id}: {screenshot}")
    record_property(f"screenshot-{name}", str(screenshot))
    if artifacts := os.environ.get("SPOTIFY_TEST_ARTIFACTS"):
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        shutil.copy(screenshot, Path(artifacts) / screenshot.name)
    # A blank 1600x1000 page compresses to a few kB; a rendered page is well over 50.
    assert screenshot.stat().st_size > 50_000
