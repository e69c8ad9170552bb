"""Sensors and the schedule that keep every layer up to date (README: Automation).

- `cdc_arrival_sensor` polls each table's change feed or watermark cheaply (a count and a max per
  table; the cursor keeps one position per table) and requests an incremental run of the tables
  that moved: bronze from their watermark, then silver and gold of the partitions touched.
- `reconciliation_sensor` compares every layer boundary (`resources/reconciler.py`): per-day row
  counts and checksums of the source and bronze over the lookback, and bronze, silver, gold fact
  and aggregates on every loaded day from manifests and Delta logs. It requests a rebuild of
  exactly the ranges of days that differ, from the first layer that differs down: late or missing
  rows and interrupted runs reach gold with no manual step. Eager automation would only request
  the latest partition, so these runs select downstream themselves.
- `daily_catch_up` is the fallback when sensors are off: an incremental run of every table.

All are off until turned on (UI: Automation). Their runs carry `WRITER_TAG`, which the instance's
run queue limits to one at a time (`dagster.yaml`, written by the CLI), so that they do not start
only to wait for the lake writer lease (`resources/lease.py`), which every writer holds: two runs
must never write one table's bronze manifest or gold MERGE concurrently.
"""

from __future__ import annotations

import hashlib
import json

from dagster import (
    AssetSelection,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    ResourceParam,
    RunRequest,
    ScheduleDefinition,
    ScheduleEvaluationContext,
    SensorDefinition,
    SensorEvaluationContext,
    SkipReason,
    schedule,
    sensor,
)

from resources.copy_runner import CopyRunner
from resources.dagster_resources import fail_abandoned_run
from resources.engines import GoldEngine
from resources.lease import WriterLease
from spotify_assets.catalog.lake_paths import BRONZE, GOLD, SILVER, SOURCE
from spotify_assets.catalog.tables import Catalog
from spotify_assets.orchestration.ingest import (
    WRITER_TAG,
    PlannedRun,
    plan_incremental,
    plan_repairs,
)

# Dagster's sensor daemon looks at sensors every 5 s. A minimum interval of 5 s would skip
# every look that comes a few milliseconds early (ticks every 5 or 10 s, a change waiting 0-10 s);
# just under it, every look evaluates: a change waits 0-5 s for its tick (plus the evaluation).
# Each tick is a few small queries (`table_stats`), no Spark.
SENSOR_DAEMON_LOOP_SECONDS = 5
ARRIVAL_INTERVAL_SECONDS = SENSOR_DAEMON_LOOP_SECONDS - 1
RECONCILIATION_INTERVAL_SECONDS = 300
NO_SOURCE = "the source is not initialised (spotify-lakehouse source init)"
# What automation may request: the layers, and the source's observation, which every run that
# copies from the source records first (`PlannedRun.asset_keys`).
AUTOMATED = AssetSelection.groups(SOURCE, BRONZE, SILVER, GOLD)


def run_request(run: PlannedRun, catalog: Catalog, key: str) -> RunRequest:
    return RunRequest(
        run_key=key,
        asset_selection=run.asset_keys(catalog),
        run_config=run.run_config(catalog),
        tags={**run.tags, **WRITER_TAG},
    )


def _digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def build_arrival_sensor(catalog: Catalog, lookback_days: int) -> SensorDefinition:
    @sensor(
        name="cdc_arrival_sensor",
        minimum_interval_seconds=ARRIVAL_INTERVAL_SECONDS,
        target=AUTOMATED,
        default_status=DefaultSensorStatus.STOPPED,
        description="Requests an incremental run of the tables whose change feed or watermark "
        "column moved since the last evaluation.",
    )
    def cdc_arrival_sensor(
        context: SensorEvaluationContext,
        copy_runner: ResourceParam[CopyRunner],
        gold_engine: GoldEngine,
    ):
        # A run killed holding the lake would keep the runs requested here queued for ever.
        fail_abandoned_run(context.instance, WriterLease(copy_runner.lake).abandoned_run())
        if not copy_runner.source.exists():
            return SkipReason(NO_SOURCE)
        with copy_runner.source.session() as session:
            positions = {t.name: _digest(session.table_stats(t)) for t in catalog}
        seen = json.loads(context.cursor) if context.cursor else {}
        moved = [t for t in catalog if seen.get(t.name) != positions[t.name]]
        if not moved:
            return SkipReason("no change since the last evaluation")
        runs = plan_incremental(
            copy_runner, moved, context.instance, lookback_days, gold_engine.tables_on_lake
        )
        context.update_cursor(json.dumps(positions, sort_keys=True))
        context.log.info(f"changes in {', '.join(t.name for t in moved)}")
        key = _digest(positions)
        return [run_request(r, catalog, f"arrival-{key}-{n}") for n, r in enumerate(runs)]

    return cdc_arrival_sensor


def build_reconciliation_sensor(catalog: Catalog, lookback_days: int) -> SensorDefinition:
    @sensor(
        name="reconciliation_sensor",
        minimum_interval_seconds=RECONCILIATION_INTERVAL_SECONDS,
        target=AUTOMATED,
        default_status=DefaultSensorStatus.STOPPED,
        description=f"Compares per-day counts and checksums of the source and bronze over the "
        f"last {lookback_days} loaded days, and of bronze, silver, gold fact and aggregates over "
        "every loaded day, and rebuilds the days that differ from the first layer that differs.",
    )
    def reconciliation_sensor(
        context: SensorEvaluationContext,
        copy_runner: ResourceParam[CopyRunner],
        gold_engine: GoldEngine,
    ):
        if not copy_runner.source.exists():
            return SkipReason(NO_SOURCE)
        runs = plan_repairs(copy_runner, list(catalog), lookback_days, gold_engine.tables_on_lake)
        if not runs:
            return SkipReason(
                f"bronze matches the source over the last {lookback_days} loaded days, and every "
                "layer its upstream on every loaded day"
            )
        for run in runs:
            context.log.info(f"stale: {run.describe()}")
        # The same stale days holding the same rows are requested once (run_key); new late
        # rows in them, or a rebuild that did not fix them, change the key and request again.
        return [
            run_request(r, catalog, f"repair-{_digest([r.describe(), r.evidence])}") for r in runs
        ]

    return reconciliation_sensor


def build_daily_schedule(catalog: Catalog, lookback_days: int) -> ScheduleDefinition:
    @schedule(
        name="daily_catch_up",
        cron_schedule="0 2 * * *",
        execution_timezone="UTC",
        target=AUTOMATED,
        default_status=DefaultScheduleStatus.STOPPED,
        description="Fallback when the sensors are off: an incremental run of every table.",
    )
    def daily_catch_up(
        context: ScheduleEvaluationContext,
        copy_runner: ResourceParam[CopyRunner],
        gold_engine: GoldEngine,
    ):
        if not copy_runner.source.exists():
            return SkipReason(NO_SOURCE)
        stamp = context.scheduled_execution_time.isoformat()
        runs = plan_incremental(
            copy_runner, list(catalog), context.instance, lookback_days, gold_engine.tables_on_lake
        )
        return [run_request(r, catalog, f"daily-{stamp}-{n}") for n, r in enumerate(runs)]

    return daily_catch_up
