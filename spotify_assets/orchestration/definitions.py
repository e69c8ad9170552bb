"""The Dagster code location: `dg dev` (pyproject.toml, `[tool.dg]`) or `workspace.yaml`."""

from __future__ import annotations

import warnings

from dagster import (
    AssetSelection,
    BetaWarning,
    Definitions,
    define_asset_job,
    in_process_executor,
)

from spotify_assets.orchestration.assets.bronze import build_bronze_assets
from spotify_assets.orchestration.assets.gold import build_gold_assets
from spotify_assets.orchestration.assets.silver import build_silver_assets
from spotify_assets.orchestration.assets.source import build_source_observation
from spotify_assets.orchestration.run_resources import build_resources
from spotify_assets.orchestration.sensors.alerts import run_failure_alert
from spotify_assets.orchestration.sensors.automation import (
    build_arrival_sensor,
    build_daily_schedule,
    build_reconciliation_sensor,
)
from spotify_assets.orchestration.settings import Settings

OBSERVE_SOURCE_JOB = "observe_source_job"


def build_definitions(settings: Settings) -> Definitions:
    catalog = settings.catalog
    resources = build_resources(settings)
    observe_source = build_source_observation(catalog, settings.source_dialect)
    return Definitions(
        assets=[
            observe_source,
            *build_bronze_assets(catalog),
            *build_silver_assets(catalog),
            *build_gold_assets(catalog),
        ],
        jobs=[
            define_asset_job(
                OBSERVE_SOURCE_JOB,
                selection=AssetSelection.assets(observe_source),
                description="Record row counts and change-feed positions of every source table.",
            )
        ],
        sensors=[
            build_arrival_sensor(catalog, settings.reconcile_lookback_days),
            build_reconciliation_sensor(catalog, settings.reconcile_lookback_days),
            run_failure_alert,
        ],
        schedules=[build_daily_schedule(catalog, settings.reconcile_lookback_days)],
        resources=resources,
        # One process per run: each step in its own subprocess would import Dagster and the
        # project and start Spark again (seconds per step, most of a small run's time).
        executor=in_process_executor,
    )


# Beta APIs we rely on knowingly (backfill policies, observable sources): not news to whoever runs
# `dg dev`, whose code server and run workers load this module.
warnings.filterwarnings("ignore", category=BetaWarning)
defs = build_definitions(Settings.from_env())
