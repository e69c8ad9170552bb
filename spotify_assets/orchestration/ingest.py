"""Pipeline runs: what to run (shared by the CLI, the sensors and the schedule) and running it
in process from the command line (Dagster runs recorded in `$DAGSTER_HOME`).

A `PlannedRun` is one Dagster run over bronze, silver and gold of some tables:
- incremental: every table from its watermark up to the source's clock, rebuilding the silver and
  gold partitions it touched, and applying new dimension versions to gold; the CLI's also
  re-extracts the loaded days where the source holds late rows (`with_late_days`);
- refresh: a date range re-extracted and everything downstream of it rebuilt (a backdated
  refresh), or rebuilt from the first layer reconciliation found stale (a repair).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any, Protocol

from dagster import (
    AssetCheckEvaluation,
    AssetCheckSeverity,
    AssetKey,
    AssetsDefinition,
    AssetSelection,
    DagsterEventType,
    DagsterExecutionInterruptedError,
    DagsterInstance,
    Definitions,
    ExecuteInProcessResult,
    Field,
    InitLoggerContext,
    define_asset_job,
    logger,
)

from resources.copy_runner import (
    NOT_LOADED_YET_OLDEST,
    NOT_LOADED_YET_ROWS,
    CopyRunner,
    LocalCopyRunner,
)
from resources.dagster_launcher import fail_runs_of_gone_workers, worker_tag
from resources.engines import GoldEngine
from resources.lake import LakeFileError
from resources.reconciler import late_days, reconcile_all
from spotify_assets.catalog.gold_spec import PointInTimeFact, Scd2Dimension
from spotify_assets.catalog.tables import Catalog, Table
from spotify_assets.consistency.reconcile import Layer, lookback_window, repair_ranges
from spotify_assets.orchestration.assets.bronze import (
    RUN_ROWS_READ,
    bronze_key,
    build_bronze_asset,
)
from spotify_assets.orchestration.assets.gold import build_gold_assets_of, gold_key
from spotify_assets.orchestration.assets.silver import QUARANTINED, build_silver_asset, silver_key
from spotify_assets.orchestration.assets.source import build_source_observation, source_key
from spotify_assets.orchestration.gate import (
    Selection,
    caught_up,
    checked,
    require_partitions,
)
from spotify_assets.orchestration.partitions import ROW_COUNT, partition_range_tags, run_total
from spotify_assets.orchestration.resources import copy_runner
from spotify_assets.orchestration.run_resources import build_resources
from spotify_assets.orchestration.settings import DEFAULT_RECONCILE_LOOKBACK_DAYS, Settings

# Runs that write the lake carry this tag; the run queue admits one at a time (see cli/commands.py).
WRITER_TAG = {"spotify/writer": "lakehouse"}
# What a run is, in tags a person reads in the UI's run list and timeline (CLI and sensor runs).
RUN_KIND_TAG = "spotify/run"
TABLES_TAG = "spotify/tables"
DAYS_TAG = "spotify/days"
LATE_TAG = "spotify/late_days"
FROM_LAYER_TAG = "spotify/from_layer"
# The job a CLI run executes, by kind: its name in the UI's run list.
JOBS = {
    "incremental": "incremental_load",
    "refresh": "backdated_refresh",
    "repair": "repair_stale_days",
}


class RunFailed(RuntimeError):
    """Some runs (or the planning of some tables) failed: one line per failure, naming the asset
    and partitions, the root error and where the full log is. `loads`: what the others did."""

    def __init__(self, failures: Sequence[str], loads: Sequence[TableLoad] = ()) -> None:
        super().__init__("\n".join(failures))
        self.failures, self.loads = list(failures), list(loads)


class _ErrorInfo(Protocol):
    """What Dagster records of an exception (its serializable error info)."""

    cls_name: str | None
    message: str
    cause: _ErrorInfo | None


@logger(
    config_schema={"log_level": Field(str, default_value="INFO")},
    description="Progress on the console; failures are summed up by the caller in one line each.",
)
def progress_logger(context: InitLoggerContext) -> logging.Logger:
    """Dagster's console lines below ERROR: a failure's traceback stays in the run's log."""
    log = logging.Logger("dagster", level=context.logger_config["log_level"])
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(lambda record: record.levelno < logging.ERROR)
    handler.setFormatter(logging.Formatter("%(asctime)s - %(name)s - %(levelname)s - %(message)s"))
    log.addHandler(handler)
    return log


