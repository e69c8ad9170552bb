"""Automation (README: Automation): the CDC arrival sensor, the reconciliation sensor and the daily
schedule request the right runs, and executing those runs brings gold level with the source.

Sensors are evaluated with Dagster's testing API against a real embedded source and lake; the
runs they request are executed in process exactly as requested (assets, tags, run config)."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from dagster import (
    DagsterEventType,
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    Definitions,
    RunRequest,
    build_schedule_context,
    build_sensor_context,
    instance_for_test,
)

from resources.lake import LakeStorage
from resources.lease import LEASE_DIR, Holder, LeaseRecord, WriterLease
from resources.source_db import SourceDatabase
from spotify_assets.catalog.tables import CATALOG
from spotify_assets.cli import main
from spotify_assets.cli.commands import dagster_instance, source_init, source_simulate
from spotify_assets.orchestration.assets.bronze import bronze_key
from spotify_assets.orchestration.assets.gold import gold_key
from spotify_assets.orchestration.assets.silver import silver_key
from spotify_assets.orchestration.assets.source import build_source_observation, source_key
from spotify_assets.orchestration.catch_up import CatchUp
from spotify_assets.orchestration.definitions import build_definitions
from spotify_assets.orchestration.ingest import WRITER_TAG
from spotify_assets.orchestration.partitions import (
    PARTITION_RANGE_END_TAG,
    PARTITION_RANGE_START_TAG,
)
from spotify_assets.orchestration.resources import copy_runner, source_database
from spotify_assets.orchestration.settings import Settings
from tests.helpers.gold_reference import assert_gold_equals_source, small_source
from tests.helpers.servers import PG_PASSWORD
from tests.helpers.source import DIRTY, LATE, SEED

# The key prefixes a run that copies from the source selects: its observation, then every layer.
COPYING_RUN = {"source", "bronze", "silver", "gold"}


@pytest.fixture
def lakehouse(tmp_path: Path) -> Iterator[tuple[Settings, Definitions, DagsterInstance]]:
    settings = small_source(tmp_path)
    with DagsterInstance.ephemeral() as instance:
        yield settings, build_definitions(settings), instance


@pytest.fixture
def loaded(loaded_lakehouse: Settings) -> Iterator[tuple[Settings, Definitions, DagsterInstance]]:
    """A copy of the small source loaded through gold, and the instance that loaded it."""
    with DagsterInstance.get() as instance:
        yield loaded_lakehouse, build_definitions(loaded_lakehouse), instance


def evaluate(defs: Definitions, name: str, instance: DagsterInstance, cursor: str | None = None):
    sensor = defs.resolve_sensor_def(name)
    with build_sensor_context(
        instance=instance, cursor=cursor, resources=defs.resources, definitions=defs
    ) as context:
        result = sensor.evaluate_tick(context)
    return result.run_requests or [], result.skip_message, result.cursor


def execute(defs: Definitions, request: RunRequest, instance: DagsterInstance) -> None:
    """Run what a sensor requested: its assets, tags and run config, in process."""
    CatchUp(defs, instance).execute(request)


def requested_tables(request: RunRequest) -> set[str]:
    return {k.path[-1] for k in request.asset_selection if k.path[0] == "bronze"}


def test_arrival_sensor_requests_incremental_runs_that_reach_gold(lakehouse) -> None:
    settings, defs, instance = lakehouse
    requests, _, cursor = evaluate(defs, "cdc_arrival_sensor", instance)
    assert {t for r in requests for t in requested_tables(r)} == {
        "DimUser", "DimArtist", "DimTrack", "DimDate", "FactStream"
    }  # fmt: skip
    partitioned = next(r for r in requests if "FactStream" in requested_tables(r))
    # The small source's history (and clock) ends 4 days ago: the run ends with its last day.
    last_day = datetime.now(UTC).date() - timedelta(days=5)
    assert partitioned.tags[PARTITION_RANGE_END_TAG] == str(last_day)
    assert {r.tags["spotify/run"] for r in requests} == {"incremental"}
    assert partitioned.tags["spotify/days"].endswith(f"..{last_day}")
    assert {k.path[0] for k in partitioned.asset_selection} == COPYING_RUN
    for request in requests:
        execute(defs, request, instance)
    assert_gold_equals_source(settings)
    assert {run.job_name for run in instance.get_runs()} == {"incremental_load"}

    requests, skip, cursor = evaluate(defs, "cdc_arrival_sensor", instance, cursor)
    assert requests == [] and "no change" in skip

    source_simulate(settings, 1, SEED, DIRTY)
    requests, _, _ = evaluate(defs, "cdc_arrival_sensor", instance, cursor)
    moved = {t for r in requests for t in requested_tables(r)}
    assert {"FactStream", "DimUser"} <= moved
    for request in requests:
        execute(defs, request, instance)
    assert_gold_equals_source(settings)


def test_reconciliation_sensor_refreshes_exactly_the_days_with_late_rows(loaded) -> None:
    settings, defs, instance = loaded
    assert evaluate(defs, "reconciliation_sensor", instance)[0] == []

    before = copy_runner(settings).store(CATALOG.fact).current().watermark
    source_simulate(settings, 2, SEED, replace(LATE, late_max_days=2))
    for request in evaluate(defs, "cdc_arrival_sensor", instance)[0]:
        execute(defs, request, instance)

    requests, _, _ = evaluate(defs, "reconciliation_sensor", instance)
    assert requests, "late streams fell into loaded days"
    assert {t for r in requests for t in requested_tables(r)} == {"FactStream"}
    for request in requests:
        first = datetime.fromisoformat(request.tags[PARTITION_RANGE_START_TAG]).date()
        assert first < before.date(), "only days loaded before the late rows arrived"
        assert request.tags["spotify/run"] == "repair"
        assert request.tags["spotify/days"].startswith(f"{first}..")
        assert {k.path[0] for k in request.asset_selection} == COPYING_RUN
        assert [k for k in request.asset_selection if k.path[0] == "source"] == [
            source_key(CATALOG.fact)
        ], "it observes the table it copies, no other"
    again, _, _ = evaluate(defs, "reconciliation_sensor", instance)
    assert [r.run_key for r in again] == [r.run_key for r in requests], "same stale days, same key"

    for request in requests:
        execute(defs, request, instance)
    assert evaluate(defs, "reconciliation_sensor", instance)[0] == []
    assert_gold_equals_source(settings)


def test_sensor_runs_observe_exactly_the_source_tables_they_copy(loaded) -> None:
    """Automation's runs start the lineage with live numbers, as the CLI's do: each records an
    observation of the source tables it copies (row count, change-feed position), no other."""
    settings, defs, instance = loaded
    source_simulate(settings, 1, SEED, DIRTY)
    before = {r.run_id for r in instance.get_runs()}
    requests, _, _ = evaluate(defs, "cdc_arrival_sensor", instance)
    copied = {t for r in requests for t in requested_tables(r)}
    for request in requests:
        execute(defs, request, instance)
    automated = {r.run_id for r in instance.get_runs()} - before
    observed = set()
    with source_database(settings).session() as session:
        for table in CATALOG:
            (record,) = instance.fetch_observations(source_key(table), limit=1).records
            if record.run_id in automated:
                observed.add(table.name)
                stats = session.table_stats(table)
                metadata = record.asset_observation.metadata
                assert {n: metadata[n].value for n in stats} == {
                    n: "" if v is None else v for n, v in stats.items()
                }, table.name
    assert copied and observed == copied


def test_a_run_builds_gold_fact_before_the_tables_the_fact_does_not_read(loaded) -> None:
    """New streams reach gold as early as a run can bring them: its steps run one at a time, the
    fact's own and those of the dimensions it looks up first; the other tables' after."""
    settings, defs, instance = loaded
    source_simulate(settings, 1, SEED, DIRTY)
    requests, _, _ = evaluate(defs, "cdc_arrival_sensor", instance)
    (request,) = [r for r in requests if "FactStream" in requested_tables(r)]
    inputs = CATALOG.fact_inputs()
    assert requested_tables(request) - {t.name for t in inputs}  # steps that could come first
    execute(defs, request, instance)

    (run,) = instance.get_runs(limit=1)
    started = [
        e.step_key for e in instance.all_logs(run.run_id, of_type=DagsterEventType.STEP_START)
    ]
    fact = gold_key(CATALOG.fact.lake_name).to_python_identifier()
    keys = [bronze_key(t) for t in inputs] + [silver_key(t) for t in inputs]
    keys += [gold_key(t.lake_name) for t in inputs if t != CATALOG.fact]
    observation = build_source_observation(CATALOG, settings.source_dialect).op.name
    assert set(started[: started.index(fact)]) == {
        observation,
        *(k.to_python_identifier() for k in keys),
    }


def test_an_incremental_run_resumes_where_a_stopped_run_left_silver_and_gold(loaded) -> None:
    settings, defs, instance = loaded
    source_simulate(settings, 2, SEED, DIRTY)
    # A run stopped after bronze committed: bronze's watermark moved, silver and gold did not.
    requests, _, cursor = evaluate(defs, "cdc_arrival_sensor", instance)
    partitioned = next(r for r in requests if "FactStream" in requested_tables(r))
    bronze = [k for k in partitioned.asset_selection if k.path[0] == "bronze"]
    ops = {k.to_python_identifier() for k in bronze}
    bronze_only = RunRequest(
        asset_selection=bronze,
        run_config={"ops": {op: c for op, c in partitioned.run_config["ops"].items() if op in ops}},
        tags=partitioned.tags,
    )
    execute(defs, bronze_only, instance)
    with pytest.raises(AssertionError):
        assert_gold_equals_source(settings)

    source_simulate(settings, 1, SEED + 1, DIRTY)
    for request in evaluate(defs, "cdc_arrival_sensor", instance, cursor)[0]:
        execute(defs, request, instance)
    assert_gold_equals_source(settings)


def test_daily_schedule_requests_an_incremental_run_of_every_table(lakehouse) -> None:
    _, defs, _ = lakehouse
    schedule = defs.resolve_schedule_def("daily_catch_up")
    # A schedule reads its instance through a reference, which only a stored instance has.
    with (
        instance_for_test() as instance,
        build_schedule_context(
            instance=instance,
            scheduled_execution_time=datetime.now(UTC),
            resources=defs.resources,
        ) as context,
    ):
        requests = list(schedule.evaluate_tick(context).run_requests or [])
    assert {t for r in requests for t in requested_tables(r)} == {
        "DimUser", "DimArtist", "DimTrack", "DimDate", "FactStream"
    }  # fmt: skip
    assert all(r.tags["spotify/writer"] == "lakehouse" for r in requests)


def abandon_the_lake(settings: Settings, instance: DagsterInstance) -> str:
    """What SIGKILL leaves of a writer run (a CLI `run`, a run worker): its run STARTED in
    Dagster, and its lake writer lease record unreleased, naming a process that is gone."""
    run = DagsterRun("incremental_load", str(uuid.uuid4()), status=DagsterRunStatus.STARTED,
                     tags=WRITER_TAG)  # fmt: skip
    instance.add_run(run)
    ended = subprocess.Popen(["true"])
    ended.wait()
    lake = LakeStorage(url=settings.lake_url)
    current = WriterLease(lake).current()
    number = current.number + 1 if current else 1
    holder = replace(Holder.here("CLI run", run.run_id), pid=ended.pid)
    record = LeaseRecord(number, holder, datetime.now(UTC) + timedelta(seconds=60))
    lake.create_json(f"{LEASE_DIR}/{number:010d}.json", record.to_json())
    return run.run_id


def test_a_run_killed_holding_the_lake_is_failed_and_blocks_no_queued_run(
    lakehouse, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Dagster showed a killed writer run STARTED for ever, and the run queue, which lets one
    writer run at a time, kept every sensor and UI run queued behind it. The next arrival
    sensor tick, or the next command that takes the lake, marks it failed."""
    settings, defs, _ = lakehouse
    monkeypatch.setenv("SPOTIFY_HOME", str(settings.home))
    for name in ("DAGSTER_HOME", "SPOTIFY_SOURCE_ODBC", "SPOTIFY_LAKE_URL"):
        monkeypatch.delenv(name, raising=False)
    with dagster_instance(settings) as instance:
        killed = abandon_the_lake(settings, instance)
        evaluate(defs, "cdc_arrival_sensor", instance)
        assert instance.get_run_by_id(killed).status == DagsterRunStatus.FAILURE
        killed = abandon_the_lake(settings, instance)
        assert main(["verify", "--repair"]) == 0
        assert instance.get_run_by_id(killed).status == DagsterRunStatus.FAILURE
        failure = instance.all_logs(killed, of_type=DagsterEventType.RUN_FAILURE)
        assert "held the lake writer lease" in failure[0].message


