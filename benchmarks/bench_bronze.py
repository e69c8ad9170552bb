"""Bronze-ingestion figures side by side: our copy runner, a connectorx floor and dlt.

    .venv/bin/python benchmarks/bench_bronze.py [--scale 1] [--keep DIR]

Creates a scale-S SQLite source (history ending two days ago, so there is room to simulate) and
measures, for table FactStream:

- ours, initial load: `LocalCopyRunner.copy(..., from_watermark=True)` into an empty lake, then
  the initial load of the four other tables in the same process;
- the floor: one connectorx read of the whole table into Arrow plus one zstd parquet write;
- dlt 1.31 `sql_database` with the connectorx and the pyarrow backends, into a local filesystem
  destination as parquet (skipped when dlt is not installed: `pip install -e '.[bench]'`);
- ours, incremental: every table copied from its watermark after one simulated day (~1% of rows);
- ours, no change: the same incremental copy again, with nothing new in the source.

Each step runs in a fresh subprocess: "seconds" is the work itself, timed inside the subprocess
after its imports; "process s" is the subprocess's wall time including interpreter start-up and
imports; the peak RSS is the subprocess's own. `--keep DIR` works in DIR (new or empty) and leaves
the source and the lakes there. Not a test: run it on the reference machine and record the output
in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

SEED = 42
FACT = "FactStream"
RUN_ID = "bench"
DLT_MISSING = "dlt not installed (pip install -e '.[bench]')"

# Goals (DESIGN.md): initial rows/s, incremental share of the initial load, no-change seconds.
GOAL_ROWS_PER_S = 1_000_000
GOAL_INCREMENTAL_SHARE = 0.05
GOAL_NO_CHANGE_S = 1.0
GOAL_PEAK_MIB = 2048

Payload = dict[str, Any]


@dataclass(frozen=True)
class Context:
    """What a step subprocess is told: the work directory (its SPOTIFY_HOME) and the scale."""

    work: Path
    scale: float

    @property
    def source(self) -> Path:
        return self.work / "source.db"  # checked against Settings.embedded_source_path

    @property
    def lake(self) -> Path:
        return self.work / "lake"


# --- steps: each runs in its own subprocess -------------------------------------------------
# Linux keeps ru_maxrss across fork and exec: a child starts from its parent's peak. So the driver
# stays small (it imports nothing of the project; creating and simulating the source are
# subprocesses too), and each step's peak is its own.


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _settings(ctx: Context) -> Any:
    from spotify_assets.settings import Settings

    settings = Settings.from_env({"SPOTIFY_HOME": str(ctx.work)})
    assert settings.embedded_source_path == ctx.source, settings.embedded_source_path
    return settings


def _runner(ctx: Context) -> Any:
    from resources.copy_runner import LocalCopyRunner
    from resources.lake import LakeStorage
    from resources.source_db import SourceDatabase, sqlite_connection_string

    return LocalCopyRunner(
        source=SourceDatabase(connection_string=sqlite_connection_string(ctx.source)),
        lake=LakeStorage(url=str(ctx.lake)),
        safety_lag_seconds=0,
    )


def step_create(ctx: Context) -> Payload:
    """A scale-S SQLite source whose history ends two days ago."""
    from spotify_assets.cli import source_init

    end = datetime.now(UTC).date() - timedelta(days=2)
    created = source_init(_settings(ctx), ctx.scale, SEED, end, force=True)
    return {
        "rows": created["rows"],
        "seconds": created["seconds"],
        "history": created["history"],
        "mib": ctx.source.stat().st_size / 2**20,
    }


def step_simulate(ctx: Context) -> Payload:
    """One simulated day of inserts, updates, deletes and late data (~1% of the rows)."""
    from spotify_assets.cli import source_simulate
    from spotify_assets.simulator import SimulationRates

    simulated = source_simulate(_settings(ctx), 1, SEED, SimulationRates())
    return {"rows": simulated["rows_changed"], "seconds": simulated["seconds"]}


def step_initial(ctx: Context) -> Payload:
    """FactStream first (its own time and peak), then the four other tables."""
    from spotify_assets.catalog import CATALOG

    runner = _runner(ctx)
    started = time.perf_counter()
    fact = runner.copy(CATALOG[FACT], None, RUN_ID, from_watermark=True)
    fact_seconds = time.perf_counter() - started
    fact_peak = _peak_mib()
    others = [runner.copy(t, None, RUN_ID, from_watermark=True) for t in CATALOG if t.name != FACT]
    return {
        "rows": fact.rows_read,
        "seconds": fact_seconds,
        "peak_mib": fact_peak,
        "files": len(fact.files),
        "partitions": len(fact.partitions),
        "all_rows": fact.rows_read + sum(r.rows_read for r in others),
        "all_seconds": time.perf_counter() - started,
    }


def step_incremental(ctx: Context) -> Payload:
    """Every table copied from its stored watermark (also the run with no changes)."""
    from spotify_assets.catalog import CATALOG

    runner = _runner(ctx)
    started = time.perf_counter()
    results = [runner.copy(t, None, RUN_ID, from_watermark=True) for t in CATALOG]
    seconds = time.perf_counter() - started
    return {
        "rows": sum(r.rows_read for r in results),
        "seconds": seconds,
        "files": sum(len(r.files) for r in results),
        "tables_read": [r.table for r in results if r.rows_read],
    }


def step_floor(ctx: Context) -> Payload:
    """A plain connectorx read of every column into Arrow, then one zstd parquet write."""
    import connectorx
    import pyarrow.parquet as pq

    from spotify_assets.catalog import CATALOG

    query = f"SELECT {', '.join(CATALOG[FACT].column_names)} FROM {FACT}"
    target = ctx.work / "floor" / f"{FACT}.parquet"
    target.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    table = connectorx.read_sql(f"sqlite://{ctx.source}", query, return_type="arrow")
    pq.write_table(table, target, compression="zstd")
    return {"rows": table.num_rows, "seconds": time.perf_counter() - started}


def _dlt_step(backend: str) -> Callable[[Context], Payload]:
    def step(ctx: Context) -> Payload:
        try:
            import dlt.sources.sql_database  # binds `dlt` too
        except ImportError:
            return {"skipped": DLT_MISSING}
        target = ctx.work / f"dlt-{backend}"
        started = time.perf_counter()
        pipeline = dlt.pipeline(
            pipeline_name=f"bench_{backend}",
            pipelines_dir=str(target / "pipelines"),
            destination=dlt.destinations.filesystem(bucket_url=(target / "lake").as_uri()),
            dataset_name="bronze",
        )
        table = dlt.sources.sql_database.sql_table(
            credentials=f"sqlite:///{ctx.source}", table=FACT, backend=backend
        )
        pipeline.run(table, loader_file_format="parquet")
        seconds = time.perf_counter() - started
        counts = pipeline.last_trace.last_normalize_info.row_counts
        rows = sum(n for name, n in counts.items() if not name.startswith("_dlt"))
        return {"rows": rows, "seconds": seconds}

    step.__doc__ = f"dlt `sql_database` with the {backend} backend into local parquet."
    return step


STEPS: dict[str, Callable[[Context], Payload]] = {
    "create": step_create,
    "simulate": step_simulate,
    "initial": step_initial,
    "floor": step_floor,
    "dlt-connectorx": _dlt_step("connectorx"),
    "dlt-pyarrow": _dlt_step("pyarrow"),
    "incremental": step_incremental,
}


def run_step(step: str, ctx: Context, result: Path) -> None:
    """Inside the subprocess: run one step and leave its figures in `result` as JSON."""
    payload = STEPS[step](ctx)
    payload.setdefault("peak_mib", _peak_mib())
    payload["process_peak_mib"] = _peak_mib()
    result.write_text(json.dumps(payload))


# --- the driver -----------------------------------------------------------------------------


@dataclass
class Measure:
    """One line of the table; `note` replaces the figures of a skipped or failed step."""

    label: str
    rows: int | None = None
    seconds: float | None = None
    peak_mib: float | None = None
    process_s: float | None = None
    note: str = ""
    extra: Payload = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.note and self.seconds is not None

    @property
    def rate(self) -> float | None:
        if not self.ok or not self.rows or not self.seconds:
            return None
        return self.rows / self.seconds


def measure(label: str, step: str, ctx: Context) -> Measure:
    """Run one step in a fresh interpreter and collect the figures it took of itself."""
    result = ctx.work / f"result-{step}-{time.monotonic_ns()}.json"
    env = {
        **os.environ,
        "RUNTIME__DLTHUB_TELEMETRY": "false",
        "DLT_DATA_DIR": str(ctx.work / "dlt-data"),
    }
    command = [sys.executable, __file__, "--step", step, "--scale", str(ctx.scale)]
    command += ["--work", str(ctx.work), "--result", str(result)]
    print(f"running: {label} ...", file=sys.stderr, flush=True)
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    process_s = time.perf_counter() - started
    if done.returncode != 0 or not result.exists():
        print(done.stderr[-4000:], file=sys.stderr)
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return Measure(label, note=f"failed (exit {done.returncode}): {tail[:100]}")
    payload = json.loads(result.read_text())
    if "skipped" in payload:
        return Measure(label, note=payload["skipped"])
    return Measure(
        label, payload["rows"], payload["seconds"], payload["peak_mib"], process_s, extra=payload
    )


def _required(m: Measure) -> Measure:
    if not m.ok:
        raise SystemExit(f"{m.label}: {m.note}")
    return m


def _fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def print_table(rows: list[Measure]) -> None:
    header = ("rows", "seconds", "rows/s", "peak RSS MiB", "process s")
    width = max(len(r.label) for r in rows) + 2
    print(f"\n{'step':<{width}}" + "".join(f"{h:>14}" for h in header))
    for r in rows:
        if r.note:
            print(f"{r.label:<{width}}  {r.note}")
            continue
        cells = (
            _fmt(r.rows, ",d"),
            _fmt(r.seconds, ".2f"),
            _fmt(r.rate, ",.0f"),
            _fmt(r.peak_mib, ",.0f"),
            _fmt(r.process_s, ".2f"),
        )
        print(f"{r.label:<{width}}" + "".join(f"{c:>14}" for c in cells))


def print_goals(fact: Measure, initial: Measure, incremental: Measure, quiet: Measure) -> None:
    share = (incremental.seconds or 0) / (initial.seconds or 1)
    peak = max(m.peak_mib or 0 for m in (fact, initial, incremental, quiet))
    checks = [
        (f"initial ≥ {GOAL_ROWS_PER_S:,} rows/s: {_fmt(fact.rate, ',.0f')}",
         (fact.rate or 0) >= GOAL_ROWS_PER_S),
        (f"incremental ≤ {GOAL_INCREMENTAL_SHARE:.0%} of initial: {share:.1%}",
         share <= GOAL_INCREMENTAL_SHARE),
        (f"no-change ≤ {GOAL_NO_CHANGE_S:g} s: {_fmt(quiet.seconds, '.2f')} s "
         f"({_fmt(quiet.process_s, '.2f')} s with start-up and imports; dlt needs ~4 s)",
         (quiet.seconds or 0) <= GOAL_NO_CHANGE_S),
        (f"peak memory ≤ {GOAL_PEAK_MIB / 1024:g} GiB: {peak:,.0f} MiB", peak <= GOAL_PEAK_MIB),
    ]  # fmt: skip
    print("goals:")
    for text, met in checks:
        print(f"  {text} — {'met' if met else 'NOT met'}")


def print_notes(source: Measure, fact: Measure, initial: Measure, changes: Measure,
                incremental: Measure, quiet: Measure) -> None:  # fmt: skip
    print(
        f"\n{FACT} initial load: {fact.extra['files']} files in {fact.extra['partitions']} "
        "partitions (the all-tables row's peak and process time cover the FactStream row too)"
    )
    print(
        f"incremental: {changes.rows:,} source rows changed in 1 simulated day "
        f"({(changes.rows or 0) / (source.rows or 1):.1%}); {incremental.rows:,} rows read, "
        f"{incremental.extra['files']} files written, "
        f"{(incremental.seconds or 0) / (initial.seconds or 1):.1%} of the initial load of all "
        f"tables ({initial.seconds:.2f} s)"
    )
    print(
        f"no change: {quiet.rows:,} rows read from {', '.join(quiet.extra['tables_read']) or '—'}"
        f", {quiet.extra['files']} files written"
    )


def run_all(ctx: Context) -> None:
    source = _required(measure("create the source", "create", ctx))
    history = source.extra["history"]
    print(
        f"scale {ctx.scale:g}: {source.rows:,} source rows, history {history[0]} to {history[1]}, "
        f"{source.extra['mib']:,.0f} MiB, created in {source.seconds:.1f} s"
    )
    fact = _required(measure(f"ours: initial load, {FACT}", "initial", ctx))
    initial = Measure(
        "ours: initial load, all 5 tables",
        fact.extra["all_rows"],
        fact.extra["all_seconds"],
        fact.extra["process_peak_mib"],
        fact.process_s,
    )
    fact.process_s = None  # the process belongs to the all-tables row
    floor = measure("floor: connectorx → Arrow + 1 zstd parquet", "floor", ctx)
    dlt_cx = measure("dlt sql_database, connectorx backend", "dlt-connectorx", ctx)
    dlt_pa = measure("dlt sql_database, pyarrow backend", "dlt-pyarrow", ctx)
    changes = _required(measure("simulate 1 day", "simulate", ctx))
    incremental = _required(measure("ours: incremental after 1 day, 5 tables", "incremental", ctx))
    quiet = _required(measure("ours: run with no changes, 5 tables", "incremental", ctx))

    print_table([fact, initial, floor, dlt_cx, dlt_pa, incremental, quiet])
    print_notes(source, fact, initial, changes, incremental, quiet)
    print_goals(fact, initial, incremental, quiet)


@contextmanager
def workdir(keep: Path | None) -> Iterator[Path]:
    if keep is None:
        with tempfile.TemporaryDirectory(prefix="spotify-bench-bronze-") as tmp:
            yield Path(tmp)
        return
    keep.mkdir(parents=True, exist_ok=True)
    if any(keep.iterdir()):
        raise SystemExit(f"--keep {keep}: the directory must be new or empty")
    yield keep.resolve()
    print(f"kept in {keep.resolve()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--keep", type=Path, metavar="DIR", help="work in DIR and keep it")
    # The driver runs each step as `--step NAME --work DIR --result FILE` in a fresh interpreter.
    parser.add_argument("--step", choices=sorted(STEPS), help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:
        run_step(args.step, Context(args.work, args.scale), args.result)
        return
    with workdir(args.keep) as work:
        run_all(Context(work, args.scale))


if __name__ == "__main__":
    main()