@dataclass(frozen=True)
class PlannedRun:
    """One run: bronze, silver and gold of `tables` (or the layers from `start` down), over the
    days `first`..`last` for partitioned tables (None for a run of unpartitioned tables)."""

    tables: tuple[str, ...]
    days: tuple[date, date] | None
    from_watermark: bool  # incremental; False: re-extract the whole days (refresh)
    evidence: str = ""  # why a repair: what each layer holds of the days (part of its run key)
    start: Layer = Layer.BRONZE  # the first layer rebuilt; every layer below it follows
    # Incremental: per table, the first loaded day re-extracted whole with it (late rows).
    late: tuple[tuple[str, date], ...] = ()

    @property
    def kind(self) -> str:
        """incremental, refresh (a backdated refresh) or repair (reconciliation found it stale)."""
        if self.evidence:
            return "repair"
        return "incremental" if self.from_watermark else "refresh"

    @property
    def tags(self) -> dict[str, str]:
        tags = {RUN_KIND_TAG: self.kind, TABLES_TAG: ", ".join(self.tables)}
        if self.days:
            tags |= {
                DAYS_TAG: f"{self.days[0]}..{self.days[1]}",
                **partition_range_tags(*self.days),
            }
        if self.start is not Layer.BRONZE:
            tags[FROM_LAYER_TAG] = self.start.name.lower()
        if self.late:
            tags[LATE_TAG] = ", ".join(f"{name} from {day}" for name, day in self.late)
        return tags

    def assets(self, catalog: Catalog) -> list[AssetsDefinition]:
        """The definitions the run materializes (what a sensor's request needs is `asset_keys`;
        the source's observation, built for the source's dialect, is added by `_materialize`)."""
        tables = [catalog[name] for name in self.tables]
        bronze = (
            [build_bronze_asset(catalog, t) for t in tables] if self.start <= Layer.BRONZE else []
        )
        silver = (
            [build_silver_asset(catalog, t) for t in tables] if self.start <= Layer.SILVER else []
        )
        gold = [
            asset
            for t in tables
            for n, asset in enumerate(build_gold_assets_of(catalog, t))
            if self.start <= _gold_layer(n)
        ]
        return bronze + silver + gold

    def asset_keys(self, catalog: Catalog) -> list[AssetKey]:
        """The keys of `assets`, from the catalog alone, after the source tables a run that
        copies observes first (whoever starts it: the CLI, a sensor or the schedule)."""
        tables = [catalog[name] for name in self.tables]
        observed = [source_key(t) for t in tables] if self.start is Layer.BRONZE else []
        bronze = [bronze_key(t) for t in tables] if self.start <= Layer.BRONZE else []
        silver = [silver_key(t) for t in tables] if self.start <= Layer.SILVER else []
        gold = [
            gold_key(name)
            for t in tables
            for n, name in enumerate(catalog.gold_tables(t))
            if self.start <= _gold_layer(n)
        ]
        return observed + bronze + silver + gold

    def run_config(self, catalog: Catalog) -> dict:
        # An asset's op is named after its key (Dagster's default).
        extracted = [catalog[name] for name in self.tables] if self.start is Layer.BRONZE else []
        late = {name: {"reextract_from": day.isoformat()} for name, day in self.late}
        ops = {
            bronze_key(t).to_python_identifier(): {
                "config": {"from_watermark": self.from_watermark, **late.get(t.name, {})}
            }
            for t in extracted
        }
        if self.from_watermark and self.days and self.start <= Layer.SILVER:
            # Silver rebuilds the days bronze changed, not every day of the run.
            ops |= {
                silver_key(catalog[name]).to_python_identifier(): {"config": {"behind_only": True}}
                for name in self.tables
                if catalog[name].change_time_column
            }
        if self.start is Layer.GOLD:  # rebuilt from silver: a dimension in full
            tables = [catalog[name] for name in self.tables]
            dimensions = [t for t in tables if isinstance(t.gold, Scd2Dimension)]
            ops |= {
                gold_key(t.lake_name).to_python_identifier(): {"config": {"full_refresh": True}}
                for t in dimensions
            }
        return {
            "ops": ops,
            # Progress and results at INFO; Dagster's per-event DEBUG lines stay in the run's log.
            "loggers": {"console": {"config": {"log_level": "INFO"}}},
        }

    def describe(self) -> str:
        return describe_run(self.tags)


