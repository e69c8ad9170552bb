"""The Dagster resources over the plain objects of `resources/`: the lake, the source, the copy
runner and the writer lease. Each is the plain class itself, configurable: Dagster shows its
fields in the UI and resolves an `EnvVar` (the source's connection string) when a run starts.

The plain classes carry every rule; they load without Dagster, so that deciding that `run` has
nothing to do (spotify_assets/orchestration/gate.py) never imports it (~0.6 CPU s).
"""

from __future__ import annotations

from contextlib import ExitStack

from dagster import ConfigurableResource, DagsterInstance, DagsterRunStatus, InitResourceContext
from pydantic import Field, PrivateAttr

from resources.copy_runner import LocalCopyRunner
from resources.lake import LakeStorage
from resources.lease import DEFAULT_WAIT_SECONDS, Hold, LeaseLostError, lake_writer, run_entry
from resources.source_db import SourceDatabase


class LakeResource(ConfigurableResource, LakeStorage):
    """The lake (`LakeStorage`) as a Dagster resource."""


class SourceResource(ConfigurableResource, SourceDatabase):
    """The source (`SourceDatabase`) as a Dagster resource: its connection string may be an
    `EnvVar`, so its password never reaches the UI, run config or storage."""


class LocalCopyResource(ConfigurableResource, LocalCopyRunner):
    """The embedded default's copy runner (`LocalCopyRunner`) as a Dagster resource."""

    source: SourceResource
    lake: LakeResource


class LakeWriter(ConfigurableResource):
    """The writer lease, held by a Dagster run from its start (before any step writes) to its
    end. Every asset that writes the lake requires it, so a run that writes holds it; a sensor
    evaluation (no run) takes nothing."""

    lake: LakeResource
    wait_seconds: float = Field(
        default=DEFAULT_WAIT_SECONDS,
        description="How long a run waits for another writer of the lake before it fails.",
    )
    _held: ExitStack | None = PrivateAttr(default=None)
    _hold: Hold | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: InitResourceContext) -> None:
        run = context.run
        if run is None or context.log is None:
            return
        log = context.log.info
        self._held = ExitStack()
        self._hold = self._held.enter_context(
            lake_writer(self.lake, run_entry(run.tags), self.wait_seconds, log, run.run_id)
        )
        fail_abandoned_run(context.instance, self._hold.abandoned_run)

    def teardown_after_execution(self, context: InitResourceContext) -> None:
        if self._held is not None:
            self._held.close()

    def check(self) -> None:
        """Before an asset writes: the run still holds the lease."""
        if self._hold is None:
            raise LeaseLostError("the lake writer lease is only held within a Dagster run")
        self._hold.check()


def fail_abandoned_run(instance: DagsterInstance, run_id: str | None) -> None:
    """Mark failed the run of a lease holder that ended without releasing it (killed): Dagster
    would show it STARTED for ever, and its run queue, which counts it and lets one writer run
    at a time, would keep every sensor, schedule and UI run queued behind it."""
    run = instance.get_run_by_id(run_id) if run_id else None
    if run is not None and run.status in (DagsterRunStatus.STARTING, DagsterRunStatus.STARTED):
        instance.report_run_failed(
            run, "its process ended while it held the lake writer lease (killed?)"
        )
