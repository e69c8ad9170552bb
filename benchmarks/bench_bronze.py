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

import time
from collections.abc import Callable

from harness import (
    Context,
    Measure,
    Payload,
    cli,
    copy_runner,
    create_source,
    fmt,
    measure,
    peak_mib,
    print_table,
    required,
    settings,
)

SEED = 42
FACT = "FactStream"
RUN_ID = "bench"
DLT_MISSING = "dlt not installed (pip install -e '.[bench]')"

# Goals: initial rows/s, incremental share of the initial load, no-change seconds.
GOAL_ROWS_PER_S = 1_000_000
GOAL_INCREMENTAL_SHARE = 0.05
GOAL_NO_CHANGE_S = 1.0
GOAL_PEAK_MIB = 2048


# --- steps: each runs in its own subprocess (see harness.py) -----------------------------------
# Linux keeps ru_maxrss across fork and exec: a child starts from its parent's peak. So the driver
# stays small (it imports nothing of the project; creating and simulating the source are
# subprocesses too), and each step's peak is its own.


def step_create(ctx: Context) -> Payload:
    return {**create_source(ctx, SEED), "mib": ctx.source.stat().st_size / 2**20}


def step_simulate(ctx: Context) -> Payload:
    """One simulated day of inserts, updates, deletes and late data (~1% of the rows)."""
    from spotify_assets.cli.commands import source_simulate
    from spotify_assets.source.simulator import SimulationRates

    simulated = source_simulate(settings(ctx), 1, SEED, SimulationRates())
    return {"rows": simulated["rows_changed"], "seconds": simulated["seconds"]}


def step_initial(ctx: Context) -> Payload:
    """FactStream first (its own time and peak), then the four other tables."""
    runner = copy_runner(ctx)
    catalog = runner.source.catalog
    started = time.perf_counter()
    fact = runner.copy(catalog[FACT], None, RUN_ID, from_watermark=True)
    fact_seconds = time.perf_counter() - started
    fact_peak = peak_mib()
    others = [runner.copy(t, None, RUN_ID, from_watermark=True) for t in catalog if t.name != FACT]
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
    runner = copy_runner(ctx)
    started = time.perf_counter()
    results = [runner.copy(t, None, RUN_ID, from_watermark=True) for t in runner.source.catalog]
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

    from spotify_assets.catalog.tables import CATALOG

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


# --- the driver -----------------------------------------------------------------------------


def print_goals(fact: Measure, initial: Measure, incremental: Measure, quiet: Measure) -> None:
    share = (incremental.seconds or 0) / (initial.seconds or 1)
    peak = max(m.peak_mib or 0 for m in (fact, initial, incremental, quiet))
    checks = [
        (f"initial ≥ {GOAL_ROWS_PER_S:,} rows/s: {fmt(fact.rate, ',.0f')}",
         (fact.rate or 0) >= GOAL_ROWS_PER_S),
        (f"incremental ≤ {GOAL_INCREMENTAL_SHARE:.0%} of initial: {share:.1%}",
         share <= GOAL_INCREMENTAL_SHARE),
        (f"no-change ≤ {GOAL_NO_CHANGE_S:g} s: {fmt(quiet.seconds, '.2f')} s "
         f"({fmt(quiet.process_s, '.2f')} s with start-up and imports; dlt needs ~4 s)",
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
    source = required(measure("create the source", "create", ctx))
    history = source.extra["history"]
    print(
        f"scale {ctx.scale:g}: {source.rows:,} source rows, history {history[0]} to {history[1]}, "
        f"{source.extra['mib']:,.0f} MiB, created in {source.seconds:.1f} s"
    )
    fact = required(measure(f"ours: initial load, {FACT}", "initial", ctx))
    initial = Measure(
        "ours: initial load, all 5 tables",
        fact.extra["all_rows"],
        fact.extra["all_seconds"],
        fact.extra["process_peak_mib"],
        fact.process_s,
    )
    fact.process_s = None  # the process belongs to the all-tables row
    floor = measure("floor: connectorx → Arrow + 1 zstd parquet", "floor", ctx)
    dlt_env = {"RUNTIME__DLTHUB_TELEMETRY": "false", "DLT_DATA_DIR": str(ctx.work / "dlt-data")}
    dlt_cx = measure("dlt sql_database, connectorx backend", "dlt-connectorx", ctx, dlt_env)
    dlt_pa = measure("dlt sql_database, pyarrow backend", "dlt-pyarrow", ctx, dlt_env)
    changes = required(measure("simulate 1 day", "simulate", ctx))
    incremental = required(measure("ours: incremental after 1 day, 5 tables", "incremental", ctx))
    quiet = required(measure("ours: run with no changes, 5 tables", "incremental", ctx))

    print_table([fact, initial, floor, dlt_cx, dlt_pa, incremental, quiet])
    print_notes(source, fact, initial, changes, incremental, quiet)
    print_goals(fact, initial, incremental, quiet)


def main() -> None:
    cli(__file__, __doc__ or "", STEPS, run_all, prefix="spotify-bench-bronze-")


if __name__ == "__main__":
    main()