def describe_run(tags: Mapping[str, str]) -> str:
    """One line from a run's tags: `repair of FactStream 2026-11-21..2026-11-23 from silver`,
    `incremental of … 2026-11-21..2026-11-27, late rows of FactStream from 2026-11-21`."""
    days = f" {tags[DAYS_TAG]}" if DAYS_TAG in tags else ""
    start = f" from {tags[FROM_LAYER_TAG]}" if FROM_LAYER_TAG in tags else ""
    late = f", late rows of {tags[LATE_TAG]}" if LATE_TAG in tags else ""
    return f"{tags[RUN_KIND_TAG]} of {tags[TABLES_TAG]}{days}{start}{late}"


def _gold_layer(n: int) -> Layer:
    """The layer of a table's `n`th gold table: its own comes first, the fact's aggregates after."""
    return Layer.GOLD if n == 0 else Layer.AGGREGATES


def plan_incremental(
    runner: CopyRunner,
    tables: Sequence[Table],
    instance: DagsterInstance | None = None,
    lookback_days: int = DEFAULT_RECONCILE_LOOKBACK_DAYS,
    gold_on_lake: bool = False,
) -> list[PlannedRun]:
    """One run: the partitioned tables from the oldest resume day to the last day the source's
    clock has reached (today at the latest), and the snapshot tables unless `caught_up` (only
    where gold is on the lake to compare, `gold_on_lake`); none if every table is `caught_up`
    there and none was left behind (reconciliation's repair alone had something to do, as after
    a refresh). Each run costs Dagster's bookkeeping per run and per partition, so none is spent
    on a second run, on days with nothing yet, or on tables with nothing new.

    A table resumes at its watermark's day, or earlier where a run stopped part-way (bronze
    committed, silver or gold not): the first such day within the lookback before its watermark
    (the days `with_late_days` re-extracts), read from the instance's materializations, so
    nothing stays behind after a crash."""
    partitioned = [t for t in tables if t.change_time_column]
    compared = gold_on_lake and isinstance(runner, LocalCopyRunner)  # it reads the source here
    snapshots = tuple(
        t.name
        for t in tables
        if not t.change_time_column and not (compared and caught_up(runner, t))
    )
    behind = []
    if instance is not None:
        catalog = runner.source.catalog
        for table in partitioned:
            since = _lookback_start(runner, table, lookback_days)
            if since is not None and (day := behind_since(instance, catalog, table, since)):
                behind.append(day)
    # Every partitioned table or none: the fact's run rebuilds the days its dimensions changed.
    pending = behind or any(not (compared and caught_up(runner, t)) for t in partitioned)
    days = [d for d in (_resume_day(runner, t) for t in partitioned) if d is not None]
    days += behind
    if pending and days:
        # A watermark can reach tomorrow (a source clock ahead of the wall clock): the run still
        # ends with today's partition, the last one.
        first = min(min(days), _today())
        reached = (runner.high() - timedelta.resolution).date()
        last = min(max(first, reached), _today())
        return [PlannedRun(tuple(t.name for t in partitioned) + snapshots, (first, last), True)]
    return [PlannedRun(snapshots, None, True)] if snapshots else []


