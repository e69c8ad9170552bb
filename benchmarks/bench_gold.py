"""Silver-to-gold figures on Sail: the full gold build, an incremental SCD2 apply, no change.

    .venv/bin/python benchmarks/bench_gold.py [--scale 1] [--keep DIR]

Creates a scale-S SQLite source (history ending two days ago), loads bronze for every table with
`LocalCopyRunner` and builds silver for every table with `SilverStore.refresh` (all partitions),
then measures the local gold runner (`GoldRunner`):

- full gold build: every gold table into an empty gold folder — the three SCD2 dimensions
  (`apply_dimension`, a first apply rebuilds from every silver version), the calendar
  (`build_calendar`), the point-in-time fact over all its partitions (`build_fact`) and the four
  daily aggregates (`build_aggregate`); the split per table, and within each table between the
  Delta write (which runs the query: the SCD2 windows, the point-in-time joins, the
  aggregation; for an incremental apply, the commit replacing the changed keys), the
  expectation counts, the SCD2 invariant checks and Sail's other counts, is printed below the
  table;
- no-change apply: `apply_dimension` of the three dimensions again, silver unchanged;
- incremental SCD2 apply: the source advances one simulated day in which about 1% of the keys of
  each dimension are updated and nothing else happens (`RATES`), bronze loads from its
  watermarks, silver refreshes the days the load touched (its own row), then `apply_dimension`
  of the three dimensions: the gold apply alone is the figure;
- full rebuild of the same dimensions: `apply_dimension(table, full=True)` on the same silver.

Each step runs in a fresh subprocess: "seconds" is the work itself, timed inside the subprocess
after its imports and Sail's start-up; "process s" is the subprocess's wall time including
interpreter start-up, imports and Sail; the peak RSS is the subprocess's own (Sail runs in it).
The 1-minute load average at each step's start is printed with the notes: the machine may be
shared. `--keep DIR` works in DIR (new or empty) and leaves the source and the lake there. Not a
test: run it on the reference machine and record the output in benchmarks/README.md.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime
from typing import Any

from harness import (
    Context,
    Measure,
    Payload,
    cli,
    copy_runner,
    create_source,
    fmt,
    lake_of,
    measure,
    print_table,
    required,
    sail,
    settings,
)

SEED = 42
RUN_ID = "bench"
DIMENSIONS = ("DimUser", "DimArtist", "DimTrack")
CALENDAR = "DimDate"
TOUCHED = "touched.json"  # the partitions the incremental bronze load wrote, per table

# Goals: the full gold build at scale 1; an incremental apply of 1% changed keys against it.
GOAL_FULL_S = 60.0
GOAL_INCREMENTAL_SHARE = 0.10


def _rates() -> Any:
    """One simulated day: updates of about 1% of each dimension's keys, nothing else."""
    from spotify_assets.source.simulator import SimulationRates

    return SimulationRates(
        new_users=0.0,
        new_artists=0.0,
        new_tracks=0.0,
        user_updates=0.01,
        artist_updates=0.01,
        track_updates=0.01,
        user_deletes=0.0,
        artist_deletes=0.0,
        track_deletes=0.0,
        streams_per_day=0.0,
        late_fraction=0.0,
        dirty_fraction=0.0,  # every update reaches gold (a dirty one would be quarantined)
    )


# --- steps: each runs in its own subprocess (see harness.py) -----------------------------------


def _catalog(ctx: Context) -> Any:
    return settings(ctx).catalog


def _today() -> date:
    return datetime.now(UTC).date()


class Split:
    """Wall time of each table's build, split between what it calls: the Delta write (the
    query runs in it: Spark is lazy), the expectation counts, the SCD2 invariant checks, Sail's
    other counts and the rest (planning, schema look-ups, delta-rs log reads, the state file).
    Wrappers shadow what the runner calls: its code is unchanged. Only the outermost wrapped call
    is timed (the checks count too)."""

    def __init__(self) -> None:
        self.tables: dict[str, dict[str, float]] = {}
        self.current: dict[str, float] = {}
        self.depth = 0

    def wrap(self, label: str, method: Callable) -> Callable:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if self.depth:
                return method(*args, **kwargs)
            self.depth += 1
            started = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self.depth -= 1
                self.current[label] = self.current.get(label, 0.0) + time.perf_counter() - started

        return wrapper

    @contextmanager
    def table(self, name: str) -> Iterator[None]:
        self.current = {}
        started = time.perf_counter()
        yield
        seconds = time.perf_counter() - started
        self.current["rest"] = seconds - sum(self.current.values())
        self.tables[name] = {"seconds": seconds, **self.current}


