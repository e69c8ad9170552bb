"""First load of a multi-year history: `run` over three years of daily partitions.

    .venv/bin/python benchmarks/bench_history.py --scale 0.002 [--days 1095] [--keep DIR]

Creates a scale-S SQLite source whose history spans `--days` days ending yesterday (`source
init --history-days`, so the partition start is the history's first day), then times the first
`spotify-lakehouse run` in process (the work after imports): one single-run backfill of every
partition through bronze, silver and gold. The scale is kept tiny on purpose: the figure is the
cost per partition, not per row. Where the time goes comes from the run's Dagster event log: the
run's creation (its planned events: one per asset, naming its partitions) until it starts, and
per step, its wall time and the span of its asset-materialization events (one per asset and
partition: Dagster's per-partition bookkeeping, written after the step's own work). It also
prints the size of the Dagster instance's files and, per partition, the lake's parquet files and
Dagster's events by type. bench_end_to_end.py runs first loads of several lengths through the
CLI for the cost of each partition added. Not a test: run it on the reference machine and record
the output in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from harness import (
    Bookkeeping,
    Context,
    Measure,
    Payload,
    bookkeeping,
    cli,
    measure,
    print_table,
    required,
    settings,
)

SEED = 42
DAYS_VARIABLE = "BENCH_HISTORY_DAYS"


def step_source(ctx: Context) -> Payload:
    from datetime import UTC, datetime, timedelta

    from spotify_assets.cli.commands import source_init

    days = int(os.environ[DAYS_VARIABLE])
    end = datetime.now(UTC).date() - timedelta(days=1)
    created = source_init(settings(ctx), ctx.scale, SEED, end, force=True, history_days=days)
    return {"rows": created["rows"], "seconds": created["seconds"], "history": created["history"]}


def step_first_load(ctx: Context) -> Payload:
    from dagster import DagsterEventType

    from spotify_assets.cli.commands import dagster_instance
    from spotify_assets.orchestration import ingest

    config = settings(ctx)
    instance = dagster_instance(config)
    started = time.perf_counter()
    loads = ingest.incremental(config, instance)
    seconds = time.perf_counter() - started
    steps: dict[str, dict[str, float]] = {}
    creation = 0.0
    for run in instance.get_runs():
        begun: dict[str, float] = {}
        planned: float | None = None
        for entry in instance.all_logs(run.run_id):
            event = entry.dagster_event
            if event is None:
                continue
            if event.event_type is DagsterEventType.ASSET_MATERIALIZATION_PLANNED:
                planned = planned or entry.timestamp
            elif event.event_type is DagsterEventType.RUN_START and planned:
                creation += entry.timestamp - planned
            if not event.step_key:
                continue
            step = steps.setdefault(event.step_key, {"materializations": 0})
            if event.event_type is DagsterEventType.STEP_START:
                begun[event.step_key] = entry.timestamp
            elif event.event_type is DagsterEventType.STEP_SUCCESS:
                step["seconds"] = entry.timestamp - begun[event.step_key]
            elif event.event_type is DagsterEventType.ASSET_MATERIALIZATION:
                step["materializations"] += 1
                step.setdefault("first_materialization", entry.timestamp)
                step["bookkeeping_s"] = entry.timestamp - step["first_materialization"]
    return {
        "rows": sum(load.rows for load in loads),
        "seconds": seconds,
        "runs": len(instance.get_runs()),
        "creation_s": round(creation, 2),
        "steps": {
            name: {k: round(v, 2) for k, v in figures.items() if k != "first_materialization"}
            for name, figures in steps.items()
        },
    }


STEPS = {"source": step_source, "first_load": step_first_load}


def run_all(ctx: Context) -> None:
    env = {DAYS_VARIABLE: str(DAYS)}
    source = required(measure(f"source init, {DAYS} days", "source", ctx, env))
    load = measure("first run (bronze to gold)", "first_load", ctx, env)
    print_table([source, load])
    report(source, required(load), bookkeeping(ctx.work))


def report(source: Measure, load: Measure, kept: Bookkeeping) -> None:
    first, last = source.extra["history"]
    partitions = DAYS + 2  # the history's days, its end day (yesterday) and today's
    assert load.seconds is not None
    print(f"\nhistory {first}..{last} (exclusive): {partitions} daily partitions")
    print(
        f"first load: {load.seconds:.1f} s, {load.seconds / partitions:.3f} s per partition "
        f"(load average before: {load.extra['load']:.1f})"
    )
    mib = round(kept.dagster_bytes / 2**20, 1)
    print(
        f"run creation (planned events) to start: {load.extra['creation_s']:.1f} s; "
        f"Dagster instance on disk: {mib:.1f} MiB; per partition: "
        f"{kept.parquet_files / partitions:.1f} parquet files, Dagster events "
        + ", ".join(f"{kind} {n / partitions:.2f}" for kind, n in kept.events.most_common())
    )
    print("\nper step: wall s, asset materializations, s from the first to the last of them")
    steps = sorted(load.extra["steps"].items(), key=lambda item: -item[1].get("seconds", 0))
    for name, figures in steps:
        print(
            f"  {name:<40} {figures.get('seconds', 0):>8.1f} {figures['materializations']:>6}"
            f" {figures.get('bookkeeping_s', 0):>8.1f}"
        )
    seconds = round(load.seconds, 1)
    print(json.dumps({"partitions": partitions, "seconds": seconds, "dagster_mib": mib}))


def _days() -> int:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--days", type=int, default=3 * 365)
    known, rest = parser.parse_known_args()
    sys.argv[1:] = rest
    return known.days


DAYS = _days()

if __name__ == "__main__":
    cli(__file__, __doc__ or "", STEPS, run_all, prefix="bench-history-")