def with_late_days(
    runner: CopyRunner, runs: Sequence[PlannedRun], lookback_days: int
) -> list[PlannedRun]:
    """The incremental `runs` with the late rows of their tables in them: where the source holds
    other rows than bronze in a loaded day of the lookback (the source ↔ bronze part of
    reconciliation, which would otherwise repair them in a second run), the table's bronze
    re-extracts from that day and the run's days start there. One run builds each partition
    once; the source has the late rows before the run starts."""
    catalog = runner.source.catalog

    def first_late_day(table: Table) -> date | None:
        try:
            days = late_days(runner, table, lookback_days)
        except LakeFileError:  # damaged: the repair after the run names it
            return None
        return days[0] if days else None

    planned = []
    for run in runs:
        late = {
            name: day for name in run.tables if (day := first_late_day(catalog[name])) is not None
        }
        if run.days is None or not late:
            planned.append(run)
            continue
        first = min(run.days[0], *late.values())
        planned.append(replace(run, days=(first, run.days[1]), late=tuple(sorted(late.items()))))
    return planned


def behind_since(
    instance: DagsterInstance, catalog: Catalog, table: Table, since: date
) -> date | None:
    """The first partition on or after `since` that some asset of the table's chain has not
    rebuilt since its upstream last changed (bronze -> silver -> gold fact -> aggregates)."""
    chain = [bronze_key(table), silver_key(table)]
    pairs = [(chain[0], chain[1])]
    # Of gold, only the fact and its aggregates are partitioned.
    if isinstance(table.gold, PointInTimeFact):
        fact, *aggregates = [gold_key(name) for name in catalog.gold_tables(table)]
        pairs += [(chain[1], fact), *((fact, aggregate) for aggregate in aggregates)]
    first: date | None = None
    event = DagsterEventType.ASSET_MATERIALIZATION
    for upstream, downstream in pairs:
        built = instance.get_latest_storage_id_by_partition(downstream, event)
        for partition, storage_id in instance.get_latest_storage_id_by_partition(
            upstream, event
        ).items():
            day = date.fromisoformat(partition)
            if day >= since and storage_id > built.get(partition, -1):
                first = day if first is None else min(first, day)
    return first


def plan_refresh(tables: Sequence[Table], first: date, last: date) -> list[PlannedRun]:
    if last < first:
        raise ValueError(f"--to {last}: expected a day on or after --from {first}")
    if last > _today():
        raise ValueError(f"--to {last}: expected today ({_today()}, UTC) or earlier")
    selected = [t for t in tables if t.change_time_column]
    if not selected:
        return []
    start = min(t.first_partition for t in selected)
    if first < start:
        raise ValueError(
            f"--from {first}: expected the partition start {start} (SPOTIFY_PARTITION_START) or "
            "later, or set the partition start earlier"
        )
    return [PlannedRun(tuple(t.name for t in selected), (first, last), False)]


def plan_repairs(
    runner: CopyRunner, tables: Sequence[Table], lookback_days: int, gold_on_lake: bool
) -> list[PlannedRun]:
    """Per table, a rebuild of every range of days reconciliation finds stale, from the first
    layer that differs (`gold_on_lake`: gold's Delta tables are on the lake to compare)."""
    runs = []
    for found in reconcile_all(runner, tables, lookback_days, gold_on_lake):
        if found.rebuild_gold:
            runs.append(PlannedRun((found.table,), None, False, found.describe(), Layer.GOLD))
        runs += [
            PlannedRun(
                (found.table,),
                (first, last),
                False,
                json.dumps(found.evidence(first, last), sort_keys=True),
                start=layer,
            )
            for layer, first, last in repair_ranges(found.stale)
        ]
    return runs