def _gold(ctx: Context) -> tuple[Any, Split, float]:
    """A GoldRunner on a fresh Sail session, its calls instrumented by a Split."""
    from pyspark.sql.connect.dataframe import DataFrame

    from resources import gold_runner

    spark, startup = sail()
    runner = gold_runner.GoldRunner(lake_of(ctx), spark, _catalog(ctx))
    split = Split()
    gold_runner.replace_partitions = split.wrap("write", gold_runner.replace_partitions)
    runner._replace_keys = split.wrap("write", runner._replace_keys)
    gold_runner._counts = split.wrap("expectation counts", gold_runner._counts)
    gold_runner.scd2_problems = split.wrap("SCD2 checks", gold_runner.scd2_problems)
    DataFrame.count = split.wrap("other counts", DataFrame.count)
    return runner, split, startup


def _apply(split: Split, runner: Any, table: Any, full: bool = False) -> Payload:
    from resources.delta_tables import partition_rows

    with split.table(table.lake_name):
        result = runner.apply_dimension(table, full=full)
    return {
        # Every silver version, from the log's file statistics (no scan): what a full rebuild
        # reads. (`versions_read` is 0 when full=True re-applies the version gold reflects.)
        "silver_versions": partition_rows(runner.lake, f"silver/{table.lake_name}", None, None),
        "rows": result.rows,
        "current": result.current,
        "changed_keys": result.changed_keys,
        "versions_read": result.versions_read,
        "full": result.full,
        "silver_version": result.silver_version,
        "failures": result.failures,
        "problems": result.problems,
    }


def _apply_dimensions(ctx: Context, full: bool = False) -> Payload:
    runner, split, startup = _gold(ctx)
    catalog = _catalog(ctx)
    started = time.perf_counter()
    tables = {
        catalog[name].lake_name: _apply(split, runner, catalog[name], full) for name in DIMENSIONS
    }
    seconds = time.perf_counter() - started
    for name, result in tables.items():
        result.update(split.tables[name])
    return {
        "rows": sum(t["silver_versions" if full else "versions_read"] for t in tables.values()),
        "seconds": seconds,
        "startup": startup,
        "tables": tables,
    }


def step_create(ctx: Context) -> Payload:
    return create_source(ctx, SEED)


def _copy_all(ctx: Context) -> Payload:
    """Every table from its watermark into bronze (the initial load, then incremental)."""

    runner = copy_runner(ctx)
    started = time.perf_counter()
    results = {t.name: runner.copy(t, None, RUN_ID, from_watermark=True) for t in _catalog(ctx)}
    seconds = time.perf_counter() - started
    touched = {name: sorted(d.isoformat() for d in r.partitions) for name, r in results.items()}
    (ctx.work / TOUCHED).write_text(json.dumps(touched))
    return {
        "rows": sum(r.rows_read for r in results.values()),
        "seconds": seconds,
        "per_table": {name: r.rows_read for name, r in results.items()},
        "touched": touched,
    }


def step_bronze(ctx: Context) -> Payload:
    """The initial load of every table into bronze."""
    return _copy_all(ctx)


def _refresh(ctx: Context, plan: dict[str, tuple[date, date] | None]) -> Payload:
    """`SilverStore.refresh` of the given tables and partitions, timed per table."""
    from resources.silver_store import SilverStore

    spark, startup = sail()
    lake, catalog = lake_of(ctx), _catalog(ctx)
    tables: dict[str, Payload] = {}
    started = time.perf_counter()
    for name, days in plan.items():
        table_started = time.perf_counter()
        result = SilverStore(lake, spark, catalog[name]).refresh(days, RUN_ID)
        tables[name] = {
            "seconds": time.perf_counter() - table_started,
            "days": [d.isoformat() for d in days] if days else None,
            "bronze_rows": result.bronze_rows,
            "silver_rows": result.silver_rows,
            "quarantined": result.quarantined,
        }
    return {
        "rows": sum(t["bronze_rows"] for t in tables.values()),
        "seconds": time.perf_counter() - started,
        "startup": startup,
        "tables": tables,
    }


