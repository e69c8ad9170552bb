"""What the commands of `spotify-lakehouse` do, and how their errors read: the pipeline's
libraries load here, once a command line has parsed."""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Concatenate, ParamSpec, TypeVar

from tqdm import tqdm

from resources.delta_tables import delta_table, exists
from resources.lake import REPAIR_COMMAND, LakeFileError, LakeStorage
from resources.lease import LakeBusyError, lake_writer
from resources.odbc import SourceConfigError, SourceUnavailableError, redact
from resources.source_db import SourceDatabase
from spotify_assets.bronze import adf_pipeline
from spotify_assets.bronze.dialects import Dialect
from spotify_assets.catalog.counts import counted
from spotify_assets.catalog.gold_spec import END_AT, Scd2Dimension
from spotify_assets.catalog.lake_paths import gold_path, quarantine_path, silver_path
from spotify_assets.catalog.tables import CATALOG, CatalogError
from spotify_assets.cli.parser import DEFAULT_SCALE, DEFAULT_SEED, DEMO_DAYS, DEMO_HOME
from spotify_assets.orchestration import gate
from spotify_assets.orchestration.resources import copy_runner, source_database
from spotify_assets.orchestration.settings import Settings
from spotify_assets.source.generator import generate
from spotify_assets.source.simulator import ChangeBatch, SimulationRates, simulate

if TYPE_CHECKING:
    from azure.core.exceptions import AzureError
    from dagster import DagsterInstance
    from sqlalchemy.exc import DBAPIError

    from spotify_assets.orchestration.ingest import RunFailed, TableLoad

# What the demo builds itself under its home: it refuses to run with these set elsewhere.
DEMO_OWNS = ("SPOTIFY_LAKE_URL", "DAGSTER_HOME", "SPOTIFY_PARTITION_START")
# A waiting writer gives up with EX_TEMPFAIL: a temporary failure, worth retrying later.
EXIT_LAKE_BUSY = 75
_DAYS_BAR = "{desc}: {percentage:3.0f}%|{bar}| {n:.2f}/{total} days [{elapsed}<{remaining}]"


def source_init(
    settings: Settings,
    scale: float,
    seed: int,
    end: date,
    force: bool = False,
    history_days: int | None = None,
) -> dict[str, object]:
    """Create the source database with a generated history ending at `end` (exclusive), and
    record its first day as the partition start (SPOTIFY_PARTITION_START still wins)."""
    today = datetime.now(UTC).date()
    if end > today:
        raise SourceConfigError(
            f"--end-date {end}: expected today ({today}, UTC) or earlier: the source's clock "
            "would run ahead of the current time"
        )
    source = source_database(settings)
    if source.holds_catalog_table():
        if not force:
            raise SourceConfigError(
                "the source already holds tables of the catalog, not made by `source init`: "
                "to load your own rows run `spotify-lakehouse source attach`; --force drops them"
                if not source.generated()
                else "the source already holds Spotify tables; pass --force to drop and "
                "recreate them"
            )
        _drop(source)
    if source.dialect is Dialect.SQLITE:
        source.sqlite_path().parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    data = generate(scale, seed, end, history_days)
    total = sum(t.num_rows for t in data.dims.values()) + data.shape.streams
    meta = {"seed": seed, "scale": scale, "history_start": data.start, "history_end": data.end}
    with (
        source.session() as session,
        tqdm(total=total, unit="rows", unit_scale=True, desc="loading source", disable=None) as bar,
    ):
        loaded = session.load_initial(data, meta, on_rows=bar.update)
        # Readers and the simulator's writes then do not block each other. Only now: in WAL
        # mode the load went through the log and was copied again into the database (3 GB and
        # 10 CPU s at scale 10), where the rollback journal has nothing to keep of a new file.
        if source.dialect is Dialect.SQLITE:
            session.execute("PRAGMA journal_mode=WAL")
    settings.record_partition_start(data.start)
    return {
        "rows": loaded,
        "seconds": round(time.perf_counter() - started, 2),
        "history": [data.start.isoformat(), data.end.isoformat()],
        "partition_start": settings.partition_start.isoformat(),
    }