@dataclass(frozen=True)
class TableLoad:
    """What one run did to one table: rows copied into bronze, rows now in silver and gold
    (in the run's partitions; all of it for unpartitioned tables). None: a layer the run (a
    repair from a later layer) did not rebuild."""

    table: str
    rows: int | None
    window: str | None
    watermark: str | None
    silver_rows: int | None
    quarantined: int | None
    gold_rows: dict[str, int]
    # Incremental loads: source rows past the source's clock bound or today, left for later.
    not_loaded_yet_rows: int = 0
    not_loaded_yet_oldest: str = "none"
    # Critical rules that failed in the run, each with what it found (their rows quarantined),
    # and gold's checks of the same severity (rows kept that a reference lacks).
    failed_rules: tuple[str, ...] = ()


def incremental(
    settings: Settings,
    instance: DagsterInstance,
    selection: Selection | None = None,
    late: bool = False,
) -> list[TableLoad]:
    """Copy what the source has gained since each table's watermark (of the `selection`; every
    table checked now if None), through to gold; `late`: and the loaded days where it holds
    late rows (`with_late_days`)."""
    runner, resources = runner_and_resources(settings)
    selection = selection or checked(runner)
    gold: GoldEngine = resources["gold_engine"]  # type: ignore[assignment]
    lookback = settings.reconcile_lookback_days
    runs = plan_incremental(runner, selection.tables, instance, lookback, gold.tables_on_lake)
    if late:
        runs = with_late_days(runner, runs, lookback)
    return execute(runs, runner, resources, instance, selection.failures)


def refresh(
    settings: Settings,
    instance: DagsterInstance,
    first: date,
    last: date,
    tables: Sequence[str] = (),
) -> list[TableLoad]:
    """Re-extract the days `first`..`last` of the selected tables (a backdated refresh), then
    repair what reconciliation finds stale after it: a dimension's versions re-extracted can
    change the fact's later days (its point-in-time lookups), left to the next `run` before."""
    runner, resources = runner_and_resources(settings)
    selection = checked(runner, tables)
    runs = plan_refresh(selection.tables, first, last)
    loads = execute(runs, runner, resources, instance, selection.failures)
    repaired = _with_fact(runner.source.catalog, selection.tables) if tables else ()
    return loads + repair(settings, instance, checked(runner, repaired))


def _with_fact(catalog: Catalog, tables: Sequence[Table]) -> list[str]:
    """The names of `tables`, and the fact's if the point-in-time lookups of its gold read one
    of them."""
    names = [t.name for t in tables]
    spec = catalog.fact.gold
    assert isinstance(spec, PointInTimeFact)
    if catalog.fact.name in names or {x.dimension for x in spec.lookups}.isdisjoint(names):
        return names
    return [*names, catalog.fact.name]


def repair(
    settings: Settings, instance: DagsterInstance, selection: Selection | None = None
) -> list[TableLoad]:
    """Rebuild the loaded days some layer holds differently from the one above it (late or
    missing rows, an interrupted run), from that layer down; of the `selection` (every table
    checked now if None)."""
    runner, resources = runner_and_resources(settings)
    selection = selection or checked(runner)
    selected, failures = selection.tables, list(selection.failures)
    gold: GoldEngine = resources["gold_engine"]  # type: ignore[assignment]

    def plan(tables: Sequence[Table]) -> list[PlannedRun]:
        return plan_repairs(runner, tables, settings.reconcile_lookback_days, gold.tables_on_lake)

    # Planned together: a dimension rebuilt brings the fact's days after it.
    try:
        runs = plan(selected)
    except LakeFileError:  # some table's files are damaged: it waits, the others go on
        runs = []
        for table in selected:
            try:
                runs += plan([table])
            except LakeFileError as error:
                failures.append(str(error))
    return execute(runs, runner, resources, instance, failures)