def step_silver(ctx: Context) -> Payload:
    """Silver for every table, every partition (the gold build's input)."""
    catalog = _catalog(ctx)
    return _refresh(
        ctx,
        {t.name: (t.first_partition, _today()) if t.change_time_column else None for t in catalog},
    )


def step_gold_build(ctx: Context) -> Payload:
    """Every gold table from an empty gold folder: dimensions, calendar, fact, aggregates."""
    runner, split, startup = _gold(ctx)
    catalog = _catalog(ctx)
    days = (catalog.fact.first_partition, _today())
    tables: dict[str, Payload] = {}
    started = time.perf_counter()
    for name in DIMENSIONS:
        tables[catalog[name].lake_name] = _apply(split, runner, catalog[name])
    with split.table(catalog[CALENDAR].lake_name):
        tables[catalog[CALENDAR].lake_name] = {
            "rows": runner.build_calendar(catalog[CALENDAR]).rows
        }
    with split.table(catalog.fact.lake_name):
        tables[catalog.fact.lake_name] = {"rows": runner.build_fact(days).rows}
    for spec in catalog.aggregates:
        with split.table(spec.name):
            tables[spec.name] = {"rows": runner.build_aggregate(spec, days).rows}
    seconds = time.perf_counter() - started
    for name, result in tables.items():
        result.update(split.tables[name])
    return {
        "rows": sum(t["rows"] for t in tables.values()),
        "seconds": seconds,
        "startup": startup,
        "tables": tables,
    }


def step_gold_nochange(ctx: Context) -> Payload:
    """`apply_dimension` of the three dimensions with silver unchanged since the last apply."""
    return _apply_dimensions(ctx)


def step_simulate(ctx: Context) -> Payload:
    """One simulated day of `RATES`: about 1% of each dimension's keys updated."""
    from spotify_assets.cli.commands import source_simulate

    simulated = source_simulate(settings(ctx), 1, None, _rates())
    return {
        "rows": simulated["rows_changed"],
        "seconds": simulated["seconds"],
        "from": simulated["from"],
        "to": simulated["to"],
    }


def step_bronze_incremental(ctx: Context) -> Payload:
    """Every table from its watermark, after the simulated day."""
    return _copy_all(ctx)


def step_silver_incremental(ctx: Context) -> Payload:
    """Silver refresh of the days the incremental bronze load touched, for the dimensions."""
    touched = json.loads((ctx.work / TOUCHED).read_text())
    plan: dict[str, tuple[date, date] | None] = {}
    for name in DIMENSIONS:
        days = [date.fromisoformat(d) for d in touched[name]]
        if days:
            plan[name] = (min(days), max(days))
    return _refresh(ctx, plan)


def step_gold_incremental(ctx: Context) -> Payload:
    """`apply_dimension` of the three dimensions after the silver refresh."""
    return _apply_dimensions(ctx)


def step_gold_full_dims(ctx: Context) -> Payload:
    """`apply_dimension(table, full=True)` of the three dimensions on the same silver."""
    return _apply_dimensions(ctx, full=True)


STEPS: dict[str, Callable[[Context], Payload]] = {
    "create": step_create,
    "bronze": step_bronze,
    "silver": step_silver,
    "gold-build": step_gold_build,
    "gold-nochange": step_gold_nochange,
    "simulate": step_simulate,
    "bronze-incremental": step_bronze_incremental,
    "silver-incremental": step_silver_incremental,
    "gold-incremental": step_gold_incremental,
    "gold-full-dims": step_gold_full_dims,
}


# --- the driver -----------------------------------------------------------------------------


def _parts(table: Payload) -> str:
    labels = ("write", "expectation counts", "SCD2 checks", "other counts", "rest")
    return ", ".join(f"{label} {table[label]:.2f}" for label in labels if label in table)


