"""Bronze-to-silver figures for FactStream: Sail against classic JVM Spark, side by side.

    .venv/bin/python benchmarks/bench_silver.py [--scale 1] [--keep DIR]

Creates a scale-S SQLite source (history ending two days ago), loads bronze for every table with
`LocalCopyRunner`, then measures, for table FactStream, all its partitions at once:

- Sail, full silver build: `SilverStore.refresh(days)` into an empty lake: Delta valid rows and
  quarantine (replaceWhere), then the counts it reports; the split of its time is printed below
  the table;
- Sail, transform + parquet write: the same live bronze files (`SilverStore.read_bronze`), the
  pure `transform`, `valid` and `quarantine` written as parquet to a scratch folder — the
  engine-neutral figure;
- JVM Spark, transform + parquet write: the same on a classic `local[2]` session reading the same
  bronze parquet files; the JVM start-up is its own row;
- Sail, replay of one partition: `refresh((d, d))` of the busiest day on the built table.

Each step runs in a fresh subprocess: "seconds" is the work itself, timed inside the subprocess
after its imports and session start-up; "process s" is the subprocess's wall time including
interpreter start-up, imports and the engine; the peak RSS is the subprocess's own (Sail runs in
it) plus, for JVM Spark, the peak of the JVM process it launches. `--keep DIR` works in DIR (new
or empty) and leaves the source, the lake and the parquet outputs there. Not a test: run it on
the reference machine and record the output in benchmarks/README.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path
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
    peak_mib,
    print_table,
    required,
    sail,
    settings,
)

SEED = 42
FACT = "FactStream"
RUN_ID = "bench"

# Goals: Sail's bronze-to-silver build of FactStream at scale 1; peak memory as for bronze.
GOAL_ROWS_PER_S = 1_000_000
GOAL_PEAK_MIB = 2048


# --- steps: each runs in its own subprocess (see harness.py) -----------------------------------
# Linux keeps ru_maxrss across fork and exec: a child starts from its parent's peak. So the driver
# stays small (it imports nothing of the project; creating the source and loading bronze are
# subprocesses too), and each step's peak is its own.


def _fact() -> Any:
    from spotify_assets.catalog.tables import CATALOG

    return CATALOG[FACT]


def _all_days(ctx: Context) -> tuple[date, date]:
    return settings(ctx).partition_start, datetime.now(UTC).date()


def _bronze_files(ctx: Context) -> list[Any]:
    """FactStream's live bronze files; after a single load every file is fully live."""
    from resources.bronze_store import BronzeStore

    files = list(BronzeStore(lake_of(ctx), _fact()).current().files)
    partial = [f.path for f in files if not f.fully_live]
    assert not partial, f"bronze files not fully live after one load: {partial[:3]}"
    return files