def execute(
    runs: Sequence[PlannedRun],
    runner: CopyRunner,
    resources: dict[str, object],
    instance: DagsterInstance,
    failures: Sequence[str] = (),
) -> list[TableLoad]:
    """Every run, even after one failed; `RunFailed` at the end if any did (or `failures`,
    found while planning, are given). `runner` is the resolved one of `runner_and_resources`:
    Dagster's `resources` hold the source's connection string as an `EnvVar`."""
    catalog = runner.source.catalog
    require_partitions(runner, dict.fromkeys(catalog[name] for run in runs for name in run.tables))
    fail_runs_of_gone_workers(instance)
    loads: list[TableLoad] = []
    failed = list(failures)
    for run in runs:
        assets = run.assets(catalog)
        result = _materialize(run, assets, runner, resources, instance)
        if result.success:
            loads += _loads(run, catalog, result)
        elif _interrupted(result):  # Ctrl-C or SIGTERM: no further run, nor the caller's repair
            raise KeyboardInterrupt(f"run {result.run_id}")
        else:
            failed += _failure_lines(run, assets, result, instance)
    if failed:
        raise RunFailed(failed, loads)
    return loads


def _materialize(
    run: PlannedRun,
    assets: list[AssetsDefinition],
    runner: CopyRunner,
    resources: dict[str, object],
    instance: DagsterInstance,
) -> ExecuteInProcessResult:
    """The run's job; one that copies from the source observes the tables it reads first, so
    the UI's lineage starts with the source's row counts and change-feed positions (and bronze
    is built from the data version observed)."""
    catalog = runner.source.catalog
    if run.start is Layer.BRONZE:
        assets = [build_source_observation(catalog, runner.source.dialect), *assets]
    selection = AssetSelection.assets(*run.asset_keys(catalog))
    defs = Definitions(
        assets=assets,
        resources=resources,
        jobs=[define_asset_job(JOBS[run.kind], selection=selection)],
        loggers={"console": progress_logger},
    )
    return defs.resolve_job_def(JOBS[run.kind]).execute_in_process(
        run_config=run.run_config(catalog),
        instance=instance,
        tags={**run.tags, **WRITER_TAG, **worker_tag(os.getpid())},
        raise_on_error=False,
    )


def _interrupted(result: ExecuteInProcessResult) -> bool:
    """Whether the run failed because it was interrupted: Dagster turns the signal into this
    error at a step (failing it and the run) rather than letting it end the process."""
    error = _run_error(result)
    return error is not None and error.cls_name == DagsterExecutionInterruptedError.__name__


def _run_error(result: ExecuteInProcessResult) -> _ErrorInfo | None:
    """The error the run failed with as a whole (an interrupt, a resource that could not
    start), if it recorded one."""
    failures = result.filter_events(lambda e: e.event_type == DagsterEventType.RUN_FAILURE)
    return next((e.job_failure_data.error for e in failures if e.job_failure_data.error), None)


def _failure_lines(
    run: PlannedRun,
    assets: list[AssetsDefinition],
    result: ExecuteInProcessResult,
    instance: DagsterInstance,
) -> list[str]:
    """One line per failed asset: its partitions, the root error, and where the full log is."""
    keys = {a.op.name: (key, a.partitions_def) for a in assets for key in a.keys}
    log = f"run {result.run_id}"
    if not instance.is_ephemeral:
        log += f" in the Dagster UI (DAGSTER_HOME={instance.root_directory})"
    lines = []
    for event in result.get_step_failure_events():
        key, partitioned = keys.get(event.step_key, (AssetKey(event.step_key), None))
        days = f" {run.days[0]}..{run.days[1]}" if run.days and partitioned else ""
        error = _failed_checks(result, key) or _root(event.step_failure_data.error)
        lines.append(f"{key.to_user_string()}{days} failed: {error}; full log: {log}")
    return lines or [f"{run.describe()} failed: {_root(_run_error(result))}; full log: {log}"]


def _failed_checks(result: ExecuteInProcessResult, key: AssetKey) -> str:
    """The blocking checks of asset `key` that failed in the run, each with what it found
    (Dagster's own error names only their number)."""
    return "; ".join(
        f"blocking {_failed_check(check)}"
        for check in result.get_asset_check_evaluations()
        if check.asset_key == key and check.blocking and not check.passed
    )