def print_notes(gold: list[Measure], silver: list[Measure]) -> None:
    print()
    for m in [*silver, *gold]:
        if not m.ok:
            continue
        print(
            f"{m.label}: {m.seconds:.2f} s (Sail start-up {m.extra['startup']:.2f} s before it); "
            f"1-min load average at its start {m.extra['load']:.1f}"
        )
        for name, t in m.extra["tables"].items():
            if m in silver:
                days = " .. ".join(t["days"]) if t["days"] else "whole table"
                print(
                    f"  {name} ({days}): {t['seconds']:.2f} s, {t['bronze_rows']:,} bronze rows "
                    f"-> {t['silver_rows']:,} silver, {t['quarantined']:,} quarantined"
                )
                continue
            line = f"  {name}: {t['seconds']:.2f} s = {_parts(t)}; {t['rows']:,} rows"
            if "changed_keys" in t:
                line += (
                    f" ({t['current']:,} current); {t['changed_keys']:,} changed keys, "
                    f"{t['versions_read']:,} versions applied "
                    f"(of {t['silver_versions']:,} in silver)"
                    f"{', full rebuild' if t['full'] else ''}; silver v{t['silver_version']}"
                )
                broken = {k: v for k, v in t["problems"].items() if v}
                if broken:
                    line += f"; SCD2 PROBLEMS {broken}"
            print(line)


def print_goals(full: Measure, incremental: Measure, rebuild: Measure) -> None:
    share = incremental.seconds / full.seconds if incremental.ok and full.ok else None
    of_rebuild = incremental.seconds / rebuild.seconds if incremental.ok and rebuild.ok else None
    checks = [
        (f"full gold build ≤ {GOAL_FULL_S:g} s at scale 1: {fmt(full.seconds, '.2f')} s",
         full.ok and full.seconds <= GOAL_FULL_S),
        (f"incremental SCD2 apply (1% changed keys) ≤ {GOAL_INCREMENTAL_SHARE:.0%} of the full "
         f"gold build: {fmt(share and 100 * share, '.1f')}%",
         share is not None and share <= GOAL_INCREMENTAL_SHARE),
    ]  # fmt: skip
    print(
        f"incremental apply / full rebuild of the same dimensions: "
        f"{fmt(of_rebuild and 100 * of_rebuild, '.1f')}%"
    )
    print("goals:")
    for text, met in checks:
        print(f"  {text} — {'met' if met else 'NOT met'}")


def run_all(ctx: Context) -> None:
    source = required(measure("create the source", "create", ctx))
    bronze = required(measure("load bronze, 5 tables", "bronze", ctx))
    silver = required(measure("Sail: full silver build, 5 tables", "silver", ctx))
    history = source.extra["history"]
    print(
        f"scale {ctx.scale:g}: {source.rows:,} source rows, history {history[0]} to {history[1]}; "
        f"bronze: {bronze.rows:,} rows in {bronze.seconds:.1f} s; silver: {silver.rows:,} bronze "
        f"rows in {silver.seconds:.1f} s"
    )
    full = required(measure("Sail: full gold build (9 tables)", "gold-build", ctx))
    nochange = measure("Sail: no-change apply, 3 dims", "gold-nochange", ctx)
    simulated = required(measure("simulate 1 day (1% dim updates)", "simulate", ctx))
    loaded = required(measure("incremental bronze load", "bronze-incremental", ctx))
    print(
        f"simulated {simulated.extra['from']} to {simulated.extra['to']}: {simulated.rows:,} rows "
        f"changed; bronze loaded {loaded.rows:,} rows "
        + ", ".join(f"{n} {r:,}" for n, r in loaded.extra["per_table"].items())
    )
    refreshed = required(
        measure("Sail: silver refresh of the touched days, 3 dims", "silver-incremental", ctx)
    )
    incremental = measure("Sail: incremental SCD2 apply, 3 dims", "gold-incremental", ctx)
    rebuild = measure("Sail: full rebuild of the 3 dims", "gold-full-dims", ctx)
    print_table([silver, full, nochange, refreshed, incremental, rebuild])
    print_notes([full, nochange, incremental, rebuild], [silver, refreshed])
    print_goals(full, incremental, rebuild)


def main() -> None:
    cli(__file__, __doc__ or "", STEPS, run_all, prefix="spotify-bench-gold-")


if __name__ == "__main__":
    main()