def _timed(into: dict[str, float], label: Callable[..., str], method: Callable) -> Callable:
    """`method`, adding its wall time to `into[label(*args)]` at each call."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            key = label(*args, **kwargs)
            into[key] = into.get(key, 0.0) + time.perf_counter() - started

    return wrapper


def _refresh(ctx: Context, days: tuple[date, date]) -> Payload:
    """`SilverStore.refresh(days)`, with the time of its parts: planning the bronze read, the
    two Delta writes, and the rest (the counts it reports, each a query of its own)."""
    from resources import silver_store

    spark, startup = sail()
    store = silver_store.SilverStore(lake_of(ctx), spark, _fact())
    parts: dict[str, float] = {}
    # Wrappers shadow what `refresh` calls: the store's code is unchanged.
    store.read_bronze = _timed(parts, lambda *_: "plan the bronze read", store.read_bronze)
    silver_store.replace_partitions = _timed(
        parts,
        lambda _lake, _frame, path, *_: (
            "write quarantine (Delta)" if path == store.quarantine_path else "write valid (Delta)"
        ),
        silver_store.replace_partitions,
    )
    started = time.perf_counter()
    result = store.refresh(days, RUN_ID)
    seconds = time.perf_counter() - started
    parts["counts and rule counts"] = seconds - sum(parts.values())
    return {
        "rows": result.bronze_rows,
        "seconds": seconds,
        "startup": startup,
        "silver_rows": result.silver_rows,
        "quarantined": result.quarantined,
        "failures": result.failures,
        "parts": parts,
    }


def step_create(ctx: Context) -> Payload:
    return create_source(ctx, SEED)


def step_bronze(ctx: Context) -> Payload:
    """The initial load of every table into bronze."""
    runner = copy_runner(ctx)
    started = time.perf_counter()
    results = {
        t.name: runner.copy(t, None, RUN_ID, from_watermark=True) for t in runner.source.catalog
    }
    return {
        "rows": sum(r.rows_read for r in results.values()),
        "seconds": time.perf_counter() - started,
        "fact_rows": results[FACT].rows_read,
        "fact_files": len(results[FACT].files),
        "fact_partitions": len(results[FACT].partitions),
    }


def step_sail_build(ctx: Context) -> Payload:
    """Sail: the full silver build of every partition, Delta valid rows and quarantine."""
    return _refresh(ctx, _all_days(ctx))


def step_sail_replay(ctx: Context) -> Payload:
    """Sail: a rerun of the busiest day on the table the full build left."""
    files = _bronze_files(ctx)
    rows: dict[date, int] = {}
    for f in files:
        rows[f.partition] = rows.get(f.partition, 0) + f.rows
    day = max(rows, key=lambda d: (rows[d], d))
    return {**_refresh(ctx, (day, day)), "day": day.isoformat()}


def _transform_and_write(spark: Any, bronze: Any, target: Path) -> dict[str, float]:
    """The pure transform, then `valid` and `quarantine` as parquet (each a query of its own)."""
    from spotify_assets.silver.transform import transform

    parts = {}
    started = time.perf_counter()
    frames = transform(_fact(), bronze, RUN_ID)
    parts["plan the transform"] = time.perf_counter() - started
    for name, frame in (("valid", frames.valid), ("quarantine", frames.quarantine)):
        started = time.perf_counter()
        frame.write.mode("overwrite").parquet(str(target / name))
        parts[f"write {name} (parquet)"] = time.perf_counter() - started
    return parts


def _parquet_rows(folder: Path) -> int:
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(p).metadata.num_rows for p in folder.rglob("*.parquet"))


def _engine_payload(ctx: Context, target: Path, parts: dict[str, float], startup: float) -> Payload:
    return {
        "rows": sum(f.rows for f in _bronze_files(ctx)),
        "seconds": sum(parts.values()),
        "startup": startup,
        "parts": parts,
        "silver_rows": _parquet_rows(target / "valid"),
        "quarantined": _parquet_rows(target / "quarantine"),
    }


def step_sail_parquet(ctx: Context) -> Payload:
    """Sail: read the live bronze files, transform, write valid and quarantine as parquet."""
    from resources.silver_store import SilverStore

    spark, startup = sail()
    target = ctx.out / "sail"
    started = time.perf_counter()
    bronze = SilverStore(lake_of(ctx), spark, _fact()).read_bronze(_all_days(ctx))
    parts = {"plan the bronze read": time.perf_counter() - started}
    parts |= _transform_and_write(spark, bronze, target)
    return _engine_payload(ctx, target, parts, startup)


def _vm_hwm_mib(pid: int) -> float:
    """The peak resident set of another process, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def step_jvm_parquet(ctx: Context) -> Payload:
    """Classic JVM Spark, local[2]: read the same bronze files, transform, write parquet."""
    from pyspark.sql import SparkSession

    started = time.perf_counter()
    spark = (
        SparkSession.builder.master("local[2]")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.ui.enabled", "false")
        .getOrCreate()
    )
    startup = time.perf_counter() - started
    lake = lake_of(ctx)
    paths = [lake.path(f.path) for f in _bronze_files(ctx)]
    target = ctx.out / "jvm"
    started = time.perf_counter()
    bronze = spark.read.parquet(*paths)
    parts = {"plan the bronze read": time.perf_counter() - started}
    parts |= _transform_and_write(spark, bronze, target)
    jvm_pid = spark._jvm.java.lang.ProcessHandle.current().pid()
    jvm_peak = _vm_hwm_mib(jvm_pid)
    spark.stop()
    payload = _engine_payload(ctx, target, parts, startup)
    payload["peak_mib"] = peak_mib() + jvm_peak  # the Python driver plus the JVM it launched
    payload["jvm_peak_mib"] = jvm_peak
    return payload


