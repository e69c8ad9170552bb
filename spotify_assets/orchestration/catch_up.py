"""The sensors' work, in process: evaluate the CDC arrival and reconciliation sensors and execute
the runs they request, until both have nothing left to ask for.

This is what `dg dev` with the sensors turned on does over a few ticks; the demo and the
end-to-end test use it to let automation catch up without a daemon.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from dagster import (
    AssetSelection,
    DagsterInstance,
    Definitions,
    RunRequest,
    build_sensor_context,
    define_asset_job,
)

from resources.dagster_launcher import worker_tag
from spotify_assets.orchestration.ingest import JOBS, RUN_KIND_TAG, describe_run

SENSORS = ("cdc_arrival_sensor", "reconciliation_sensor")


@dataclass
class CatchUp:
    defs: Definitions
    instance: DagsterInstance
    cursors: dict[str, str | None] = field(default_factory=dict)

    def tick(self, sensor_name: str) -> list[str]:
        """One evaluation of a sensor; executes what it requests. Returns the runs' summaries."""
        sensor = self.defs.resolve_sensor_def(sensor_name)
        with build_sensor_context(
            instance=self.instance,
            cursor=self.cursors.get(sensor_name),
            resources=self.defs.resources,
            definitions=self.defs,
        ) as context:
            result = sensor.evaluate_tick(context)
        self.cursors[sensor_name] = result.cursor
        requests = result.run_requests or []
        for request in requests:
            self.execute(request)
        return [describe_run(r.tags) for r in requests]

    def until_quiet(self, max_rounds: int = 3) -> list[str]:
        """Tick every sensor until none requests a run (or `max_rounds` rounds)."""
        done: list[str] = []
        for _ in range(max_rounds):
            runs = [run for name in SENSORS for run in self.tick(name)]
            if not runs:
                break
            done += runs
        return done

    def execute(self, request: RunRequest) -> None:
        """Runs a request as the daemon would, under the job name of its kind (the UI's run list
        shows `incremental_load` or `repair_stale_days`, as for the CLI's runs)."""
        job = define_asset_job(
            JOBS[request.tags[RUN_KIND_TAG]],
            selection=AssetSelection.assets(*(request.asset_selection or [])),
        )
        defs = Definitions(assets=self.defs.assets, resources=self.defs.resources, jobs=[job])
        defs.resolve_job_def(job.name).execute_in_process(
            instance=self.instance,
            tags={**request.tags, **worker_tag(os.getpid())},
            run_config=request.run_config,
        )