def _drop(source: SourceDatabase) -> None:
    """Drop what `source init` made, and only that: a user's other tables stay."""
    with source.session() as session:
        session.drop_all()
        if source.dialect is not Dialect.SQLITE:
            return
        # The load goes through the rollback journal (see source_init), and into a new file
        # when nothing else is in this one: the dropped tables' pages go with it.
        session.execute("PRAGMA journal_mode=DELETE")
        if session.scalar("SELECT count(*) FROM sqlite_master"):
            return
    path = source.sqlite_path()
    for suffix in ("", "-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)


def source_simulate(
    settings: Settings, days: int, seed: int | None, rates: SimulationRates
) -> dict[str, object]:
    """Advance the source `days` simulated days of inserts, updates, deletes and late data."""
    if days < 1:
        raise SourceConfigError(f"--days must be at least 1 (got {days})")
    source = source_database(settings)
    source.require_initialised()
    started = time.perf_counter()
    with source.session() as session:
        state = session.read_state()
        run_seed = int(session.meta()["seed"]) if seed is None else seed
        start_clock = state.clock
        now = datetime.now(UTC).replace(tzinfo=None)
        fit = max(0, (now - start_clock) // timedelta(days=1))
        if days > fit:
            raise SourceConfigError(
                f"simulating {counted(days, 'day')} would move the source's clock from "
                f"{start_clock} past the current UTC time ({now:%Y-%m-%d %H:%M}): room for "
                f"{counted(fit, 'whole day')}"
            )
        with tqdm(
            total=days, unit="day", desc="simulating", bar_format=_DAYS_BAR, disable=None
        ) as bar:

            def advance(batch: ChangeBatch) -> None:
                bar.update((batch.at - start_clock) / timedelta(days=1) - bar.n)

            changed = session.apply(simulate(state, days, run_seed, rates), on_batch=advance)
    seconds = time.perf_counter() - started
    return {
        "days": days,
        "from": start_clock.isoformat(sep=" "),
        "to": state.clock.isoformat(sep=" "),
        "rows_changed": changed,
        "seconds": round(seconds, 2),
        "rows_per_second": round(changed / seconds) if seconds else None,
    }


def source_attach(settings: Settings) -> dict[str, object]:
    """Prepare a user's own source (their tables, their rows) for the pipeline."""
    source = source_database(settings)
    if source.dialect is Dialect.SQLITE and not source.sqlite_path().exists():
        raise SourceConfigError(f"source attach: no database file {source.sqlite_path()}")
    with source.session() as session:
        return session.attach()


def source_stats(settings: Settings) -> dict[str, object]:
    source = source_database(settings)
    source.require_initialised()
    with source.session() as session:
        return session.stats()


def instance_config() -> str:
    """The `dagster.yaml` of the product's instance: storage defaults (all under DAGSTER_HOME),
    with an event log that writes a batch of events (a range run's per-partition events) at once,
    and SQLite files each on one engine per process (`resources/dagster_storage.py`), and
    compute logs whose helpers leave a terminal's Ctrl-C to the command
    (`resources/dagster_compute_logs.py`); lake writers queue one at a time
    (ingest.WRITER_TAG); runs start warm (`resources/dagster_launcher.py`), and a run whose
    worker died (killed, or before it could start) is failed by the launcher or Dagster's run
    monitoring instead of holding the writers' queue. The instance does not report usage (and
    so prints no telemetry banner into the CLI's output); `telemetry: enabled: true` in its
    dagster.yaml turns it on."""
    # Imported here, as in `dagster_instance`: Dagster's storage modules and SQLAlchemy take
    # ~0.35 CPU s to import, which an idle `run` (no Dagster run) does not need.
    from resources.dagster_compute_logs import InterruptibleComputeLogManager
    from resources.dagster_launcher import ForkedRunLauncher
    from resources.dagster_storage import (
        BatchingSqliteEventLogStorage,
        KeptSqliteRunStorage,
        KeptSqliteScheduleStorage,
    )
    from spotify_assets.orchestration import ingest

    storages = {
        "event_log_storage": BatchingSqliteEventLogStorage,
        "run_storage": KeptSqliteRunStorage,
        "schedule_storage": KeptSqliteScheduleStorage,
        "compute_logs": InterruptibleComputeLogManager,
    }
    return (
        (
            "telemetry:\n  enabled: false\n"
            "run_queue:\n  max_concurrent_runs: 4\n  dequeue_interval_seconds: 1\n"
            "  tag_concurrency_limits:\n"
        )
        + "".join(f"    - key: {key}\n      limit: 1\n" for key in ingest.WRITER_TAG)
        + "".join(
            f"{role}:\n  module: {storage.__module__}\n  class: {storage.__name__}\n"
            "  config:\n    dagster_home:\n      env: DAGSTER_HOME\n"
            for role, storage in storages.items()
        )
        + f"run_launcher:\n  module: {ForkedRunLauncher.__module__}\n"
        + f"  class: {ForkedRunLauncher.__name__}\n"
        + "run_monitoring:\n  enabled: true\n  start_timeout_seconds: 180\n"
        + "  max_resume_run_attempts: 0\n  poll_interval_seconds: 30\n"
    )


# SHA-256 of every `dagster.yaml` the CLI has written, this version's last (a test checks it): a
# home an earlier version made is brought up to date (warm runs, run monitoring, ...), where a
# file its user edited is kept.
INSTANCE_CONFIGS_WRITTEN = frozenset(
    {
        "7ee442aa1a60265c689926e136bda621e9a23fefb55abb5600690a0b3d95909c",  # 2026-11-26
        "23ceced3b1bd0f63c2e1b0494d78e1d68ffec2bbe1f00fc8bc554ba79dc8da54",  # 2026-11-26
        "b838f97b25cfa9f1108818f8ac4b1de60a6a0f4a1c94f28c7ba8ef78429997bf",  # 2026-11-29
        "b758ca1e1e61a6f895d98dbac29bd54a43b1e958545ca5fbe4c3f7d4c6e2f772",  # 2026-11-29
        "209ba5c0a1ab03a5870149944cb474400feaef144b58b5384337154cf5a03c29",  # 2026-11-29
        "513ae92a28e308cfadc374841856c14db13679b0db684d601519e00cef30451a",  # 2026-11-30
        "ac5c4504fd454e3ba354407df6aaa1fcd29a4afed99b93dd54e2805c9fc8c9ba",  # 2026-11-30
        "d80b21f8f6eb8a97371706193821b09c87d87b26dde21617368fbb54d52c4e31",  # 2026-11-30
    }
)


def _digest(config: str) -> str:
    return hashlib.sha256(config.encode()).hexdigest()


def _update_instance_config(config: Path) -> None:
    """Writes the product's `dagster.yaml` where it is missing, empty or as an earlier version
    wrote it (atomically: a command killed meanwhile leaves the old file or the new one); a file
    edited by its user is kept, and the sections of the current one it lacks are named."""
    import yaml

    current = instance_config()
    written = config.read_text() if config.exists() else ""
    if written != current and (not written.strip() or _digest(written) in INSTANCE_CONFIGS_WRITTEN):
        draft = config.with_name(f".{config.name}.{os.getpid()}")
        draft.write_text(current)
        draft.replace(config)
    elif written != current:
        try:
            edited = yaml.safe_load(written) or {}
        except yaml.YAMLError:
            return  # Dagster names the mistake when it loads the file
        lacks = [key for key in yaml.safe_load(current) if key not in edited]
        if lacks and isinstance(edited, dict):
            _say(
                f"note: {config} was edited: kept as it is; it lacks {', '.join(lacks)} of the "
                "configuration this version writes (README: Dagster)"
            )


def dagster_instance(settings: Settings) -> DagsterInstance:
    """The instance under `$DAGSTER_HOME` (default `$SPOTIFY_HOME/dagster`), shared with the UI.
    Dagster loads here, once a command runs something (~0.6 CPU s an idle `run` saves)."""
    from dagster import BetaWarning, DagsterInstance

    from resources.dagster_storage import BATCH_SIZE_VARIABLE, EVENT_BATCH_SIZE

    # Beta APIs we rely on knowingly (backfill policies, observable sources): not news to users.
    warnings.filterwarnings("ignore", category=BetaWarning)

    if not os.environ.get("DAGSTER_HOME"):
        settings.dagster_home.mkdir(parents=True, exist_ok=True)
        _update_instance_config(settings.dagster_home / "dagster.yaml")
        os.environ["DAGSTER_HOME"] = str(settings.dagster_home)
    os.environ.setdefault(BATCH_SIZE_VARIABLE, str(EVENT_BATCH_SIZE))
    return DagsterInstance.get()


def _storage_error() -> type[DBAPIError]:
    """What Dagster's own storage raises (on a full disk, "disk I/O error"). Named in an except
    clause, which evaluates it only once something failed: SQLAlchemy (~0.2 CPU s to import)
    stays out of an idle `run`."""
    from sqlalchemy.exc import DBAPIError

    return DBAPIError


# What to do about a failure of Dagster's own storage, by SQLite's message. It keeps only the
# runs' history: every load's state is in the lake, so a fresh storage loses no data.
_DAMAGED = "it is damaged: move {home} aside and run again (the lake keeps every load's state)"
_STORAGE_ADVICE = {
    "file is not a database": _DAMAGED,
    "database disk image is malformed": _DAMAGED,
    "database is locked": "another process holds it (a sqlite3 shell, a stuck Dagster process?): "
    "end that process and run again",
}


def _storage_failure(home: str | None, cause: str) -> str:
    advice = _STORAGE_ADVICE.get(cause)
    said = f"; {advice.format(home=home)}" if advice else ""
    return f"Dagster's storage under {home} failed: {cause}{said}"


def _lake_unreachable() -> type[AzureError]:
    """What adlfs raises when the lake's storage account does not answer (after its bounded
    retries, resources/lake.py), named in an except clause as `_storage_error`."""
    from azure.core.exceptions import AzureError

    return AzureError


def _run_failed() -> type[RunFailed]:
    """`ingest.RunFailed`, named in an except clause as `_storage_error`: `ingest` loads Dagster,
    which an idle `run` does not."""
    from spotify_assets.orchestration.ingest import RunFailed

    return RunFailed


P = ParamSpec("P")
R = TypeVar("R")


def _writes_lake(
    command: Callable[Concatenate[Settings, P], R],
) -> Callable[Concatenate[Settings, P], R]:
    """`spotify-lakehouse <command>` holds the lake writer lease throughout: a second writer
    waits for it, saying for whom, up to SPOTIFY_WRITER_WAIT_SECONDS."""

    @functools.wraps(command)
    def holding(settings: Settings, *args: P.args, **kwargs: P.kwargs) -> R:
        lake = LakeStorage(url=settings.lake_url)
        entry = f"CLI {command.__name__}"
        with lake_writer(lake, entry, settings.writer_wait_seconds, _say) as hold:
            if hold.abandoned_run:  # rare: Dagster is loaded only for it
                from resources.dagster_resources import fail_abandoned_run

                fail_abandoned_run(dagster_instance(settings), hold.abandoned_run)
            return command(settings, *args, **kwargs)

    return holding


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@_writes_lake
def run(settings: Settings, tables: Sequence[str] = ()) -> dict[str, list[dict[str, object]]]:
    """Bring every layer up to date with the source: incremental and CDC loads from each
    table's watermark, then the refresh of any loaded day reconciliation finds stale."""
    source_database(settings).require_initialised()
    # The tables' manifests and Delta logs, checked once for the gate, the runs and the repair.
    selection = gate.checked(copy_runner(settings), tables)
    if gate.up_to_date(settings, selection):  # found cheaply: Dagster and Spark not even loaded
        return _idle(settings, selection)
    from spotify_assets.orchestration import ingest

    instance = dagster_instance(settings)
    done: dict[str, list[ingest.TableLoad]] = {}
    failures: list[str] = []
    # The incremental run re-extracts the days late rows fell into; reconciliation afterwards
    # repairs whatever is still stale, even if some incremental load failed: a damaged table
    # blocks only itself.
    steps = (("incremental", functools.partial(ingest.incremental, late=True)),
             ("repaired", ingest.repair))  # fmt: skip
    for step, work in steps:
        try:
            done[step] = work(settings, instance, selection)
        except _run_failed() as failed:
            done[step], failures = failed.loads, failures + failed.failures
    _warn_of_failed_rules(done["incremental"] + done["repaired"])
    if failures:
        raise ingest.RunFailed(
            list(dict.fromkeys(failures)), done["incremental"] + done["repaired"]
        )
    return {step: [asdict(load) for load in loads] for step, loads in done.items()}


def _idle(settings: Settings, selection: gate.Selection) -> dict[str, list[dict[str, object]]]:
    """What `run` says when it has nothing to do: no run, and the source rows that wait for a
    later load, if any (as the loads of a run report them)."""
    waiting = gate.not_loaded_yet(copy_runner(settings), selection.tables)
    for name, rows in waiting.items():
        _say(f"warning: {name}: {rows.describe()}")
    reported = [{"table": name, **rows.report()} for name, rows in waiting.items()]
    return {"incremental": [], "repaired": []} | ({"not_loaded_yet": reported} if reported else {})


@_writes_lake
def refresh(
    settings: Settings, first: date, last: date, tables: Sequence[str] = ()
) -> list[dict[str, object]]:
    """Re-extract the days `first`..`last` from the source (a backdated refresh)."""
    catalog = settings.catalog
    for name in tables:
        if not catalog[name].change_time_column:
            dated = ", ".join(t.name for t in catalog if t.change_time_column)
            raise SourceConfigError(
                f"--tables {name}: a snapshot table, copied whole by every "
                f"`spotify-lakehouse run`; refresh re-extracts days of {dated}"
            )
    source_database(settings).require_initialised()
    from spotify_assets.orchestration import ingest

    instance = dagster_instance(settings)
    try:
        loads = ingest.refresh(settings, instance, first, last, tables)
    except _run_failed() as failed:
        _warn_of_failed_rules(failed.loads)
        raise
    _warn_of_failed_rules(loads)
    return [asdict(load) for load in loads]


def _warn_of_failed_rules(loads: Sequence[TableLoad]) -> None:
    """A critical rule's rows are quarantined and the run goes on: say so where a script and a
    person at the terminal see it, beside the counts printed on stdout."""
    for load in loads:
        for line in load.failed_rules:
            _say(f"warning: {line}")


def verify(settings: Settings, tables: Sequence[str] = ()) -> int:
    """Print what is missing or damaged on the lake, one line each; exit code 1 if anything."""
    source_database(settings).require_initialised()
    from spotify_assets.orchestration import recovery

    faults = recovery.verify(settings, tables)
    for fault in faults:
        print(fault.describe())
    if faults:
        print(f"to rebuild these from the layer below: {REPAIR_COMMAND}")
        return 1
    print("the lake is consistent: manifests, bronze files and Delta logs agree")
    return 0


@_writes_lake
def repair(settings: Settings, tables: Sequence[str] = ()) -> int:
    """Rebuild what `verify` finds from the layer below; print what was done and what remains
    (exit code 1 while something does)."""
    source_database(settings).require_initialised()
    from spotify_assets.orchestration import recovery

    done = recovery.repair(settings, dagster_instance(settings), tables)
    _print(asdict(done))
    for line in done.remaining:
        print(f"error: {line}", file=sys.stderr)
    return 1 if done.remaining else 0


def adf_build(out: Path) -> list[str]:
    """Write the Data Factory JSON generated from the catalog; returns the files written."""
    return adf_pipeline.write(out, adf_pipeline.build())


def demo_settings(settings: Settings, environ: Mapping[str, str] = os.environ) -> Settings:
    """The settings of a clean demo home, `$SPOTIFY_HOME/demo`, removed and recreated: a lake or
    Dagster instance left by an earlier demo holds watermarks and runs ahead of the new source."""
    home = settings.home / DEMO_HOME
    elsewhere = [name for name in DEMO_OWNS if environ.get(name)]
    if elsewhere:
        raise SourceConfigError(
            f"the demo builds its own lake and Dagster instance under {home}: unset "
            f"{', '.join(elsewhere)} to run it"
        )
    if home.exists():
        shutil.rmtree(home)
    return Settings.from_env({**environ, "SPOTIFY_HOME": str(home)})


@_writes_lake
def demo(settings: Settings) -> None:
    """The pipeline end to end in the home of `demo_settings`, on the configured source
    (recreated): the initial load through to gold, simulated days of changes (late streams,
    deletes, dirty values), the sensors catching up (arrival: incremental runs; reconciliation:
    refresh of the days late streams fell into), a backdated refresh, and a report."""
    source = source_database(settings)
    if source.holds_own_tables():  # the demo recreates its source: never a user's own rows
        raise SourceConfigError(
            "the demo recreates the source it runs on, and "
            f"{redact(source.connection_string)} holds tables "
            "`source init` did not make (your own rows): unset SPOTIFY_SOURCE_ODBC to run the "
            "demo on a source of its own"
        )
    print(f"demo home (recreated): {settings.home}", flush=True)
    today = datetime.now(UTC).date()
    timings: dict[str, float] = {}

    def step(title: str, action: Callable[[], object]) -> object:
        started = time.perf_counter()
        payload = action()
        timings[title] = round(time.perf_counter() - started, 1)
        _step(f"{title} ({timings[title]:.0f} s)", payload)
        return payload

    step("create the source", lambda: source_init(settings, DEFAULT_SCALE, DEFAULT_SEED,
                                                  today - timedelta(DEMO_DAYS), True))  # fmt: skip
    step("initial load, bronze to gold", lambda: run(settings))
    # Imported here: the code location module builds its `defs` from the environment on import.
    from resources.dagster_storage import BATCH_SIZE_VARIABLE, EVENT_BATCH_SIZE
    from spotify_assets.orchestration.catch_up import CatchUp
    from spotify_assets.orchestration.definitions import build_definitions

    rates = SimulationRates()
    step(f"simulate {DEMO_DAYS} days", lambda: source_simulate(settings, DEMO_DAYS, None, rates))
    automation = CatchUp(build_definitions(settings), dagster_instance(settings))
    step("arrival sensor: incremental runs", lambda: automation.tick("cdc_arrival_sensor"))
    late = _missing_streams(settings)
    step("reconciliation sensor: refresh of stale days",
         lambda: automation.tick("reconciliation_sensor"))  # fmt: skip
    recovered = late - _missing_streams(settings)
    step("sensors again: nothing left to do", automation.until_quiet)
    step("backdated refresh of the last 2 days, every table",
         lambda: refresh(settings, today - timedelta(days=1), today))  # fmt: skip
    source_tables = source_stats(settings)["tables"]
    _step(
        "rows per layer",
        {
            name: {
                "source": stats["rows"],
                "bronze (images and changes)": _bronze_rows(settings, name),
                "silver (versions)": _delta_rows(settings, silver_path(CATALOG[name])),
                "quarantined": _delta_rows(settings, quarantine_path(CATALOG[name])),
                "gold": _delta_rows(settings, gold_path(CATALOG[name].lake_name)),
            }
            for name, stats in source_tables.items()  # type: ignore[union-attr]
        }
        | {a.name: {"gold": _delta_rows(settings, gold_path(a.name))} for a in CATALOG.aggregates},
    )
    _step("SCD2 dimensions", {t.lake_name: _scd2_summary(settings, t.lake_name)
                              for t in CATALOG if isinstance(t.gold, Scd2Dimension)})  # fmt: skip
    _step("late streams", {"missed by incremental loads": late, "recovered by reconciliation":
                           recovered})  # fmt: skip
    _step("timings (s)", timings | {"total": round(sum(timings.values()), 1)})
    print(
        f"\nlake: {settings.lake_url}"
        f"\nOpen the Dagster UI:  SPOTIFY_HOME={settings.home} "
        f"DAGSTER_HOME={settings.dagster_home} {BATCH_SIZE_VARIABLE}={EVENT_BATCH_SIZE} "
        ".venv/bin/dg dev"
        "\n(turn the sensors on under Automation to keep the lake fresh as the source changes)"
    )


def _missing_streams(settings: Settings) -> int:
    """Streams in the source that bronze does not hold (late arrivals in loaded days)."""
    fact = CATALOG.fact.name
    stats = source_stats(settings)["tables"][fact]  # type: ignore[index]
    return int(stats["rows"]) - _bronze_rows(settings, fact)


def _scd2_summary(settings: Settings, name: str) -> dict[str, int]:
    table = delta_table(LakeStorage(url=settings.lake_url), gold_path(name)).to_pyarrow_table()
    current = table[END_AT].null_count
    return {"versions": table.num_rows, "current": current, "closed": table.num_rows - current}


def _bronze_rows(settings: Settings, table: str) -> int:
    """Rows bronze holds for a table: for cdc tables, every image and change record."""
    runner = copy_runner(settings)
    return runner.store(runner.source.catalog[table]).read_all().num_rows


def _delta_rows(settings: Settings, relative: str) -> int:
    """Rows of a Delta table of the lake, read with delta-rs (no Spark needed)."""
    lake = LakeStorage(url=settings.lake_url)
    path = lake.path(relative)
    if not exists(lake, path):
        return 0
    return delta_table(lake, relative).to_pyarrow_dataset().count_rows()


def _step(title: str, payload: object) -> None:
    print(f"\n== {title}")
    _print(payload)


def _print(payload: object) -> None:
    print(json.dumps(payload, indent=2, default=str))


def run_command(args: argparse.Namespace) -> int:
    """Run the parsed command line; its exit code, with any error said in one line."""
    try:
        settings = Settings.from_env()
        if args.command == "demo":
            demo(demo_settings(settings))
        elif args.command == "run":
            _print(run(settings, args.tables))
        elif args.command == "refresh":
            _print(refresh(settings, args.first, args.last, args.tables))
        elif args.command == "verify":
            return (repair if args.repair else verify)(settings, args.tables)
        elif args.command == "adf":
            _print(adf_build(args.out))
        elif args.source_command == "init":
            end = args.end_date or datetime.now(UTC).date()
            _print(source_init(settings, args.scale, args.seed, end, args.force, args.history_days))
        elif args.source_command == "simulate":
            rates = SimulationRates(
                late_fraction=args.late_fraction, dirty_fraction=args.dirty_fraction
            )
            _print(source_simulate(settings, args.days, args.seed, rates))
        elif args.source_command == "attach":
            _print(source_attach(settings))
        else:
            _print(source_stats(settings))
    except (SourceConfigError, SourceUnavailableError, CatalogError, ValueError) as exc:
        # Its first line: a source read's error goes on with the query, for a run's log.
        print(f"error: {(str(exc).splitlines() or [''])[0]}", file=sys.stderr)
        return 2
    except LakeBusyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_LAKE_BUSY
    except _run_failed() as failed:
        if failed.loads:
            _print([asdict(load) for load in failed.loads])
        for line in failed.failures:
            print(f"error: {line}", file=sys.stderr)
        return 1
    except LakeFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except _lake_unreachable() as exc:
        reason = (str(exc).splitlines() or [""])[0]
        lake = Settings.from_env().lake_url  # read once already: only Azure lakes get here
        print(f"error: lake {lake} cannot be reached: {reason}", file=sys.stderr)
        return 1
    except _storage_error() as exc:
        home = os.environ.get("DAGSTER_HOME")  # set by `dagster_instance` before any run
        print(f"error: {_storage_failure(home, str(exc.orig))}", file=sys.stderr)
        return 1
    except OSError as exc:  # a full disk or a permission, outside the lake's own writes
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1
    return 0