STEPS: dict[str, Callable[[Context], Payload]] = {
    "create": step_create,
    "bronze": step_bronze,
    "sail-build": step_sail_build,
    "sail-parquet": step_sail_parquet,
    "jvm-parquet": step_jvm_parquet,
    "sail-replay": step_sail_replay,
}


# --- the driver -----------------------------------------------------------------------------


def startup_row(label: str, of: Measure) -> Measure:
    """The engine start-up a step paid before its timed work (its process is the step's)."""
    if not of.ok:
        return Measure(label, note=of.note)
    return Measure(label, seconds=of.extra["startup"])


def print_notes(steps: list[Measure]) -> None:
    print()
    for m in steps:
        if not m.ok:
            continue
        parts = ", ".join(f"{k} {v:.2f}" for k, v in m.extra["parts"].items())
        print(
            f"{m.label}: {m.extra['silver_rows']:,} valid, {m.extra['quarantined']:,} "
            f"quarantined; seconds = {parts}; 1-min load average at its start "
            f"{m.extra['load']:.1f}"
        )
        if "jvm_peak_mib" in m.extra:
            print(f"  peak RSS = Python driver + JVM ({m.extra['jvm_peak_mib']:,.0f} MiB)")


def print_goals(build: Measure, steps: list[Measure]) -> None:
    peak = max((m.peak_mib or 0) for m in steps)
    checks = [
        (f"Sail bronze→silver (full build) ≥ {GOAL_ROWS_PER_S:,} rows/s at scale 1: "
         f"{fmt(build.rate, ',.0f')}", (build.rate or 0) >= GOAL_ROWS_PER_S),
        (f"peak memory ≤ {GOAL_PEAK_MIB / 1024:g} GiB: {peak:,.0f} MiB", peak <= GOAL_PEAK_MIB),
    ]  # fmt: skip
    print("goals:")
    for text, met in checks:
        print(f"  {text} — {'met' if met else 'NOT met'}")


def run_all(ctx: Context) -> None:
    source = required(measure("create the source", "create", ctx))
    bronze = required(measure("load bronze, 5 tables", "bronze", ctx))
    history = source.extra["history"]
    print(
        f"scale {ctx.scale:g}: {source.rows:,} source rows, history {history[0]} to {history[1]}; "
        f"bronze: {bronze.rows:,} rows in {bronze.seconds:.1f} s, {FACT} "
        f"{bronze.extra['fact_rows']:,} rows in {bronze.extra['fact_files']} files / "
        f"{bronze.extra['fact_partitions']} partitions"
    )
    build = required(measure("Sail: full silver build (Delta)", "sail-build", ctx))
    sail = measure("Sail: transform + parquet write", "sail-parquet", ctx)
    jvm = measure("JVM Spark local[2]: transform + parquet write", "jvm-parquet", ctx)
    replay = measure("Sail: replay of one partition (Delta)", "sail-replay", ctx)
    if replay.ok:
        replay.label = f"Sail: replay of one partition ({replay.extra['day']}, Delta)"
    steps = [build, sail, jvm, replay]
    print_table(
        [
            startup_row("Sail: session start-up", build),
            build,
            sail,
            startup_row("JVM Spark: session start-up", jvm),
            jvm,
            replay,
        ]
    )
    print_notes(steps)
    print_goals(build, [m for m in steps if m.ok])


def main() -> None:
    cli(__file__, __doc__ or "", STEPS, run_all, prefix="spotify-bench-silver-")


if __name__ == "__main__":
    main()