def test_sensors_skip_until_the_source_exists(tmp_path: Path) -> None:
    defs = build_definitions(Settings.from_env({"SPOTIFY_HOME": str(tmp_path)}))
    with DagsterInstance.ephemeral() as instance:
        for name in ("cdc_arrival_sensor", "reconciliation_sensor"):
            requests, skip, _ = evaluate(defs, name, instance)
            assert requests == [] and "not initialised" in skip


def test_sensors_plan_on_a_server_source_named_by_its_connection_string(
    tmp_path: Path, postgres_source: SourceDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Dagster resolves the resource's `EnvVar` when a sensor starts: the sensors (and the demo,
    which ticks them in process) plan on the server, and the definitions never hold the
    password."""
    env = {"SPOTIFY_HOME": str(tmp_path), "SPOTIFY_SOURCE_ODBC": postgres_source.connection_string}
    monkeypatch.setenv("SPOTIFY_SOURCE_ODBC", env["SPOTIFY_SOURCE_ODBC"])
    settings = Settings.from_env(env)
    source_init(settings, 0.001, SEED, datetime.now(UTC).date(), history_days=7)
    defs = build_definitions(settings)
    assert PG_PASSWORD not in repr(defs.resources)
    with DagsterInstance.ephemeral() as instance:
        requests, _, _ = evaluate(defs, "cdc_arrival_sensor", instance)
        assert {t for r in requests for t in requested_tables(r)} == {
            "DimUser", "DimArtist", "DimTrack", "DimDate", "FactStream"
        }  # fmt: skip
        requests, skip, _ = evaluate(defs, "reconciliation_sensor", instance)
        assert requests == [] and "matches the source" in skip