def _failed_check(check: AssetCheckEvaluation) -> str:
    """A failed check in a line, with what it found."""
    said = f": {check.description}" if check.description else ""
    return f"check {check.check_name} failed{said}"


def _root(error: _ErrorInfo | None) -> str:
    """The first error below Dagster's wrappers, on one line, without its module path."""
    while error is not None and (error.cls_name or "").startswith("Dagster") and error.cause:
        error = error.cause
    if error is None:
        return "unknown error"
    message = (error.message.strip().splitlines() or [""])[0]
    prefix, _, text = message.partition(": ")
    return f"{error.cls_name}: {text}" if prefix.endswith(str(error.cls_name)) else message


def _loads(run: PlannedRun, catalog: Catalog, result: ExecuteInProcessResult) -> list[TableLoad]:
    # A range run records one materialization per partition, each with the run's totals; the
    # last one also with the run's details. One pass: a first load holds thousands of events.
    last = {
        event.asset_key: event.step_materialization_data.materialization.metadata
        for event in result.get_asset_materialization_events()
    }

    def metadata(key: AssetKey) -> dict:
        """The asset's materialization metadata; empty if the run did not select it."""
        return dict(last.get(key, {}))

    def value(entries: dict, name: str) -> Any:
        return entries[name].value if entries else None

    failed: dict[AssetKey, tuple[str, ...]] = {}
    for check in result.get_asset_check_evaluations():  # a blocking one would fail the run
        if not check.passed and check.severity is AssetCheckSeverity.ERROR:
            line = f"{check.asset_key.to_user_string()}: {_failed_check(check)}"
            failed[check.asset_key] = (*failed.get(check.asset_key, ()), line)

    def total(entries: dict, name: str) -> Any:
        return run_total(entries, name) if entries else None

    loads = []
    for name in run.tables:
        table = catalog[name]
        copied = metadata(bronze_key(table))
        cleaned = metadata(silver_key(table))
        gold = {name: metadata(gold_key(name)) for name in catalog.gold_tables(table)}
        loads.append(
            TableLoad(
                table=table.name,
                rows=value(copied, RUN_ROWS_READ),
                window=value(copied, "window"),
                watermark=value(copied, "watermark_after"),
                silver_rows=total(cleaned, ROW_COUNT),
                quarantined=total(cleaned, QUARANTINED),
                gold_rows={k: run_total(m, ROW_COUNT) for k, m in gold.items() if m},
                failed_rules=tuple(
                    line
                    for key in (silver_key(table), *map(gold_key, catalog.gold_tables(table)))
                    for line in failed.get(key, ())
                ),
                **{
                    name: copied[name].value
                    for name in (NOT_LOADED_YET_ROWS, NOT_LOADED_YET_OLDEST)
                    if name in copied
                },
            )
        )
    return loads


def runner_and_resources(settings: Settings) -> tuple[CopyRunner, dict[str, object]]:
    """A runner that plans here, outside Dagster (its source resolved), and the resources the
    runs get (Dagster resolves their configuration when each run starts)."""
    return copy_runner(settings), build_resources(settings)


def _resume_day(runner: CopyRunner, table: Table) -> date | None:
    """The first partition an incremental run touches; on a first load, the oldest data's day
    (the empty partitions before it need no run of their own)."""
    watermark = runner.store(table).current().watermark
    if watermark:
        return watermark.date()
    return runner.first_change_day(table)


def _lookback_start(runner: CopyRunner, table: Table, lookback_days: int) -> date | None:
    """The first day reconciliation compares: `lookback_days` before the watermark (None before
    a first load). Counted from the watermark, not from today: the source's clock may be days
    behind the wall clock, and a day late rows were re-extracted into is then older than
    today's lookback."""
    window = lookback_window(
        runner.store(table).current().watermark, lookback_days, table.first_partition
    )
    return window.start.date() if window else None


def _today() -> date:
    return datetime.now(UTC).date()
